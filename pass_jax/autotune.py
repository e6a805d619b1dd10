"""`-L auto`: pick the PaSS iteration (calls, L, draft tree) predicted to be fastest on this backend.

`pick` is the one entry point; `generate -L auto` decodes with its choice and `bench` adds it as a row.

Two measured inputs make the prediction:
- the cost of one cached decode call per shape (input width, positions projected onto the
  vocabulary), timed here on the running backend, relative to ar's width-1 call;
- the look-ahead parameters' acceptance per look-ahead position and per number of candidates K, stored in
  their JSON metadata (`"acceptance"`, written by `pass-jax train eval --write-metadata`).
With a_d(K) the probability that one of K candidates at depth d is accepted once the earlier
depths were, a tree (K_1..K_D) accepts E[A] = sum_k prod_{d<=k} a_d(K_d) drafts per iteration.
Two calls commit E[A] + 2 tokens, one call E[A] + 1. The predicted ratio against ar is tokens per
iteration over the iteration's cost in ar steps.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any, Iterable, Sequence

from .errors import PassJaxError
from .iteration import DEFAULT_ITERATION, Iteration

# The candidates, in one place (`candidate_iterations`): the chains up to MAX_AUTO_L and these trees
# (each a tree's branching, its length L), with one or two calls, no call wider than MAX_WIDTH inputs.
# Narrow trees first: on a CPU, widths 2-5 cost 1.2-1.4 ar calls and wide ones 2-3 (docs/BENCHMARKS.md).
CANDIDATE_TREES = ((2,), (3,), (2, 1), (3, 1), (2, 2), (3, 1, 1), (4, 1, 1), (3, 2, 1), (4, 2), (4, 2, 1, 1))
MAX_AUTO_L = 8
# On a CPU a call of width 2-5 costs 1.2-1.5 ar calls and wider ones 1.5-3 (docs/BENCHMARKS.md), which no
# measured acceptance repaid, and each shape costs a compilation when tuning: there, only narrow calls.
CPU_MAX_WIDTH = 5
# Predictions leave out the loop's own work, so the best few are timed as real decode loops.
TIMED_CANDIDATES = 2
# Context drafts (prompt lookup in the row's own tokens) have no acceptance metadata to predict them from,
# so these are always timed as real decode loops: on a CPU narrow ones (widths 4, 6 and 8: two calls with
# L=1 and 2 context drafts; one call with L=1 and 1 or 2), elsewhere the default iteration with its chain.
CPU_CONTEXT_CANDIDATES = (Iteration(2, (1,), 2), Iteration(1, (1,), 1), Iteration(1, (1,), 2))
ACCELERATOR_CONTEXT_CANDIDATES = (DEFAULT_ITERATION,)


class AutotuneError(PassJaxError):
    """`-L auto` cannot predict for these look-ahead parameters."""


def candidate_iterations(max_lookahead: int = MAX_AUTO_L, calls: Iterable[int] = (1, 2),
                         max_width: int | None = None) -> list[Iteration]:
    shapes = [(1,) * n for n in range(1, max_lookahead + 1)]
    shapes += [t for t in CANDIDATE_TREES if len(t) <= max_lookahead]
    return [it for it in (Iteration(c, t) for c in calls for t in shapes) if max_width is None or it.width <= max_width]


def expected_accepted(acceptance: dict[str, list[float | None]], tree: Sequence[int]) -> float:
    """E[A] of a tree from the per-depth acceptance with K candidates (`acceptance[str(K)][d]`). A
    depth that the diagnostic never reached is null there; it only matters if it can be reached."""
    total, reach = 0.0, 1.0
    for depth, k in enumerate(tree):
        if reach == 0.0:
            break
        rates = acceptance.get(str(k))
        if rates is None or depth >= len(rates) or rates[depth] is None:
            raise AutotuneError(f"the look-ahead parameters' metadata has no acceptance for {k} candidates at depth {depth + 1}")
        reach *= rates[depth]
        total += reach
    return total


def predictable(iteration: Iteration, acceptance: dict[str, list[float | None]]) -> bool:
    """Whether the acceptance table covers every reachable depth and candidate count of the iteration."""
    try:
        expected_accepted(acceptance, iteration.draft_tree)
    except AutotuneError:
        return False
    return True


def predict(iteration: Iteration, acceptance: dict[str, list[float]], relative_cost: dict[tuple[int, int], float]
            ) -> dict[str, float]:
    """Tokens per call and the speed ratio against ar for one iteration. Context drafts are not counted
    (no metadata predicts them), so for an iteration with a context chain this is a lower bound."""
    accepted = expected_accepted(acceptance, iteration.draft_tree)
    tokens = accepted + iteration.calls  # two calls: d_1, A drafts, one more; one call: A drafts, one more
    cost = sum(relative_cost[shape] for shape in iteration.call_shapes())
    return {"expected_accepted": accepted, "tokens_per_call": tokens / iteration.calls, "ratio_vs_ar": tokens / cost}


def acceptance_table(metadata: dict[str, Any] | None, greedy: bool) -> dict[str, list[float]] | None:
    """The metadata's acceptance for greedy or sampled decoding, or None when it has none."""
    entry = (metadata or {}).get("acceptance")
    if not entry:
        return None
    return entry.get("greedy" if greedy else "sampled")


def measure_call_costs(model, shapes: Iterable[tuple[int, int]], batch_size: int = 1, context: int = 256,
                       repeats: int = 5) -> dict[tuple[int, int], float]:
    """Median milliseconds of one cached decode call per (width, projected positions), timed in rotated
    order after a warm-up. (1, 1) is ar's call and is always included."""
    import jax
    import jax.numpy as jnp

    from .model import causal_mask, forward, gather_positions, init_cache, lm_head

    config = model.config
    shapes = sorted({(1, 1), *shapes})
    length = context + max(w for w, _ in shapes) + 1
    index = jnp.full((batch_size,), context, jnp.int32)

    def call(params, tokens, cache, projected):
        width = tokens.shape[1]
        positions = index[:, None] + jnp.arange(width)[None]
        hidden, cache = forward(params, config, tokens, positions, causal_mask(index, width, length), cache=cache,
                                write_index=index, hidden_only=True)
        return lm_head(params, config, gather_positions(hidden, projected)), cache

    call = jax.jit(call, donate_argnums=2)
    caches, times = {}, {shape: [] for shape in shapes}

    def timed(shape, cache):
        width, projected = shape
        tokens = jnp.ones((batch_size, width), jnp.int32)
        picks = jnp.broadcast_to(jnp.arange(projected), (batch_size, projected))
        start = time.perf_counter()
        logits, cache = call(model.params, tokens, cache, picks)
        logits.block_until_ready()
        return time.perf_counter() - start, cache

    for shape in shapes:  # compile and warm up
        _, caches[shape] = timed(shape, init_cache(config, batch_size, length))
    for repeat in range(repeats):
        shift = repeat % len(shapes)
        for shape in [*shapes[shift:], *shapes[:shift]]:
            seconds, caches[shape] = timed(shape, caches[shape])
            times[shape].append(seconds)
    return {shape: 1000 * statistics.median(t) for shape, t in times.items()}


def relative(costs_ms: dict[tuple[int, int], float]) -> dict[tuple[int, int], float]:
    return {shape: ms / costs_ms[(1, 1)] for shape, ms in costs_ms.items()}


def choose(iterations: Sequence[Iteration], acceptance: dict[str, list[float]],
           relative_cost: dict[tuple[int, int], float]) -> list[tuple[Iteration, dict[str, float]]]:
    """Every iteration with its prediction, best predicted ratio first (those the metadata cannot
    predict are left out)."""
    rows = [(iteration, predict(iteration, acceptance, relative_cost)) for iteration in iterations
            if predictable(iteration, acceptance)]
    if not rows:
        raise AutotuneError("the look-ahead parameters' acceptance metadata covers none of the candidate iterations")
    return sorted(rows, key=lambda row: -row[1]["ratio_vs_ar"])


def _loop_generator(model, sampling, iteration: Iteration, lookahead, batch_size: int, new_tokens: int):
    from .generate import Generator

    return Generator(model, iteration, lookahead=None if iteration.mode == "ar" else lookahead,
                     max_new_tokens=new_tokens, sampling=sampling, batch_size=batch_size)


def _tokens_per_second(generator, prompt, seed: int) -> float:
    import jax
    import numpy as np

    state, seconds = generator.generate_ids(prompt, seed=seed)
    return int(np.sum(jax.device_get(state.stats.new_tokens))) / seconds


def timed_ratios(model, iterations: Sequence[Iteration], lookahead, sampling, batch_size: int = 1,
                 new_tokens: int = 64, rounds: int = 5, prompt_ids: Sequence[int] | None = None) -> list[float]:
    """Each iteration's committed tokens per second against ar's, all from the real jitted decode loops
    on `prompt_ids` (the user's own prompt; default a fixed 64-token one), after a warm-up. This counts
    what the call-cost prediction leaves out (sampling, the rejection rule, tree bookkeeping, K/V
    moves) and the acceptance the drafts really get on this prompt, which can be far below the
    metadata's (measured after corpus text, not after the model's own output), context drafts' included.
    Each round uses a new seed and runs ar and every iteration once, in an order rotated per round; an
    iteration's result is the median of its per-round ratios to that round's ar. `lookahead`: what
    `Generator` takes (a `lookahead.Resolved` or parameters)."""
    ar = _loop_generator(model, sampling, Iteration.AR, None, batch_size, new_tokens)
    candidates = [_loop_generator(model, sampling, iteration, lookahead, batch_size, new_tokens)
                  for iteration in iterations]
    vocab = model.config.vocab_size
    prompt = [list(prompt_ids) if prompt_ids is not None else [(7 * i + 3) % vocab for i in range(64)]] * batch_size
    everyone = [ar, *candidates]
    for generator in everyone:
        generator.generate_ids(prompt)  # compile and warm up
    ratios = [[] for _ in candidates]
    for seed in range(1, rounds + 1):
        shift = seed % len(everyone)
        rate = {id(generator): _tokens_per_second(generator, prompt, seed)
                for generator in everyone[shift:] + everyone[:shift]}
        for row, generator in zip(ratios, candidates):
            row.append(rate[id(generator)] / rate[id(ar)])
    return [statistics.median(row) for row in ratios]


@dataclasses.dataclass(frozen=True, eq=False)
class Pick:
    """What the tuning concluded: `iteration` is what to decode with (`best`, or `Iteration.AR` when ar
    is predicted or timed faster)."""

    iteration: Iteration
    best: Iteration                   # the best PaSS iteration (by timed loop when timed, else predicted)
    prediction: dict[str, float]      # its `predict` row
    timed_ratio: float | None         # its timed decode loop against ar's (None: the prediction chose ar)
    rows: list                        # every predictable (iteration, prediction), best first
    costs: dict[tuple[int, int], float]  # ms per call shape on this backend

    def summary(self) -> str:
        """One line: the choice and why."""
        uncounted = " without its context drafts" if self.best.context else ""
        head = f"{self.best.label()}, {self.prediction['tokens_per_call']:.2f} tokens per call{uncounted}, predicted " \
               f"{self.prediction['ratio_vs_ar']:.2f}x ar from call costs"
        if self.timed_ratio is None:
            return f"no PaSS iteration is predicted to beat autoregressive decoding here (best: {head}); ar"
        verdict = "ar" if self.iteration.mode == "ar" else self.iteration.label()
        return f"{head}, {self.timed_ratio:.2f}x ar from the timed decode loops; {verdict}"


def context_candidates(backend: str) -> tuple[Iteration, ...]:
    """The iterations with a context chain that `pick` times on `backend` (they cannot be predicted)."""
    return CPU_CONTEXT_CANDIDATES if backend == "cpu" else ACCELERATOR_CONTEXT_CANDIDATES


def pick(model, lookahead, sampling, batch_size: int = 1, prompt_ids: Sequence[int] | None = None,
         costs: dict[tuple[int, int], float] | None = None, log=lambda message: None) -> Pick:
    """The one chooser (`generate`'s tuned default and `-L auto`, `bench`'s auto row): predict every
    candidate iteration from `lookahead.metadata`'s acceptance (a `lookahead.Resolved`) and this
    backend's call costs (timed here; `costs`, if given, holds shapes timed already and gets the new
    ones), then time against ar's, in the same rounds on `prompt_ids`, the decode loops of the
    TIMED_CANDIDATES best predictions above 1.0x and of every `context_candidates` iteration (whose
    context drafts no prediction counts), and keep the fastest, or ar when none beats it."""
    acceptance = acceptance_table(lookahead.metadata, sampling.greedy)
    if acceptance is None:
        raise AutotuneError("-L auto needs the look-ahead parameters' measured acceptance (an \"acceptance\" entry in "
                            "their JSON metadata, written by `pass-jax train eval --write-metadata`); give -L N instead")
    import jax

    backend = jax.default_backend()
    max_width = CPU_MAX_WIDTH if backend == "cpu" else None
    candidates = [c for c in candidate_iterations(max_width=max_width) if predictable(c, acceptance)]
    with_context = [c for c in context_candidates(backend) if predictable(c, acceptance)]
    costs = {} if costs is None else costs
    missing = {shape for c in candidates + with_context for shape in c.call_shapes()} - set(costs)
    if missing:
        log(f"autotune: timing one decode call per candidate shape ({len(missing)}) on this backend ...")
        costs.update(measure_call_costs(model, missing, batch_size))
    rows = choose(candidates + with_context, acceptance, relative(costs))
    predicted = [row for row in rows if not row[0].context][:TIMED_CANDIDATES]
    timed = [row for row in predicted if row[1]["ratio_vs_ar"] > 1.0] + [row for row in rows if row[0].context]
    if not timed:
        return Pick(Iteration.AR, *rows[0], None, rows, costs)
    log(f"autotune: timing the decode loops of {'; '.join(iteration.label() for iteration, _ in timed)} against ar's "
        "on the first prompt ...")
    ratios = timed_ratios(model, [iteration for iteration, _ in timed], lookahead, sampling, batch_size,
                          prompt_ids=prompt_ids)
    ratio, (best, prediction) = max(zip(ratios, timed), key=lambda t: t[0])
    return Pick(best if ratio > 1.0 else Iteration.AR, best, prediction, ratio, rows, costs)
