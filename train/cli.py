"""`pass-jax train` (train look-ahead parameters from a config) and `pass-jax train eval` (the
acceptance-and-ceiling diagnostic); found by `pass_jax.cli`."""
from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys

from pass_jax.cli_args import add_overwrite_arg, read_lookahead_arg
from pass_jax.defaults import DEFAULT_MODEL

EPILOG = f"""config keys (override any with KEY=VALUE; values are JSON, else strings):
  model.source   {DEFAULT_MODEL} (bundled) | FILE.gguf | HF or `pass-jax convert` dir | random
  model.preset   model preset whose shapes the model must have (smollm2_135m, llama1_7b, tiny)
  model.dtype    float32 | bfloat16 (default: the loader's, float32 on CPU)
  data.source    wiki | python (offline) | wikipedia | the-stack-python (TFDS) | PATH
  data.seq_len, data.max_documents, data.max_tokens, data.eval_max_tokens, data.add_bos,
  data.data_dir, data.cache_dir (TFDS data dir; the offline corpora cache)
  train.num_lookahead  look-ahead steps L      train.anchors_per_seq  anchors per sequence
  train.kind     vectors (paper: L input vectors) | deep (plus one vector per layer and step) |
                 adapter (deep plus low-rank adapters at look-ahead slots; train.adapter_rank, default 8)
  train.loss     ce (paper: cross-entropy on the continuation) | kl | tv | accept (distil the
                 decode's processed p: KL, total variation, or the exact acceptance sum min(p, q))
  train.targets  data (the corpus continuation) | self (the model's own sampled continuation)
  train.temperature, train.top_k   the decode sampling the targets are processed with (0.8, 10)
  train.prefix   cached (one no-gradient pass over the tokens) | masked (the reference forward)
  train.batch_size, train.steps, train.lr, train.warmup, train.weight_decay, train.clip, train.seed
  train.log_every, train.eval_every, train.eval_batches, train.checkpoint_every, train.keep
  train.eval_sequences, train.eval_anchors_per_seq   held-out anchors of the [LA]_1 ceiling eval
  train.init     start from exported look-ahead parameters (.npz or Orbax dir, any kind; adapters
                 grow to a higher train.adapter_rank without changing their function)
  mesh           null (all devices data-parallel) | DATAxTENSOR | DATAxFSDPxTENSOR, e.g. 2x2
  output.dir     run dir (default runs/CONFIG): config.json, metrics.jsonl, checkpoints/
  output.export  the trained parameters (default OUTPUT_DIR/lookahead.npz, + lookahead.json)

examples:
  pass-jax train --config smollm2_135m_wiki                   # ~15 min on a 2-core CPU
  pass-jax train --config smollm2_135m_wiki train.steps=10 data.max_documents=50
  pass-jax train --config smollm2_135m_wiki --resume          # continue a killed run exactly
  pass-jax train --config smollm2_135m_wiki_deep              # per-layer vectors, distilled
  pass-jax train --config tiny_overfit --print-config         # show the resolved config
  pass-jax train --config llama1_7b_wiki model.source=/data/llama-7b-hf   # on a TPU v4-8
  pass-jax train eval --config smollm2_135m_wiki --lookahead text        # acceptance vs ceiling
  pass-jax generate --lookahead runs/smollm2_135m_wiki/lookahead.npz --prompt "The history of"

Only the look-ahead parameters are trained; the base model stays frozen (the PaSS paper)."""

EPILOG_EVAL = """examples:
  pass-jax train eval --config smollm2_135m_wiki --lookahead text
  pass-jax train eval --config smollm2_135m_python --lookahead code --write-metadata
  pass-jax train eval --config smollm2_135m_wiki --lookahead runs/x/lookahead.npz --json out.json
  pass-jax train eval --config tiny_overfit --lookahead none --sequences 4 --depth 1

  pass-jax train eval --config smollm2_135m_wiki --own heldout-text.jsonl --own-mode chat   # own answers

The config gives the model, the held-out split (data.*, its test split) and the decode sampling
(train.temperature, train.top_k). --write-metadata stores the result in the parameters' JSON
metadata; its "acceptance" entry is what `-L auto` reads. With --own, the anchors lie inside the model's
own answers of a `pass-jax train data` file (held-out prompts: --split test) instead of corpus text."""

EPILOG_DATA = """examples:
  pass-jax train data --domain text --split train --count 400 --out runs/onpolicy/text-train.jsonl
  pass-jax train data --domain code --split test --count 48 --out runs/onpolicy/code-test.jsonl
  (the same command again resumes a killed run; see train/onpolicy.py for the prompts and their sources)

Prompts alternate chat (an instruction in the chat template, with the bundled system prompt) and raw (a
document's or function's first 64 tokens). --split train draws them from training sources only (the wiki
and standard-library train splits, and registry packages pass-jax does not depend on); --split test from
held-out sources only (the wiki test split; pass-jax's installed dependencies for code). Train on a
train file with data.source=FILE; judge with `pass-jax train eval --own` on a test file."""


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="NAME|PATH",
                        help="a train config: a name in configs/ (smollm2_135m_wiki, smollm2_135m_python, "
                             "llama1_7b_wiki, llama1_7b_stack_python, tiny_overfit) or a JSON file")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the run dir's latest checkpoint (starts fresh if there is none)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh in output.dir although it is not empty (a previous run's checkpoints and "
                             "metrics there are deleted); without it, only a new, empty or --resume'd run dir is used")
    parser.add_argument("--allow-changed-settings", action="store_true",
                        help="with --resume: continue although train.lr, warmup, weight_decay, clip or steps changed")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


class _OptionalSubcommand(argparse._SubParsersAction):
    """argparse has no optional subcommands: a first positional that names none (`train.steps=10`)
    starts the KEY=VALUE overrides of the run itself, parsed with the run's own options."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.choices = None  # argparse checks a subcommand's name against these before calling us

    def __call__(self, parser, namespace, values, option_string=None):
        if values[0] in self._name_parser_map:
            return super().__call__(parser, namespace, values, option_string)
        run = argparse.ArgumentParser(prog=parser.prog, add_help=False)
        _add_run_arguments(run)
        run.add_argument("overrides", nargs="*")
        parsed = run.parse_args(values)
        for name, value in vars(parsed).items():
            if value not in (None, False) or not hasattr(namespace, name):
                setattr(namespace, name, value)


def register(subparsers) -> None:
    """Add the `train` subcommand (and `train eval`) to the `pass-jax` parser."""
    parser = subparsers.add_parser(
        "train", help="train PaSS look-ahead parameters (base model frozen)", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="pass-jax train --config NAME|PATH [--resume] [--print-config] [KEY=VALUE ...]\n"
              "       pass-jax train eval --config NAME|PATH --lookahead SPEC [--own FILE.jsonl] [options]\n"
              "       pass-jax train data --domain text|code --split train|test --count N --out FILE.jsonl",
        description="Train the look-ahead parameters of PaSS on a corpus: many anchors per sequence on one "
                    "cached pass over the tokens, AdamW on the look-ahead parameters only, periodic eval, Orbax "
                    "checkpoints, and a .npz export that `pass-jax generate --lookahead PATH` reads.")
    _add_run_arguments(parser)
    parser.set_defaults(func=cmd_train, overrides=[], parser=parser)
    parser.register("action", "parsers", _OptionalSubcommand)
    commands = parser.add_subparsers(dest="train_command", metavar="[eval | data | KEY=VALUE ...]")
    evaluation = commands.add_parser(
        "eval", prog="pass-jax train eval", help="acceptance of look-ahead drafts against the blind-drafter ceiling", epilog=EPILOG_EVAL,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="On held-out anchors: the blind-drafter ceiling at [LA]_1 and [LA]_2 (the mixture and the "
                    "true optimum), the drafts' acceptance per position for K = 1..4 candidates (sampled and "
                    "greedy), greedy agreement, and the fraction of the ceiling. See train/diagnostic.py.")
    evaluation.add_argument("--config", required=True, metavar="NAME|PATH", help="a train config (model, data)")
    evaluation.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    evaluation.add_argument("--lookahead", default="default", metavar="{default,text,code,none,PATH}",
                            help="the parameters to evaluate (default: the shipped ones of the data's domain)")
    evaluation.add_argument("--num-lookahead", "-L", type=int, default=8, help="positions to report (default 8)")
    evaluation.add_argument("--sequences", type=int, default=48, help="held-out sequences (default 48)")
    evaluation.add_argument("--anchors-per-seq", type=int, default=3, help="anchors per sequence (default 3)")
    evaluation.add_argument("--depth", type=int, default=2, choices=(1, 2),
                            help="exact positions: 2 adds the top-k x top-k grandchildren (default 2)")
    evaluation.add_argument("--candidates", type=int, default=4, help="K = 1..this candidates (default 4)")
    evaluation.add_argument("--paths", type=int, default=2,
                            help="sampled accepted prefixes per anchor and K, for positions past 2 (default 2)")
    evaluation.add_argument("--seed", type=int, default=0, help="anchor choice and sampled prefixes")
    evaluation.add_argument("--own", metavar="FILE.jsonl",
                            help="anchors inside the model's own answers of a `pass-jax train data` file, not the "
                                 "config's corpus")
    evaluation.add_argument("--own-mode", choices=("chat", "raw"),
                            help="with --own: only the chat or the raw records (default both)")
    evaluation.add_argument("--json", metavar="PATH", help="also write the result to this file")
    add_overwrite_arg(evaluation)
    evaluation.add_argument("--write-metadata", action="store_true",
                            help="store the result in the evaluated parameters' JSON metadata")
    evaluation.set_defaults(func=cmd_eval)
    data = commands.add_parser(
        "data", prog="pass-jax train data", help="generate the on-policy data set: the model's own answers",
        epilog=EPILOG_DATA, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Generate the bundled model's own answers (ar decode, the paper's sampling) to chat "
                    "instructions and raw prefixes, as JSON lines a kill does not corrupt and a rerun resumes.")
    data.add_argument("--domain", required=True, choices=("text", "code"))
    data.add_argument("--split", required=True, choices=("train", "test"),
                      help="train: prompts from training sources; test: from held-out ones")
    data.add_argument("--count", type=int, required=True, help="prompts (half chat, half raw)")
    data.add_argument("--out", required=True, metavar="FILE.jsonl", help="the data set (+ FILE.jsonl.manifest.json)")
    data.add_argument("--max-new-tokens", type=int, default=128, help="answer budget (default 128)")
    data.add_argument("--batch-size", type=int, default=8, help="prompts a batch, and a resume unit (default 8)")
    data.add_argument("--seed", type=int, default=0, help="prompt order and sampling")
    data.add_argument("--model", default=DEFAULT_MODEL, help=f"the model (default {DEFAULT_MODEL})")
    data.set_defaults(func=cmd_data)


def command_line(args, *words: str) -> str:
    """The command as a user would type it, for the export's metadata."""
    return shlex.join(["pass-jax", "train", *words, "--config", args.config, *args.overrides])


def cmd_train(args) -> int:
    from .loop import run
    from .run_config import load_run_config

    if not args.config:
        args.parser.error("the following arguments are required: --config")
    config = load_run_config(args.config, args.overrides)
    if args.print_config:
        print(json.dumps(dataclasses.asdict(config), indent=1))
        return 0
    final = run(config, resume=args.resume, command=command_line(args) + " --resume" * args.resume,
                overwrite=args.overwrite, allow_changed_settings=args.allow_changed_settings)
    print(json.dumps({"run_dir": str(config.run_dir), "lookahead": str(config.export_path), "final_eval": final}))
    return 0


def cmd_eval(args) -> int:
    from pass_jax import lookahead as lookahead_lib
    from pass_jax import outputs
    from pass_jax.errors import PassJaxError
    from pass_jax.sharding import make_mesh
    from . import diagnostic, onpolicy
    from .loop import load_base_model, load_split
    from .run_config import load_run_config

    config = load_run_config(args.config, args.overrides)
    t = config.train
    try:
        spec = diagnostic.DiagnosticSpec(num_lookahead=args.num_lookahead, sampling=t.sampling, depth=args.depth,
                                         max_candidates=args.candidates, paths=args.paths)
    except ValueError as err:
        raise PassJaxError(str(err)) from None
    found = read_lookahead_arg(args.lookahead)  # a PATH, read once
    if args.write_metadata and args.lookahead == "none":
        raise PassJaxError("--write-metadata needs a parameters file (--lookahead PATH, text or code), not 'none'")
    json_path = outputs.check_file(args.json, "--json", args.overwrite) if args.json else None
    own = onpolicy.read_records(args.own) if args.own else None
    if args.own and not own:
        raise PassJaxError(f"--own {args.own}: no records (make one with `pass-jax train data`)")
    model = load_base_model(config.model, make_mesh(config.mesh))
    domain = "code" if config.data.source in ("python", "the-stack-python") else "text"
    resolved = lookahead_lib.resolve(args.lookahead, model.params, model.config, model.identity, domain=domain,
                                     num_lookahead=args.num_lookahead, found=found)
    if args.write_metadata and resolved.path is None:  # before the diagnostic's minutes
        raise PassJaxError(f"--write-metadata needs a parameters file (--lookahead PATH, text or code); "
                           f"--lookahead {args.lookahead} is the untrained initialisation here")
    lookahead, source = resolved.prepare(model.config, args.num_lookahead), resolved.source
    if own:
        tokens, anchors = onpolicy.own_contexts(own, args.own_mode, args.anchors_per_seq, args.seed,
                                                pad_id=model.tokenizer.eos_token_id)
        tokens, anchors = tokens[:args.sequences], anchors[:args.sequences]
        data_info = {"own": args.own, "mode": args.own_mode or "chat+raw", "sequences": len(tokens)}
    else:
        data = load_split(config.data, model.tokenizer, "test")
        try:
            tokens, anchors = diagnostic.pick_anchors(data, args.sequences, args.anchors_per_seq, seed=args.seed)
        except ValueError as err:
            raise PassJaxError(str(err)) from None
        data_info = {"source": config.data.source, "split": "test", "seq_len": data.seq_len, "sequences": len(tokens)}
    result = diagnostic.diagnose(model.params, model.config, lookahead, tokens, anchors, spec, seed=args.seed)
    words = ["eval", "--lookahead", args.lookahead, "-L", str(args.num_lookahead), "--sequences",
             str(args.sequences), "--anchors-per-seq", str(args.anchors_per_seq), "--depth", str(args.depth),
             "--candidates", str(args.candidates), "--paths", str(args.paths), "--seed", str(args.seed)]
    words += ["--own", args.own] + ["--own-mode", args.own_mode] * bool(args.own_mode) if args.own else []
    result = {"lookahead": source, "kind": lookahead_lib.kind_of(lookahead),
              "parameters": lookahead_lib.num_parameters(lookahead),
              "data": data_info,
              **result, "command": command_line(args, *words)}
    print(diagnostic.format_table(result), file=sys.stderr)
    print(json.dumps(result))
    if json_path:
        outputs.write_text(json_path, json.dumps(result, indent=1))
    if args.write_metadata:
        diagnostic.write_metadata(resolved.path, result)
        print(f"wrote the diagnostic into {lookahead_lib.metadata_path(resolved.path)}", file=sys.stderr)
    return 0


def cmd_data(args) -> int:
    from pass_jax import outputs
    from pass_jax.errors import PassJaxError
    from pass_jax.loading import load_model
    from . import onpolicy

    for flag, value in (("--count", args.count), ("--max-new-tokens", args.max_new_tokens),
                        ("--batch-size", args.batch_size)):
        if value < 1:
            raise PassJaxError(f"{flag} must be positive, got {value}")
    if not args.out.endswith(".jsonl"):
        raise PassJaxError(f"--out {args.out}: name a .jsonl file (training reads it as a JSON-lines corpus)")
    outputs.check_file(args.out, "--out", overwrite=True)  # a writable place; an existing file is resumed
    model = load_model(args.model)
    records = onpolicy.build(model, args.out, args.domain, args.split, args.count, max_new_tokens=args.max_new_tokens,
                             batch_size=args.batch_size, seed=args.seed)
    tokens = sum(len(r["answer_ids"]) for r in records)
    print(json.dumps({"out": args.out, "records": len(records), "answer_tokens": tokens}))
    return 0
