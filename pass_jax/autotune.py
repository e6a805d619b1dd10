"""`-L auto`: pick the PaSS setting (calls, L, draft tree) predicted to be fastest on this backend.

Two measured inputs make the prediction:
- the cost of one cached decode call per shape (input width, positions projected onto the
  vocabulary), timed here on the running backend, relative to ar's width-1 call;
- the vectors' acceptance per look-ahead position and per number of candidates K, stored in
  their JSON metadata at export (`"acceptance"`; see `pass-jax train eval`).
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

from .draft_tree import DraftTree
from .errors import PassJaxError

# Candidate trees beside the chains; each is a tree's branching (its length is L).
CANDIDATE_TREES = ((2, 1), (3, 1), (2, 2), (3, 1, 1), (4, 1, 1), (3, 2, 1), (4, 2, 1, 1))
MAX_AUTO_L = 8


class AutotuneError(PassJaxError):
    """`-L auto` cannot predict for these vectors."""


@dataclasses.dataclass(frozen=True)
class Setting:
    calls: int
    draft_tree: tuple[int, ...]

    @property
    def num_lookahead(self) -> int:
        return len(self.draft_tree)

    @property
    def is_chain(self) -> bool:
        return all(k == 1 for k in self.draft_tree)

    def label(self) -> str:
        shape = f"L={self.num_lookahead}" if self.is_chain else "tree " + ",".join(map(str, self.draft_tree))
        return f"{shape}, {self.calls} call{'s' if self.calls == 2 else ''}"

    def call_shapes(self) -> list[tuple[int, int]]:
        """(input width, positions projected onto the vocabulary) of each call of one iteration."""
        nodes = DraftTree(self.draft_tree).num_nodes + 1
        if self.calls == 2:
            return [(self.num_lookahead + 1, self.num_lookahead + 1), (nodes, nodes)]
        return [(nodes * (self.num_lookahead + 1), nodes + self.num_lookahead)]


def candidate_settings(max_lookahead: int, calls: Iterable[int] = (1, 2)) -> list[Setting]:
    shapes = [(1,) * n for n in range(1, max_lookahead + 1)]
    shapes += [t for t in CANDIDATE_TREES if len(t) <= max_lookahead]
    return [Setting(c, t) for c in calls for t in shapes]


def expected_accepted(acceptance: dict[str, list[float | None]], tree: Sequence[int]) -> float:
    """E[A] of a tree from the per-depth acceptance with K candidates (`acceptance[str(K)][d]`). A
    depth that the diagnostic never reached is null there; it only matters if it can be reached."""
    total, reach = 0.0, 1.0
    for depth, k in enumerate(tree):
        if reach == 0.0:
            break
        rates = acceptance.get(str(k))
        if rates is None or depth >= len(rates) or rates[depth] is None:
            raise AutotuneError(f"the vectors' metadata has no acceptance for {k} candidates at depth {depth + 1}")
        reach *= rates[depth]
        total += reach
    return total


def predictable(setting: Setting, acceptance: dict[str, list[float | None]]) -> bool:
    """Whether the acceptance table covers every reachable depth and candidate count of the setting."""
    try:
        expected_accepted(acceptance, setting.draft_tree)
    except AutotuneError:
        return False
    return True


def predict(setting: Setting, acceptance: dict[str, list[float]], relative_cost: dict[tuple[int, int], float]
            ) -> dict[str, float]:
    """Tokens per call and the speed ratio against ar for one setting."""
    accepted = expected_accepted(acceptance, setting.draft_tree)
    tokens = accepted + (2 if setting.calls == 2 else 1)
    cost = sum(relative_cost[shape] for shape in setting.call_shapes())
    return {"expected_accepted": accepted, "tokens_per_call": tokens / setting.calls, "ratio_vs_ar": tokens / cost}


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
        hidden, cache = forward(params, config, tokens, positions, causal_mask(index, width, length), cache, index,
                                hidden_only=True)
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


def choose(settings: Sequence[Setting], acceptance: dict[str, list[float]],
           relative_cost: dict[tuple[int, int], float]) -> list[tuple[Setting, dict[str, float]]]:
    """Every setting with its prediction, best predicted ratio first (settings the metadata cannot
    predict are left out)."""
    rows = [(setting, predict(setting, acceptance, relative_cost)) for setting in settings
            if predictable(setting, acceptance)]
    if not rows:
        raise AutotuneError("the vectors' acceptance metadata covers none of the candidate settings")
    return sorted(rows, key=lambda row: -row[1]["ratio_vs_ar"])


def _loop_generator(model, sampling, setting: Setting | None, lookahead, batch_size: int, new_tokens: int):
    from .generate import Generator

    mode = {"mode": "ar"} if setting is None else {
        "mode": "pass", "num_lookahead": setting.num_lookahead, "calls": setting.calls, "lookahead": lookahead,
        "draft_tree": () if setting.is_chain else setting.draft_tree}
    return Generator(model, max_new_tokens=new_tokens, sampling=sampling, batch_size=batch_size, **mode)


def _tokens_per_second(generator, prompt, seed: int) -> float:
    import jax
    import numpy as np

    state, seconds = generator.generate_ids(prompt, seed=seed)
    return int(np.sum(jax.device_get(state.stats.new_tokens))) / seconds


def timed_ratio(model, setting: Setting, lookahead, sampling, batch_size: int = 1, new_tokens: int = 64,
                rounds: int = 5, prompt_ids: Sequence[int] | None = None) -> float:
    """The setting's committed tokens per second against ar's, both from the real jitted decode loop on
    `prompt_ids` (the user's own prompt; default a fixed 64-token one), after a warm-up. This counts
    what the call-cost prediction leaves out (sampling, the rejection rule, tree bookkeeping, K/V
    moves) and the acceptance the drafts really get on this prompt, which can be far below the
    metadata's (measured after corpus text, not after the model's own output). Rounds use new seeds
    and alternate which runs first; the result is the median of the per-round ratios."""
    ar = _loop_generator(model, sampling, None, None, batch_size, new_tokens)
    candidate = _loop_generator(model, sampling, setting, lookahead, batch_size, new_tokens)
    vocab = model.config.vocab_size
    prompt = [list(prompt_ids) if prompt_ids is not None else [(7 * i + 3) % vocab for i in range(64)]] * batch_size
    for generator in (ar, candidate):
        generator.generate_ids(prompt)  # compile and warm up
    ratios = []
    for seed in range(1, rounds + 1):
        order = [ar, candidate][::1 if seed % 2 else -1]
        rate = {id(generator): _tokens_per_second(generator, prompt, seed) for generator in order}
        ratios.append(rate[id(candidate)] / rate[id(ar)])
    return statistics.median(ratios)


def autotune(model, metadata: dict[str, Any] | None, greedy: bool, max_lookahead: int = MAX_AUTO_L,
             calls: Iterable[int] = (1, 2), batch_size: int = 1):
    """(best setting, its prediction, every row) for `-L auto` on the running backend."""
    acceptance = acceptance_table(metadata, greedy)
    if acceptance is None:
        raise AutotuneError("-L auto needs the vectors' measured acceptance (an \"acceptance\" entry in their JSON "
                            "metadata, written by `pass-jax train eval`); give -L N instead")
    settings = [s for s in candidate_settings(max_lookahead, calls) if predictable(s, acceptance)]
    costs = measure_call_costs(model, [s for setting in settings for s in setting.call_shapes()], batch_size)
    rows = choose(settings, acceptance, relative(costs))
    return rows[0][0], rows[0][1], rows, costs
