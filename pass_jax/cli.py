"""`pass-jax` command line: generate, convert (and the subcommands other modules register)."""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import time
import traceback
import warnings

from .cli_args import (add_iteration_args, add_overwrite_arg, add_model_arg, add_sampling_args, enable_compilation_cache,
                       iteration_from_args, log, prompt_records, read_lookahead_arg, read_prompts, sampling_from_args,
                       seed_arg)
from .defaults import DEFAULT_MODEL, MODES
from .errors import PassJaxError

AUTO_HELP = ("auto (also what no --mode, -L, --calls or --draft-tree means) decodes with the setting tuned for this "
             "machine, model, look-ahead parameters and sampling: tuned once (call costs, the parameters' measured "
             "acceptance, then the best settings' decode loops timed against ar's on your first prompt) and stored "
             "in the pass-jax cache; ar when no PaSS setting beats ar (said so). --mode pass alone: the fastest PaSS "
             "setting")

EPILOG_GENERATE = """examples:
  pass-jax generate --prompt "The capital of France is"   # the setting tuned for this machine (tuned once)
  pass-jax generate --prompt "def fibonacci(n):" --calls 2 -L 6 --temperature 0.8 --top-k 10   # the paper's iteration
  pass-jax generate --prompt "def fibonacci(n):" --draft-tree 6,2 --temperature 0   # wider first-draft tree
  pass-jax generate --prompts prompts.jsonl --batch-size 4 --json > out.jsonl
  pass-jax generate --mode ar --temperature 0 --prompt "Once upon a time"   # plain decoding
  pass-jax generate --no-chat --prompt "def fibonacci(n):"                  # continue raw text
  pass-jax generate --system "You answer in French." --prompt "Name three colours."

PaSS output has exactly the distribution of plain sampling (--mode ar): look-ahead parameters only
change how many tokens each model call yields.

chat: instruct models (like the bundled SmolLM2-135M-Instruct) are trained on conversations in
their chat template and answer a bare text poorly, so by default a model whose tokenizer has a chat
template gets each prompt as a user message and generates the assistant's answer, which ends at
the template's end-of-turn token. --no-chat feeds the prompt as raw text to continue (base models,
completion). The bundled model gets a short default system prompt, which it answers short questions
better with (the run prints it; --system replaces it); other models get their template's own.

batch jobs: --output FILE.jsonl writes one line per prompt as it finishes, with the prompt's id (its
"id" key, or its line number), in any order. A kill (or Ctrl-C) loses only the prompts in flight:
the same command resumes, skipping the ids written; other settings are refused (--overwrite starts
over). Prompts are read lazily, decoded in batches of one length bucket, and a row whose answer
ends takes the next prompt between chunks of the loop. Each prompt samples from its own key (from
--seed and its id), so an answer equals that prompt decoded alone, greedy or sampled, and a resumed
run writes what an uninterrupted one would.
  pass-jax generate --prompts prompts.jsonl --output answers.jsonl --batch-size 8 --temperature 0

streaming: on a terminal (or with --stream) each answer prints as its tokens are committed. --json
and batches (--batch-size > 1) print when a prompt, or a batch, is done.

caches: the first run compiles the decode loop (seconds to minutes) and, for a .gguf model, writes
a float32 copy of the dequantized weights; later runs load both from the cache directory instead.
  PASS_JAX_CACHE=DIR              the cache directory (default ~/.cache/pass_jax)
  PASS_JAX_COMPILATION_CACHE=0    do not use JAX's persistent compilation cache
  PASS_JAX_MODEL_CACHE=0          do not write or read float32 copies of .gguf models"""


SEPARATOR = "-" * 40

# Subcommands owned by other modules: (name, the module whose `register(subparsers)` adds it, the line
# `pass-jax --help` shows). A module is imported only when its command runs, so the parser imports
# neither JAX nor any command's code: `pass-jax --help` takes a fraction of a second.
EXTRA_COMMANDS = (
    ("train", "pass_jax.train.cli", "train PaSS look-ahead parameters (base model frozen)"),
    ("bench", "pass_jax.bench.command", "benchmark PaSS against autoregressive decoding and transformers+torch"),
    ("plan", "pass_jax.plan_command", "per-device memory of a run on a mesh, and the recommended mesh (no devices needed)"),
    ("eval", "pass_jax.humaneval.command", "quality evaluations (HumanEval)"),
)


def _shown_prompt(prompt: str, chat: bool) -> str:
    """What precedes an answer on screen: a raw prompt runs on into its continuation; a chat prompt
    is quoted on lines of its own (the template around it is not shown)."""
    if not chat:
        return prompt
    return "".join(f"> {line}\n" for line in prompt.splitlines() or [""])


def cmd_generate(args) -> int:
    from . import generate as generate_lib
    from .decoding import check_budget
    from .iteration import Iteration
    from .loading import context_length, load_model

    # Reject bad settings before spending seconds on loading the model.
    sampling = sampling_from_args(args)
    iteration = iteration_from_args(args, args.mode, auto=True)  # an Iteration, or "auto" (tuned)
    if args.output is not None:
        output = _check_output(args, iteration)
        prompts = [output.first]
    else:
        prompts = read_prompts(args.prompt, args.prompts)
    check_budget(args.max_new_tokens)
    if args.batch_size < 1:
        raise PassJaxError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.stream and args.json:
        raise PassJaxError("--stream prints text as it comes and --json one object per prompt: choose one")
    if args.stream and args.output is not None:
        raise PassJaxError("--output writes each answer to its file when it is done: drop --stream")
    if args.overwrite and args.output is None:
        raise PassJaxError("--overwrite replaces an --output file: give --output FILE.jsonl")
    if args.stream and args.batch_size > 1:
        raise PassJaxError("--stream shows one prompt at a time: use --batch-size 1 (batches print when done)")
    if args.system is not None and args.chat is False:
        raise PassJaxError("--system needs the chat template: drop --no-chat")
    stream = (sys.stdout.isatty() if args.stream is None else args.stream) and not args.json and \
        args.batch_size == 1 and args.output is None
    context = context_length(args.model)
    if context is not None and args.max_new_tokens >= context:
        raise PassJaxError(f"--max-new-tokens {args.max_new_tokens} exceeds the model's context of {context} tokens "
                           f"(no room for a prompt): give at most {context - 1}, less the prompt's length")
    found = read_lookahead_arg(args.lookahead) if args.mode != "ar" else None  # a PATH, read once
    chat = "auto" if args.chat is None else args.chat
    enable_compilation_cache()
    log(f"loading {args.model} ...")
    start = time.perf_counter()
    model = load_model(args.model)
    load_s = time.perf_counter() - start
    lookahead = None
    if args.mode != "ar":
        lookahead = generate_lib.resolve_lookahead(model, args.lookahead, found=found, num_lookahead=(
            None if iteration == "auto" else iteration.num_lookahead))
    if iteration == "auto":
        iteration = _tuned(args, model, lookahead, sampling, chat, prompts[0])
    generator = generate_lib.Generator(model, iteration, lookahead=lookahead, max_new_tokens=args.max_new_tokens,
                                       sampling=sampling, batch_size=args.batch_size, chat=chat, system=args.system)
    if generator.chat:
        system = f"system prompt {generator.system!r}" if generator.system is not None else "its own system prompt"
        log(f"chat: each prompt is a user message in the model's chat template, with {system} "
            "(--no-chat feeds raw text)")
    if iteration.mode == "pass":
        log(f"PaSS: {iteration.label()} per iteration, look-ahead parameters: {generator.lookahead_source}")
    log("compiling the decode loop (once per prompt-length bucket) ...")
    if args.output is not None:
        return _generate_to_file(args, generator, output, load_s)
    shown: list[int] = []

    def show(index: int, piece: str) -> None:
        if index == len(shown):  # the first piece of a new prompt's answer
            if shown:
                print(f"\n{SEPARATOR}")
            print(_shown_prompt(prompts[index], generator.chat), end="")
            shown.append(index)
        print(piece, end="", flush=True)

    results, summary = generator.generate(prompts, seed=args.seed, progress=True, stream=show if stream else None)
    if stream:
        print(f"\n{SEPARATOR}", flush=True)
        results = []  # already shown
    for result in results:
        if args.json:
            print(json.dumps(_result_record(result)), flush=True)
        else:
            print(_shown_prompt(result.prompt, generator.chat) + result.text, flush=True)
            print(SEPARATOR, flush=True)
    if args.json:
        print(json.dumps({"summary": {**iteration.to_json(), **summary, "load_s": load_s}}))
    else:
        # Tokens per model call carries across hardware; tokens/s is this machine's.
        log(f"{summary['new_tokens']} tokens, {summary['tokens_per_s']:.1f} tok/s, {summary['tokens_per_call']:.2f} "
            f"tokens per model call (mean accepted drafts {summary['mean_accepted']:.2f}); load {load_s:.1f} s, "
            f"compile {summary['compile_s']:.1f} s, generate {summary['wall_s']:.1f} s")
    return 0

RESULT_KEYS = ("model_calls", "new_tokens", "tokens_per_call", "mean_accepted", "wall_s", "tokens_per_s")


def _result_record(result, with_id: bool = False) -> dict:
    """A result as `--json` and `--output` write it."""
    record = {"id": result.id} if with_id else {}
    return {**record, "prompt": result.prompt, "text": result.text, "tokens": result.tokens,
            "stats": {k: result.stats[k] for k in RESULT_KEYS}}


def _output_settings(args, iteration) -> dict:
    """What an --output file records and a resumed run must match: every setting its answers depend on."""
    return {"model": args.model, "mode": args.mode,
            "iteration": iteration if isinstance(iteration, str) else iteration.label(),
            "lookahead": args.lookahead if args.mode == "pass" else None, "max_new_tokens": args.max_new_tokens,
            "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed,
            "batch_size": args.batch_size, "chat": args.chat, "system": args.system}


def _check_output(args, iteration):
    """Before the model loads: the --output file (settings, ids done) and one pass over the prompts (each
    line checked, the prompts left to do counted). Returns a namespace: path, settings, done, todo, first."""
    import types
    from pathlib import Path

    from . import results_file

    if args.prompts is not None and not Path(args.prompts).is_file():
        raise PassJaxError("--output reads --prompts twice (checked before the model loads, then decoded): "
                           "give a file, not standard input or a pipe")
    settings = _output_settings(args, iteration)
    path, done = results_file.check(args.output, settings, args.overwrite)
    todo, first = 0, None
    for prompt_id, text in prompt_records(args.prompt, args.prompts):
        first = text if first is None else first
        todo += results_file.id_key(prompt_id) not in done
    if first is None:
        raise PassJaxError("no prompt: give --prompt TEXT (repeatable) or --prompts FILE.jsonl")
    return types.SimpleNamespace(path=path, settings=settings, done=done, todo=todo, first=first)


def _generate_to_file(args, generator, output, load_s: float) -> int:
    """Decode the prompts not yet in the --output file, appending each result as it finishes."""
    from tqdm.auto import tqdm

    from . import results_file
    from .generate import summarize

    with results_file.ResultsWriter(output.path, output.settings, args.overwrite) as writer:
        log(f"--output {output.path}: {len(writer.done)} prompts done already, {output.todo} to go")
        todo = ((prompt_id, text) for prompt_id, text in prompt_records(args.prompt, args.prompts)
                if results_file.id_key(prompt_id) not in writer.done)
        totals, count, start, compiled = None, 0, time.perf_counter(), generator.compile_s
        with tqdm(total=output.todo, desc="generating", unit="prompt", dynamic_ncols=True) as bar:
            for result in generator.results(todo, seed=args.seed):
                writer.write(_result_record(result, with_id=True))
                count += 1
                totals = _add_stats(totals, result.stats)
                bar.update()
                decode_s = time.perf_counter() - start - (generator.compile_s - compiled)  # compiling is not decoding
                bar.set_postfix_str(f"{totals['new_tokens'] / decode_s:.1f} tok/s", refresh=False)
    decode_s = time.perf_counter() - start - (generator.compile_s - compiled)
    summary = summarize([totals] if totals else [], decode_s, generator.compile_s)
    summary.update(prompts=count, useful_row_fraction=generator.occupancy.fraction)
    log(f"wrote {count} results to {output.path}: {summary['new_tokens']} tokens, {summary['tokens_per_s']:.1f} "
        f"tok/s (compile {summary['compile_s']:.1f} s apart), {summary['useful_row_fraction']:.0%} of row-steps "
        "decoded a prompt")
    if args.json:
        print(json.dumps({"summary": {**output.settings, **summary, "load_s": load_s}}))
    return 0


def _add_stats(totals, stats):
    """Running sums of the per-prompt statistics `summarize` adds up (memory that does not grow with prompts)."""
    summed = ("model_calls", "new_tokens", "iterations", "accepted_drafts", "context_accepted", "recycle_accepted")
    listed = ("accepted_hist", "position_reached", "position_accepted")
    if totals is None:
        return {k: stats[k] for k in summed} | {k: list(stats[k]) for k in listed}
    return ({k: totals[k] + stats[k] for k in summed}
            | {k: [a + b for a, b in zip(totals[k], stats[k])] for k in listed})


def _tuned(args, model, lookahead, sampling, chat, first_prompt: str):
    """The iteration of `-L auto` and of no --mode/-L/--calls/--draft-tree: the profile tuned for this
    machine (`tuned.tuned_iteration`), one line saying which; `--mode pass` alone takes its fastest PaSS
    setting. Parameters without acceptance metadata cannot be tuned: `-L auto` refuses, the default says
    so and decodes with ar (plain `--mode pass` with the fixed default iteration)."""
    from . import autotune, tuned
    from .generate import Generator
    from .iteration import DEFAULT_ITERATION, Iteration

    asked_auto, asked_pass = args.num_lookahead == "auto", args.mode == "pass"
    lookahead.prepare(model.config, 1)  # refuse unusable parameters (wrong width, NaN) even where ar is chosen
    if not asked_auto and autotune.acceptance_table(lookahead.metadata, sampling.greedy) is None:
        fallback = DEFAULT_ITERATION if asked_pass else Iteration.AR
        log(f"decoding with {fallback.label()}: the look-ahead parameters ({lookahead.source}) carry no measured "
            "acceptance to tune from (`pass-jax train eval --write-metadata`); give -L N or --draft-tree for PaSS")
        return fallback
    # the loop check decodes the first prompt as this command will (chat template included)
    first_ids = Generator(model, Iteration.AR, max_new_tokens=args.max_new_tokens, sampling=sampling, chat=chat,
                          system=args.system).encode(first_prompt)
    profile, tuned_now = tuned.tuned_iteration(model, lookahead, sampling, args.batch_size, first_ids,
                                               retune=args.retune, log=log)
    if tuned_now:
        log(f"tuning: {profile.summary}")
    if asked_pass and not asked_auto:  # --mode pass asked for PaSS, even where ar is faster
        log(f"decoding with PaSS {profile.best.label()}: the fastest PaSS setting on this machine (--mode pass)")
        return profile.best
    log(profile.line(tuned_now))
    return profile.iteration


def cmd_convert(args) -> int:
    from . import outputs
    from .loading import check_convert_destination, load_model, save_converted

    dst = check_convert_destination(args.dst, args.overwrite)
    with outputs.locked(dst, "destination"):  # from before loading: a second convert to DST is refused at once
        check_convert_destination(args.dst, args.overwrite)  # again, now that it is ours
        log(f"loading {args.src} ...")
        model = load_model(args.src)
        save_converted(model, args.dst, overwrite=args.overwrite)
    log(f"wrote an Orbax checkpoint of {model.config.num_params():,} parameters to {args.dst}; "
        f"load it with --model {args.dst}")
    return 0


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `pass-jax` parser, with `command`'s own arguments when it is one of EXTRA_COMMANDS (the
    others are listed with their help line only)."""
    parser = argparse.ArgumentParser(
        prog="pass-jax",
        description="PaSS (Parallel Speculative Sampling) for LLaMA-family models in JAX: lossless speed-ups "
                    "from a few learned look-ahead embeddings, no draft model.")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback behind an error message (or set PASS_JAX_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = sub.add_parser("generate", help="generate text (PaSS or autoregressive)", epilog=EPILOG_GENERATE,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    gen.add_argument("--prompt", action="append", help="prompt text; repeat for several prompts")
    gen.add_argument("--prompts", metavar="FILE.jsonl", help='one {"prompt": ...} object per line')
    add_model_arg(gen)
    gen.add_argument("--mode", choices=MODES, default=None,
                     help="pass or ar (plain decoding); default: the setting tuned for this machine (see -L auto), "
                          "which is ar where no PaSS setting beats it")
    gen.add_argument("--retune", action="store_true",
                     help="measure this machine again for the tuned default (-L auto), replacing the stored profile")
    gen.add_argument("--lookahead", default="default", metavar="{default,text,code,none,PATH}",
                     help="look-ahead parameters: default/text (shipped, trained on Wikipedia, for the bundled "
                          "model), code (shipped, trained on Python), none (untrained), or a .npz / Orbax path")
    gen.add_argument("--max-new-tokens", type=int, default=128, help="new tokens per prompt (default 128)")
    add_iteration_args(gen, AUTO_HELP)
    add_sampling_args(gen)
    gen.add_argument("--seed", type=seed_arg, default=0, help="PRNG seed (default 0); each prompt samples from a key of the seed and "
                     "its id (--output) or position, whatever batch it shares")
    gen.add_argument("--batch-size", type=int, default=1, help="prompts decoded together (default 1)")
    gen.add_argument("--json", action="store_true", help="one JSON object per prompt, then a summary line")
    gen.add_argument("--output", metavar="FILE.jsonl",
                     help="a batch job: append one JSON line per prompt (its id, text, tokens, stats) as it finishes, "
                          "prompts sorted into length buckets and finished rows refilled; rerunning the same "
                          "command resumes, skipping the ids written (see below)")
    add_overwrite_arg(gen)
    gen.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                     help="--chat: put each prompt into the tokenizer's chat template as a user message and "
                          "generate the answer; --no-chat: continue the raw text. Default: chat when the "
                          "tokenizer has a chat template (instruct models; see below)")
    gen.add_argument("--system", metavar="TEXT", help="system prompt for --chat (default: see below)")
    gen.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None,
                     help="print each answer as its tokens are committed (default: when stdout is a terminal; "
                          "never with --json or --batch-size > 1)")
    gen.set_defaults(func=cmd_generate)

    conv = sub.add_parser("convert", help="write a checkpoint as a sharded Orbax directory for fast reload")
    conv.add_argument("src", help=f"a .gguf file, a Hugging Face LLaMA directory, or {DEFAULT_MODEL}")
    conv.add_argument("dst", help="the output directory: new or empty; written whole or not at all")
    conv.add_argument("--overwrite", action="store_true",
                      help="replace DST if it is not empty (its old contents are deleted once the new checkpoint "
                           "is complete)")
    conv.set_defaults(func=cmd_convert)

    for name, module_name, help_line in EXTRA_COMMANDS:
        if name == command:
            importlib.import_module(module_name).register(sub)
        elif importlib.util.find_spec(module_name) is not None:
            sub.add_parser(name, help=help_line)
    return parser


def _command(argv: list[str]) -> str | None:
    """The subcommand named in argv: its first word that is not an option (`--debug` takes no value)."""
    return next((word for word in argv if not word.startswith("-")), None)


def maybe_initialize_distributed() -> None:
    """Multi-host runs (TPU pods, PASS_JAX_DISTRIBUTED=1) join JAX's multi-controller runtime."""
    from .distributed import initialize_from_env
    initialize_from_env()


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(_command(argv)).parse_args(argv)
    try:
        maybe_initialize_distributed()
        return args.func(args)
    except PassJaxError as err:
        if args.debug or os.environ.get("PASS_JAX_DEBUG") == "1":
            traceback.print_exc()
        print(f"pass-jax {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Orbax's writes cut off by Ctrl-C leave coroutines never awaited; Python would warn at exit.
        warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `pass-jax generate ... | head`: the reader is gone, as for any Unix tool
        _silence_stdout()
        return 141
    except Exception as err:  # a full disk under any writer: one line, like a user error
        from .outputs import is_no_space, no_space_error
        if not is_no_space(err):
            raise
        if args.debug or os.environ.get("PASS_JAX_DEBUG") == "1":
            traceback.print_exc()
        filename = next((e.filename for e in (err, err.__cause__, err.__context__) if getattr(e, "filename", None)),
                        None)
        if filename is None:  # a write to stdout (`> FILE`): name its file
            filename = _stdout_path()
            _silence_stdout()  # the interpreter's last flush would fail again
        print(f"pass-jax {args.command}: error: {no_space_error(filename or os.getcwd())}", file=sys.stderr)
        return 2


def _stdout_path() -> str | None:
    try:
        target = os.readlink(f"/proc/self/fd/{sys.stdout.fileno()}")
    except (OSError, ValueError):
        return None
    return target if target.startswith("/") else None


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's last flush does not fail on the closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
