"""`run_bench`: every method on the same prompts and seeds, in interleaved rounds."""
from __future__ import annotations

import os
from typing import Any, Callable

from tqdm.auto import tqdm

from .. import autotune
from ..cli_args import log as _log
from ..typed_config import to_json
from .machine import machine_info, peak_device_mb, peak_host_mb, roofline
from .methods import RoundResult, pass_jax_methods, transformers_methods, transformers_unavailable_reason
from .rows import add_predictions, add_ratios, cost_key, summarize_method
from .settings import BenchError, BenchSettings


def run_bench(model, prompts: dict[str, list[str]], settings: BenchSettings, *, progress: bool = False,
              log: Callable[[str], None] | None = None, found=None) -> dict[str, Any]:
    """Benchmark every method on `prompts` ({domain: [prompt, ...]}) with an already-loaded model.

    Returns the report: {"machine", "settings", "notes", "runs"}. Transformers rows are skipped
    with a note when torch is missing, `settings.transformers` is off, or the checkpoint is not
    one transformers can read. `found`: a --lookahead PATH read already (`cli_args.read_lookahead_arg`).
    """
    log = log or _log
    notes = []
    costs: dict[tuple[int, int], float] | None = None
    if settings.call_costs or settings.auto:  # time one decode call per shape first: `-L auto` needs them
        shapes = {shape for iteration in settings.iterations() for shape in iteration.call_shapes()}
        costs = autotune.measure_call_costs(model, shapes, settings.batch_size)
    by_domain = pass_jax_methods(model, settings, prompts, costs, found=found)
    if settings.transformers:
        reason = transformers_unavailable_reason()
        if reason is None:
            try:
                hf = transformers_methods(model, settings)
            except BenchError as err:
                reason = str(err)
            else:
                by_domain = {domain: methods + hf for domain, methods in by_domain.items()}
        if reason is not None:
            notes.append(f"transformers+torch rows skipped: {reason}")
            log("note: " + notes[-1])
    units = [(domain, method) for domain, methods in by_domain.items() for method in methods]
    for domain, method in units:
        method.warmup(prompts[domain])
    results: dict[int, list[RoundResult]] = {i: [] for i in range(len(units))}
    peaks: dict[int, float | None] = {}
    bar = tqdm(total=settings.rounds * len(units), desc="bench", unit="run", disable=not progress)
    for round_index in range(settings.rounds):
        shift = round_index % len(units)
        for i in [*range(shift, len(units)), *range(shift)]:  # rotated order
            domain, method = units[i]
            bar.set_postfix_str(f"round {round_index + 1}: {domain} {method.name} L={method.num_lookahead}")
            results[i].append(method.run(prompts[domain], seed=settings.seed + 1000 * round_index))
            peaks[i] = peak_host_mb()
            bar.update()
    bar.close()
    device_mb = peak_device_mb()
    rows = [summarize_method(method, domain, results[i], peaks[i], device_mb, len(prompts[domain]))
            for i, (domain, method) in enumerate(units)]
    add_ratios(rows)
    call_costs = None
    if costs is not None:
        add_predictions(rows, autotune.relative(costs))
        call_costs = {"batch_size": settings.batch_size, "context": 256,
                      "ms": {cost_key(k): v for k, v in sorted(costs.items())},
                      "relative": {cost_key(k): v for k, v in sorted(autotune.relative(costs).items())}}
    notes.append("peak_host_mb is the process-wide peak resident memory when the row's last run ended "
                 "(it only grows); peak_device_mb is the device peak over the whole bench")
    return {"machine": machine_info(),
            "settings": {**to_json(settings), "domains": {d: len(p) for d, p in prompts.items()},
                         "model": model.source, "torch_threads": os.cpu_count()},
            "notes": notes, "runs": rows, "call_costs": call_costs,
            "roofline": roofline(model, rows) if settings.roofline else None}
