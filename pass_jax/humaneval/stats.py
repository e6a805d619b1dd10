"""pass@k (Chen et al., 2021) with bootstrap intervals, and the paired comparison of two modes."""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from .problems import HumanEvalError


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
