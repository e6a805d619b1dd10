"""A report's rows: one per (domain, method), with speeds over rounds, decode statistics, ratios
against AR and transformers greedy, and the ratio measured call costs predict."""
from __future__ import annotations

import statistics
from typing import Any

from ..generate import summarize
from ..iteration import NGRAM, Iteration
from .methods import RoundResult
from .settings import AR, HF_GREEDY, PASS


def summarize_method(method, domain: str, results: list[RoundResult], peak_mb: float | None,
                     device_mb: float | None, num_prompts: int) -> dict[str, Any]:
    """One JSON row: speeds over rounds plus, for pass-jax, the decode statistics of all rounds."""
    speeds = [r.new_tokens / r.wall_s if r.wall_s > 0 else 0.0 for r in results]
    iteration = method.iteration if method.name == PASS else None  # ar and transformers rows: none
    row = {"domain": domain, "method": method.name, "backend": method.backend, "decoding": method.decoding,
           "num_lookahead": method.num_lookahead, "calls": None if iteration is None else iteration.calls,
           "draft_tree": None if iteration is None else list(iteration.draft_tree),
           **{chain: None if iteration is None else getattr(iteration, chain)
              for chain in ("context", "ngram", "recycle")},
           "setting": "–" if iteration is None else iteration.label() + (" (auto)" if method.auto else ""),
           "auto": method.auto, "lookahead_source": method.lookahead_source,
           "batch_size": method.batch_size, "prompts": num_prompts, "rounds": len(results),
           "new_tokens": sum(r.new_tokens for r in results), "wall_s": sum(r.wall_s for r in results),
           "tokens_per_s": statistics.median(speeds), "tokens_per_s_min": min(speeds),
           "tokens_per_s_max": max(speeds), "tokens_per_s_rounds": speeds,
           "ratio_vs_ar": None, "ratio_vs_transformers_greedy": None,
           "tokens_per_call": None, "calls_per_token": None, "mean_accepted": None,
           "predicted_ratio_vs_ar": None, "predicted_ratio_equal_call_cost": None,
           "position_acceptance": None, "context_share": None, "recycle_share": None, "tokens_per_iteration_hist": None,
           "compile_s": method.compile_s, "peak_host_mb": peak_mb, "peak_device_mb": device_mb}
    if results[0].stats is None:
        return row
    stats = [s for r in results for s in r.stats]
    summary = summarize(stats, row["wall_s"], method.compile_s)
    calls = summary["model_calls"]
    if method.num_lookahead is None:  # AR: one token per call; the prefill is no loop iteration
        hist = {"1": calls - len(stats)}
    else:  # an iteration with A accepted drafts commits A + calls tokens (fewer when cut by EOS/budget)
        hist = {str(accepted + iteration.calls): int(count) for accepted, count in enumerate(summary["accepted_hist"])}
    row.update(tokens_per_call=summary["tokens_per_call"], calls_per_token=calls / max(summary["new_tokens"], 1),
               mean_accepted=summary["mean_accepted"], position_acceptance=summary["position_acceptance"],
               context_share=summary["context_share"], recycle_share=summary["recycle_share"],
               tokens_per_iteration_hist=hist)
    return row


def row_iteration(row: dict[str, Any]) -> Iteration:
    """A PaSS row's `Iteration` (rows written before the recycle chain lack ngram and recycle)."""
    return Iteration(row["calls"], tuple(row["draft_tree"]), row.get("context") or 0, ngram=row.get("ngram") or NGRAM,
                     recycle=row.get("recycle") or 0)


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Speed ratios against pass-jax AR and transformers greedy of the same domain (None when absent)."""
    for row in rows:
        for key, reference in (("ratio_vs_ar", AR), ("ratio_vs_transformers_greedy", HF_GREEDY)):
            base = next((r for r in rows if r["domain"] == row["domain"] and r["method"] == reference), None)
            if base is not None and base["tokens_per_s"] > 0:
                row[key] = row["tokens_per_s"] / base["tokens_per_s"]


def add_predictions(rows: list[dict[str, Any]], relative_cost: dict[tuple[int, int], float]) -> None:
    """For each PaSS row: the speed ratio its measured tokens per call predict at this machine's call
    costs (tokens per iteration over the iteration's cost in ar steps), and at equal call costs (the
    memory-bound regime of the paper)."""
    for row in rows:
        if row["method"] == PASS and row["tokens_per_call"]:
            iteration = row_iteration(row)
            cost = sum(relative_cost[shape] for shape in iteration.call_shapes())
            row["iteration_cost_vs_ar_step"] = cost
            row["predicted_ratio_vs_ar"] = row["tokens_per_call"] * iteration.calls / cost
            row["predicted_ratio_equal_call_cost"] = row["tokens_per_call"]


def cost_key(shape: tuple[int, int]) -> str:
    width, projected = shape
    return str(width) if width == projected else f"{width}/{projected}"
