"""Arguments and helpers that several `pass-jax` commands share (generate, bench, eval humaneval, train).

The commands import this module; nothing imports the CLI (`pass_jax.cli`, which only builds the
parser and runs a command). Importing this module imports no JAX: the parser stays fast, and
every helper that needs the model stack imports it when called.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterator

from .defaults import CALLS, DEFAULT_CALLS, DEFAULT_MODEL, DEFAULT_TREE, cache_dir
from .errors import PassJaxError

LOOKAHEAD_NAMES = ("default", "text", "code", "none")  # --lookahead values that are not paths


def log(message: str) -> None:
    """A progress or note line on stderr (stdout carries the command's results)."""
    print(message, file=sys.stderr, flush=True)


def add_model_arg(parser: argparse.ArgumentParser, note: str = "") -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"{DEFAULT_MODEL} (bundled, default), a .gguf file, a Hugging Face LLaMA directory, "
                             f"or a directory from `pass-jax convert`{note}")


def add_sampling_args(parser: argparse.ArgumentParser, temperature: float = 0.8, top_k: int | None = 10) -> None:
    group = parser.add_argument_group("sampling (applied identically to drafts and target)")
    group.add_argument("--temperature", type=float, default=temperature,
                       help=f"0 means greedy (default {temperature}, the paper's setting)")
    group.add_argument("--top-k", type=int, default=top_k, help=f"keep the k most likely tokens (default {top_k})")
    group.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1] (default 1.0: off)")


DRAFTS_METAVAR = "lookahead[,context[:M[:N]]][,recycle[:R]]"
DRAFTS_HELP = ("the draft proposers: lookahead (the look-ahead tree); context (a chain of M drafts copied from the "
               "row's prompt and output after the latest, longest match of its last 1..N tokens; M = 4, N = 3 "
               "unless context:M:N); recycle (a chain of R drafts, each the likeliest successor of the one before "
               "it that the model's earlier validation calls in this row showed; R = 4 unless recycle:R). The "
               "chains are validated beside the tree, exactly. E.g. lookahead,context:6:5,recycle:3 (default: "
               "lookahead,context:4 with the default tree; lookahead when -L or --draft-tree is given)")


def add_iteration_args(parser: argparse.ArgumentParser, auto_help: str | None = None) -> None:
    """-L, --calls, --draft-tree and --drafts: the shape of a PaSS iteration (`iteration_from_args` reads them);
    `auto_help` describes `-L auto` where the command takes it."""
    tree = ",".join(map(str, DEFAULT_TREE))
    group = parser.add_argument_group("PaSS iteration (--mode pass)")
    group.add_argument("--num-lookahead", "-L", default=None, metavar="N|auto" if auto_help else "N",
                       help="look-ahead steps L: a chain of L drafts (default: the depth of --draft-tree)"
                            + (f"; {auto_help}" if auto_help else ""))
    group.add_argument("--calls", type=int, choices=CALLS, default=None,
                       help="model calls per iteration: 2 = the paper (a drafting call, then a validation call; "
                            "A+2 tokens per iteration), 1 = validate and draft in one wider call (A+1 tokens per "
                            f"call) (default {DEFAULT_CALLS})")
    group.add_argument("--draft-tree", default=None, metavar="K1,K2,...",
                       help="candidates per look-ahead depth, verified in one call with a tree mask (e.g. 3,1,1: "
                            "three candidates for the first draft); sets L to its depth (default "
                            f"{tree} when -L is not given, else a chain of L)")
    group.add_argument("--drafts", default=None, metavar=DRAFTS_METAVAR, help=DRAFTS_HELP)


def iteration_from_args(args, mode: str | None = "pass", auto: bool = False):
    """The `Iteration` that --mode, -L, --calls, --draft-tree and --drafts name (the defaults apply in
    `Iteration.from_options`, once), checked before a model is loaded. With `auto` (generate), "auto"
    for `-L auto` and where no -L, --calls, --draft-tree or --drafts is given and --mode is not ar: the
    tuned default (`cli._tuned`; --mode pass then takes its fastest PaSS setting)."""
    from .iteration import DecodeError, Iteration

    if auto and mode != "ar":
        if args.num_lookahead == "auto":
            drafts = 0 if args.drafts is None else args.drafts  # the default context chain is not asked for here
            chosen = Iteration.from_options(mode, None, args.calls, args.draft_tree, drafts)  # checks the rest
            if chosen.context or chosen.recycle:
                raise DecodeError("-L auto predicts look-ahead drafts only: drop --drafts context and recycle, or give "
                                  "-L N or --draft-tree with it")
            return "auto"
        if all(option is None for option in (args.num_lookahead, args.calls, args.draft_tree, args.drafts)):
            return "auto"
    return Iteration.from_options(mode, args.num_lookahead, args.calls, args.draft_tree, args.drafts)


def sampling_from_args(args):
    from .sampling import SamplingConfig
    return SamplingConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)


def add_overwrite_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help="replace output files that exist already (default: refuse, before any work)")


def seed_arg(text: str) -> int:
    """argparse type of --seed: JAX keys take seeds that fit in 64 bits; 0..2**32-1 is plenty."""
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number is needed, got {text!r}") from None
    if not 0 <= seed < 2 ** 32:
        raise argparse.ArgumentTypeError(f"must be in 0..{2 ** 32 - 1}, got {seed}")
    return seed


def parse_int_list(text: str, option: str) -> tuple[int, ...]:
    """'1,2,4' -> (1, 2, 4), sorted, without repeats, all >= 1."""
    try:
        values = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise PassJaxError(f"{option} takes a comma list of integers such as 1,2,4, got {text!r}") from None
    if not values or values[0] < 1:
        raise PassJaxError(f"{option} values must be >= 1, got {text!r}")
    return tuple(values)


def read_lookahead_arg(spec: str):
    """A --lookahead PATH read before loading a model, so that a bad file fails in a second, as the
    `lookahead.Resolved` to hand to `lookahead.resolve(found=...)` (the file is read once); None for
    the names, which are resolved once the model is known."""
    from . import lookahead as lookahead_lib

    return None if spec in LOOKAHEAD_NAMES else lookahead_lib.read_file(spec)


def prompt_records(prompt: list[str] | None, prompts_file: str | None) -> Iterator[tuple[Any, str]]:
    """(id, text) of --prompt TEXT (repeatable; ids "--prompt 1", ...) then of --prompts FILE.jsonl (one
    {"prompt": ...} a line, read lazily; its "id", or else its line number). An empty prompt or an id
    seen before is one error line, raised when that line is reached."""
    from . import jsonl

    seen: set[str] = set()

    def checked(record_id, text: str, where: str) -> tuple[Any, str]:
        if not text.strip():
            raise PassJaxError(f"{where}: empty prompt: every prompt needs some text to continue")
        key = json.dumps(record_id)
        if key in seen:
            raise PassJaxError(f"{where}: duplicate id {key}: each prompt needs its own id")
        seen.add(key)
        return record_id, text

    for number, text in enumerate(prompt or [], 1):
        yield checked(f"--prompt {number}", text, f"--prompt {number}")
    if prompts_file:
        name = "<stdin>" if prompts_file == "-" else prompts_file
        for number, record in jsonl.records(prompts_file, "prompt", what="prompts file"):
            record_id = record.get("id", number)
            if not isinstance(record_id, (str, int)) or isinstance(record_id, bool):
                raise PassJaxError(f'{name}:{number}: "id" must be a string or an integer, got {record_id!r:.40}')
            yield checked(record_id, record["prompt"], f"{name}:{number}")


def read_prompts(prompt: list[str] | None, prompts_file: str | None) -> list[str]:
    """Every prompt of `prompt_records`, in order; none at all is an error."""
    prompts = [text for _, text in prompt_records(prompt, prompts_file)]
    if not prompts:
        raise PassJaxError("no prompt: give --prompt TEXT (repeatable) or --prompts FILE.jsonl")
    return prompts


def enable_compilation_cache() -> None:
    """JAX's persistent compilation cache under the pass-jax cache directory, unless turned off or
    the user set JAX's own: a later run loads the compiled decode loop instead of compiling it."""
    import jax

    if os.environ.get("PASS_JAX_COMPILATION_CACHE", "1") == "0" or jax.config.jax_compilation_cache_dir:
        return
    jax.config.update("jax_compilation_cache_dir", str(cache_dir() / "xla"))
    _repair_damaged_entries(cache_dir() / "xla")
    # Cache every program: JAX's default skips those that compiled in under a second.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def _repair_damaged_entries(directory: Path) -> None:
    """A damaged entry (a truncated or overwritten file) would fail to load on every run, each time with
    JAX's warning, and be recompiled but never rewritten (JAX writes only missing entries). Remove it
    when it fails to load, with one line: JAX then compiles and writes a good one."""
    try:
        from jax._src import compilation_cache
        read = compilation_cache.get_executable_and_time
    except (ImportError, AttributeError):  # another JAX version: its own behaviour
        return
    if getattr(read, "_pass_jax_repairs", False):
        return

    def get_executable_and_time(cache_key, *args, **kwargs):
        try:
            return read(cache_key, *args, **kwargs)
        except Exception as err:
            for suffix in ("-cache", "-atime"):
                (directory / f"{cache_key}{suffix}").unlink(missing_ok=True)
            log(f"pass-jax: removed a damaged compilation cache entry {directory / cache_key} "
                f"({type(err).__name__}); compiling it again")
            return None, None

    get_executable_and_time._pass_jax_repairs = True
    compilation_cache.get_executable_and_time = get_executable_and_time
