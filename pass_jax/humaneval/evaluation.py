"""The whole evaluation: sample completions with each mode, execute them, score them, report."""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from ..decoding import check_budget
from ..defaults import MODES
from ..generate import Generator, resolve_lookahead
from ..iteration import DEFAULT_ITERATION, Iteration
from ..sampling import PAPER, SamplingConfig
from ..typed_config import to_json
from .execution import check_all
from .problems import (PROMPT_STYLES, HumanEvalError, fence_stop_ids, model_prompt, resolve_prompt_style,
                       truncate_completion)
from .stats import paired_comparison, score


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    modes: tuple[str, ...] = MODES
    iteration: Iteration = DEFAULT_ITERATION  # the PaSS mode's (the ar mode decodes with Iteration.AR)
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
        if self.iteration.mode != "pass":
            raise HumanEvalError(f"the pass mode needs a PaSS iteration, got {self.iteration.label()}")
        check_budget(self.max_new_tokens)
        if self.num_samples < 1:
            raise HumanEvalError(f"--num-samples must be >= 1, got {self.num_samples}")
        if not self.ks or min(self.ks) < 1 or max(self.ks) > self.num_samples:
            raise HumanEvalError(f"--k values must be in 1..--num-samples ({self.num_samples}), got {list(self.ks)}")
        if self.timeout <= 0 or self.batch_size < 1:
            raise HumanEvalError("--timeout must be > 0 and --batch-size >= 1")


def sample_completions(model, problems: Sequence[dict[str, Any]], mode: str, settings: EvalSettings,
                       progress: bool = False, found=None) -> tuple[list[list[str]], dict[str, Any]]:
    """`num_samples` raw completions per problem with one `Generator`, and its generation summary.

    Every mode uses the same seeds; the samples of one problem differ because each batch row
    draws its own tokens.
    """
    style = resolve_prompt_style(model.tokenizer, settings.prompt_style)
    iteration = settings.iteration if mode == "pass" else Iteration.AR
    # `--lookahead default` means the shipped parameters trained on code
    lookahead = (resolve_lookahead(model, settings.lookahead, "code", iteration.num_lookahead, found)
                 if mode == "pass" else None)
    generator = Generator(model, iteration, lookahead=lookahead,
                          max_new_tokens=settings.max_new_tokens, sampling=settings.sampling,
                          batch_size=settings.batch_size,
                          stop_ids=fence_stop_ids(model.tokenizer) if style == "chat" else ())
    n = settings.num_samples
    prompts = [model_prompt(problem, style, model.tokenizer) for problem in problems for _ in range(n)]
    results, summary = generator.generate(prompts, seed=settings.seed, progress=progress)
    texts = [r.text for r in results]
    summary["lookahead_source"] = generator.lookahead_source
    summary["iteration"] = iteration.label()
    return [texts[i * n:(i + 1) * n] for i in range(len(problems))], summary


def evaluate(model, problems: Sequence[dict[str, Any]], settings: EvalSettings,
             progress: bool = False, found=None) -> dict[str, Any]:
    """Generate, execute and score every mode; returns the JSON report. `found`: a --lookahead PATH
    read already (`cli_args.read_lookahead_arg`)."""
    style = resolve_prompt_style(getattr(model, "tokenizer", None), settings.prompt_style)
    report: dict[str, Any] = {"settings": to_json(settings), "prompt_style": style, "problems": len(problems),
                              "modes": {}, "comparison": None, "samples": []}
    passed_by_mode = {}
    for mode in settings.modes:
        raw, summary = sample_completions(model, problems, mode, settings, progress, found)
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
    iterations = [f"{mode}: {r['generation']['iteration']}" for mode, r in report["modes"].items()
                  if "iteration" in r["generation"]]
    if iterations:
        lines.append("\niterations (as `generate` prints them): " + "; ".join(iterations))
    c = report["comparison"]
    if c is not None:
        lines.append(f"\npass - ar, pass@1: {c['pass_at_1_difference']:+.3f} [95% CI {c['ci_low']:+.3f}, "
                     f"{c['ci_high']:+.3f}] over {report['problems']} problems; pass better on "
                     f"{c['problems_b_better']}, ar better on {c['problems_a_better']}, tied on "
                     f"{c['problems_tied']} (sign test p = {c['sign_test_p']:.3g})")
    return "\n".join(lines)
