"""`pass-jax bench`: its arguments and the command (imports no JAX until the command runs)."""
from __future__ import annotations

import argparse
import json

from .. import outputs
from ..cli_args import (DRAFTS_HELP, DRAFTS_METAVAR, add_model_arg, add_overwrite_arg, add_sampling_args, log,
                        parse_int_list, read_lookahead_arg, sampling_from_args, seed_arg)
from ..defaults import BENCH_TREES

TREES_HELP = ", ".join(",".join(map(str, t)) for t in BENCH_TREES)


EPILOG = """examples:
  pass-jax bench                                          # text prompts; L = 1,2,4,6 and auto, trees 3,1,1,
                                                          # 4,2 and 4,2,1, each with 2 and 1 calls; 3 rounds
  pass-jax bench --domain both --json bench.json --plot plots/
  pass-jax bench --temperature 0 --num-lookahead 4 --rounds 5    # greedy
  pass-jax bench --prompts prompts.jsonl --no-transformers

tokens/s counts new tokens (EOS included) over decoding wall time; compilation and warm-up are
excluded and reported separately. peak_host_mb is the process-wide peak so far (it only grows)."""


def settings_from_args(args):
    """`BenchSettings` from the arguments (checked before any model is loaded)."""
    from ..typed_config import build
    from .settings import BenchError, BenchSettings

    values = [v.strip() for v in args.num_lookahead.split(",") if v.strip()]
    auto = "auto" in values
    chains = parse_int_list(",".join(v for v in values if v != "auto"), "--num-lookahead") if len(values) > auto else ()
    given = [text for text in (args.draft_tree or []) if text != "none"]
    trees = tuple(_parse_tree(text) for text in given) if args.draft_tree else BenchSettings.draft_trees
    if not chains and not trees and not auto:
        raise BenchError("give at least one PaSS setting: --num-lookahead, --draft-tree or auto")
    return build(BenchSettings, dict(num_lookahead=chains, calls=parse_int_list(args.calls, "--calls"),
                                     draft_trees=trees, drafts=_parse_drafts(args.drafts), auto=auto, max_new_tokens=args.max_new_tokens,
                                     sampling=sampling_from_args(args), batch_size=args.batch_size,
                                     rounds=args.rounds, lookahead=args.lookahead, seed=args.seed,
                                     transformers=not args.no_transformers))


def _parse_tree(text: str) -> tuple[int, ...]:
    from ..iteration import parse_tree

    return parse_tree(text)


def _parse_drafts(given: list[str] | None) -> tuple[str, ...]:
    """The proposer sets that repeated --drafts name (default: look-ahead drafts only); `BenchSettings`
    checks each before the model loads."""
    return tuple(dict.fromkeys(given)) if given else ("lookahead",)


def cmd_bench(args) -> int:
    from .. import loading
    from .prompts import corpus_prompts, file_prompts
    from .report import PLOT_FILES, call_cost_table, markdown_table, write_plots
    from .run import run_bench
    from .settings import BenchError

    # Reject bad settings before spending seconds on loading the model.
    settings = settings_from_args(args)
    if args.num_prompts < 1 or args.prompt_tokens < 1:
        raise BenchError("--num-prompts and --prompt-tokens must be >= 1")
    prompts = {"custom": file_prompts(args.prompts)} if args.prompts else None
    found = read_lookahead_arg(args.lookahead)  # a PATH, read once
    json_path = outputs.check_file(args.json, "--json", args.overwrite) if args.json else None
    plot_dir = outputs.check_files_in(args.plot, PLOT_FILES, "--plot", args.overwrite) if args.plot else None
    log(f"loading {args.model} ...")
    model = loading.load_model(args.model)
    if prompts is None:
        domains = ("text", "code") if args.domain == "both" else (args.domain,)
        prompts = {d: corpus_prompts(model.tokenizer, d, args.num_prompts, args.prompt_tokens) for d in domains}
    report = run_bench(model, prompts, settings, progress=True, found=found)
    report["settings"]["prompt_source"] = (args.prompts or
                                           f"held-out test documents, {args.prompt_tokens}-token prefixes")
    print(markdown_table(report["runs"]), flush=True)
    if report["roofline"]:
        r = report["roofline"]
        print(f"\nroofline: {r['weight_bytes'] / 1e6:.0f} MB of weights per step; bandwidth {r['reduction_gb_s']:.1f} GB/s "
              f"(reduction), {r['matvec_gb_s']:.1f} GB/s (matvec); AR step {r['ar_step_ms']:.1f} ms = "
              f"{r['ar_step_over_roofline']:.2f}x the {r['roofline_step_ms']:.1f} ms roofline", flush=True)
    if report["call_costs"]:
        print("\n" + call_cost_table(report), flush=True)
    if json_path:
        outputs.write_text(json_path, json.dumps(report, indent=1))
        log(f"wrote {json_path}")
    if plot_dir:
        for path in write_plots(report, plot_dir):
            log(f"wrote {path}")
    return 0


def register(subparsers) -> None:
    """Add the `bench` subcommand to the `pass-jax` parser."""
    parser = subparsers.add_parser(
        "bench", description="Time pass-jax AR, pass-jax PaSS for each L and transformers+torch generate (greedy, "
                    "sampling, prompt lookup) on the same prompts, in interleaved rounds.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_argument_group("prompts")
    source.add_argument("--prompts", metavar="FILE.jsonl", help='one {"prompt": ...} object per line '
                        "(default: prefixes of held-out test documents)")
    source.add_argument("--domain", choices=("text", "code", "both"), default="text",
                        help="built-in prompts: wiki text, Python code or both (default text; "
                        "ignored with --prompts)")
    source.add_argument("--num-prompts", type=int, default=8, help="built-in prompts per domain (default 8)")
    source.add_argument("--prompt-tokens", type=int, default=64, help="tokens per built-in prompt (default 64)")
    add_model_arg(parser, " (no transformers rows for that one)")
    parser.add_argument("--lookahead", default="default", metavar="{default,text,code,none,PATH}",
                        help="look-ahead parameters: default (the shipped ones for the prompts' domain), none "
                             "(untrained), or a .npz / Orbax path")
    parser.add_argument("--num-lookahead", "-L", default="1,2,4,6,auto", metavar="L1,L2,...[,auto]",
                        help="PaSS chains of L look-ahead steps to compare; auto adds the setting `generate -L auto` "
                             "picks from the look-ahead parameters' acceptance and this machine's call costs (default 1,2,4,6,auto)")
    parser.add_argument("--calls", default="2,1", metavar="C1,C2",
                        help="model calls per PaSS iteration to compare: 2 (the paper) and/or 1 (default 2,1)")
    parser.add_argument("--draft-tree", action="append", metavar="K1,K2,...",
                        help=f"a draft tree to compare (repeatable; default {TREES_HELP}; none for no tree)")
    parser.add_argument("--drafts", action="append", metavar=DRAFTS_METAVAR,
                        help="draft proposers to compare (repeatable; every chain and tree runs with each): "
                             + DRAFTS_HELP)
    parser.add_argument("--max-new-tokens", type=int, default=128, help="new tokens per prompt (default 128)")
    add_sampling_args(parser)
    parser.add_argument("--batch-size", type=int, default=1, help="prompts decoded together (default 1; "
                        "transformers prompt lookup always uses 1)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of every method (default 3)")
    parser.add_argument("--seed", type=seed_arg, default=0, help="PRNG seed of round 0 (default 0)")
    parser.add_argument("--no-transformers", action="store_true", help="skip the transformers+torch rows")
    parser.add_argument("--json", metavar="OUT.json", help="write the full report as JSON")
    parser.add_argument("--plot", metavar="DIR", help="write PNG figures into DIR")
    add_overwrite_arg(parser)
    parser.set_defaults(func=cmd_bench)
