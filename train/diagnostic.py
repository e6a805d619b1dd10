"""How good are look-ahead drafts, against the best any blind drafter could do? (`pass-jax train eval`)

For an anchor a (the drafting call's pending token x_n = tokens[a]), the decode commits
y ~ p(. | x<=a) at once, and [LA]_1's draft q_1 is validated against p_1 = p(. | x<=a, y) without
having seen y. Everything here is exact over the processed distributions (temperature, top-k),
whose support is the top-k, computed on a KV cache: one prefix call per batch of sequences, then
the children y (top-k of p), the look-ahead group, and the grandchildren as calls on top of it.

Reported, pooled over anchors of the held-out split:
- ceiling (blind drafters): "mixture" is q* = sum_y p(y) p(. | .., y) (the brief's ceiling), with
  acceptance sum_y p(y) sum_z min(p(z | .., y), q*(z)); "optimum" is the largest acceptance of any
  distribution q that cannot see y, max_q sum_y p(y) sum_z min(p(z | .., y), q(z)), solved exactly
  (a concave, piecewise-linear program: fill q where the marginal gain is largest). The optimum can
  exceed the mixture, so it is the true ceiling. At [LA]_2 both run over the top-k x top-k
  grandchildren, weighted by p(y) p(z | .., y).
- model_path: the vectors' acceptance at [LA]_1 and [LA]_2 under the same weights (comparable to
  the ceiling), and its fraction of each ceiling.
- acceptance: per K = 1..max_candidates and position i, the probability that at least one of K
  candidates at [LA]_i is accepted given that positions < i were (each with K candidates):
  "sampled" with K i.i.d. draws from q_i and recursive rejection (P(all K rejected) =
  prod_k (1 - sum_z min(p_{k-1}(z), q(z))), p_k the residual norm(max(0, p_{k-1} - q))); "greedy"
  with the top-K of q_i, accepted when they hold argmax p. Positions 1 and 2 are exact; from 3 on,
  the accepted prefix is sampled (`paths` per anchor and K, each step's acceptance still exact).
- greedy_agreement: argmax q_i == argmax p_i along the greedy continuation, per position.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from pass_jax import lookahead as lookahead_lib
from pass_jax import outputs
from pass_jax.config import LlamaConfig
from pass_jax.model import gather_positions, lm_head
from pass_jax.sampling import PAPER, SamplingConfig, probabilities, residual_distribution
from . import cached
from .data import PackedDataset


@dataclasses.dataclass(frozen=True)
class DiagnosticSpec:
    """num_lookahead: positions reported; depth: exact positions (1, or 2 with the grandchildren and
    the sampled paths past 2); max_candidates: K = 1..this; paths: sampled accepted prefixes per
    anchor and K for positions past 2; batch: sequences per call."""

    num_lookahead: int = 8
    sampling: SamplingConfig = PAPER
    depth: int = 2
    max_candidates: int = 4
    paths: int = 2
    batch: int = 4

    def __post_init__(self):
        if self.sampling.greedy or self.sampling.top_p < 1.0:
            raise ValueError("the diagnostic needs a temperature > 0 and no top-p (top-k sampling)")
        if self.depth not in (1, 2) or self.depth > self.num_lookahead:
            raise ValueError(f"depth must be 1 or 2 and at most num_lookahead, got {self.depth}")

    @property
    def chains(self) -> int:
        """Continuations per anchor past position 2: the greedy one, then `paths` per K."""
        return 1 + self.max_candidates * self.paths


def pick_anchors(data: PackedDataset, num_sequences: int, anchors_per_seq: int, min_prefix: int = 16,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The first `num_sequences` test rows and, per row, sorted distinct anchors with at least
    `min_prefix` tokens before them: (tokens int [N, T], anchors int [N, G])."""
    rows = data.sequences[:num_sequences]
    choices = np.arange(min_prefix - 1, data.seq_len)
    if len(choices) < anchors_per_seq:
        raise ValueError(f"sequences of {data.seq_len} tokens hold fewer than {anchors_per_seq} anchors "
                         f"after a {min_prefix}-token prefix")
    rng = np.random.default_rng(seed)
    anchors = np.stack([np.sort(rng.choice(choices, anchors_per_seq, replace=False)) for _ in rows])
    return rows.astype(np.int32), anchors.astype(np.int32)


def candidates(p, q_on_p, max_candidates: int):
    """Recursive rejection with up to K i.i.d. draws from q, exactly.

    p [..., k]: the processed target on its support; q_on_p [..., k]: the draft's probabilities of
    those tokens (its mass elsewhere can never be accepted). Returns (alpha [..., K]: P(one of K
    draws accepted), accepted [..., K, k]: P(accepted, and the token is z)).
    """
    reach = jnp.ones(p.shape[:-1], p.dtype)
    mass = jnp.zeros_like(p)
    alphas, accepted = [], []
    for _ in range(max_candidates):
        overlap = jnp.minimum(p, q_on_p)
        mass = mass + reach[..., None] * overlap
        reach = reach * (1.0 - jnp.sum(overlap, axis=-1))
        alphas.append(1.0 - reach)
        accepted.append(mass)
        p = residual_distribution(p, q_on_p)
    return jnp.stack(alphas, axis=-1), jnp.stack(accepted, axis=-2)


def mixture_acceptance(weights, probs, index, vocab: int):
    """Acceptance of the mixture q* = sum_c w_c p_c: sum_c w_c sum_z min(p_c(z), q*(z)).
    weights [..., C], probs and index [..., C, k] (sparse p_c)."""
    flat_w = (weights[..., None] * probs).reshape(-1, probs.shape[-2] * probs.shape[-1])
    flat_i = index.reshape(flat_w.shape)
    mixture = jax.vmap(lambda i, w: jnp.zeros((vocab,), jnp.float32).at[i].add(w))(flat_i, flat_w)
    on = jnp.take_along_axis(mixture, flat_i, axis=-1).reshape(probs.shape)
    return jnp.sum(weights * jnp.sum(jnp.minimum(probs, on), axis=-1), axis=-1)


def optimum_acceptance(weights: np.ndarray, probs: np.ndarray, index: np.ndarray) -> float:
    """max over distributions q of sum_c w_c sum_z min(p_c(z), q(z)), for one anchor (numpy).

    Per token z, f_z(q) = sum_c w_c min(p_c(z), q) is concave and piecewise linear, with slope
    sum of w_c over the c with p_c(z) > q. Mass 1 is best spent on the steepest pieces first."""
    pieces = []  # (slope, length)
    flat_p, flat_i = probs.reshape(-1), index.reshape(-1)
    flat_w = np.repeat(weights.reshape(-1), probs.shape[-1])
    order = np.lexsort((-flat_p, flat_i))
    for token in np.unique(flat_i):
        rows = order[flat_i[order] == token]
        values = flat_p[rows]  # descending
        slopes = np.cumsum(flat_w[rows])
        lengths = values - np.append(values[1:], 0.0)
        pieces.extend(zip(slopes, lengths))
    total, budget = 0.0, 1.0
    for slope, length in sorted(pieces, key=lambda x: -x[0]):
        take = min(length, budget)
        total += slope * take
        budget -= take
        if budget <= 0:
            break
    return float(total)


def _greedy_hits(logits, token, max_candidates: int):
    """bool [..., K]: whether `token` (argmax p) is among the top-K of the draft logits, K = 1..max
    (ties count as in)."""
    top = jax.lax.top_k(logits, max_candidates)[0]
    return jnp.take_along_axis(logits, token[..., None], axis=-1) >= top


def _pick(x, index):
    """x [B, G, C, ...] at index int [B, G, n] -> [B, G, n, ...]."""
    batch, groups = x.shape[:2]
    return x[jnp.arange(batch)[:, None, None], jnp.arange(groups)[None, :, None], index]


def _scratch_sizes(spec: DiagnosticSpec, groups: int) -> dict[str, int]:
    k, num_l = spec.sampling.top_k, spec.num_lookahead
    sizes = {"children": groups * k, "lookahead": groups * num_l, "grandchildren": 0, "chains": 0}
    if spec.depth == 2:
        sizes["grandchildren"] = groups * k * k
        sizes["chains"] = max(num_l - 2, 0) * groups * spec.chains
    return sizes


def _offsets(spec: DiagnosticSpec, groups: int) -> dict[str, int]:
    sizes = _scratch_sizes(spec, groups)
    starts = np.cumsum([0] + list(sizes.values()))
    return dict(zip(list(sizes) + ["total"], map(int, starts)))


@functools.partial(jax.jit, static_argnames=("config", "spec"))
def _first_calls(params, lookahead, tokens, anchors, key, config: LlamaConfig, spec: DiagnosticSpec):
    """Prefix, children + look-ahead group, grandchildren; the exact statistics of positions 1-2."""
    sampling, kmax = spec.sampling, spec.max_candidates
    batch, seq_len = tokens.shape
    groups, k, num_l = anchors.shape[1], sampling.top_k, spec.num_lookahead
    off = _offsets(spec, groups)
    scratch = jnp.arange(off["total"])
    cache, hidden = cached.prefix(params, config, tokens, off["total"])
    w0, idx0 = cached.sparse_probs(lm_head(params, config, gather_positions(hidden, anchors)), sampling)

    # Children (slot g*k + c, at a+1) and the look-ahead group (slot g*L + i-1, at a+i) in one call.
    child_slot = jnp.arange(groups * k)
    la_slot = jnp.arange(groups * num_l)
    la_steps = la_slot % num_l + 1
    ids = jnp.concatenate([idx0.reshape(batch, -1), jnp.zeros((batch, groups * num_l), jnp.int32)], axis=1)
    anchor = jnp.concatenate([jnp.repeat(anchors, k, axis=1), jnp.repeat(anchors, num_l, axis=1)], axis=1)
    steps = jnp.broadcast_to(jnp.concatenate([jnp.zeros_like(child_slot), la_steps]), ids.shape)
    la_rel = scratch[None, :] - off["lookahead"]
    visible = jnp.concatenate([scratch[None, :] == child_slot[:, None],
                               (la_rel >= (la_slot - la_slot % num_l)[:, None]) & (la_rel <= la_slot[:, None])])
    out, cache = cached.extend(params, config, cache, seq_len, ids, anchor + jnp.maximum(steps, 1), anchor,
                               visible[None], seq_len, lookahead, steps)
    child_logits = lm_head(params, config, out[:, :groups * k]).reshape(batch, groups, k, -1)
    q_logits = lm_head(params, config, out[:, groups * k:]).reshape(batch, groups, num_l, -1)
    q = probabilities(q_logits, sampling)
    p1, i1 = cached.sparse_probs(child_logits, sampling)  # [B, G, k, k]
    alpha1, accepted1 = candidates(p1, jnp.take_along_axis(q[:, :, :1], i1, axis=-1), kmax)
    stats = {"w0": w0, "p1": p1, "i1": i1,
             "mixture1": mixture_acceptance(w0, p1, i1, config.vocab_size),
             "reach1": jnp.sum(w0[..., None] * alpha1, axis=2),  # [B, G, K] P(position 1 accepted)
             "greedy_hit1": _greedy_hits(q_logits[:, :, 0], i1[:, :, 0, 0], kmax)}
    if spec.depth == 1:
        return cache, q, q_logits, stats

    # Grandchildren: the top-k of each child (slot g*k*k + c*k + d, at a+2), seeing their child.
    grand_slot = jnp.arange(groups * k * k)
    visible = (scratch[None, :] == off["grandchildren"] + grand_slot[:, None]) | (
        scratch[None, :] == grand_slot[:, None] // k)
    anchor = jnp.repeat(anchors, k * k, axis=1)
    out, cache = cached.extend(params, config, cache, seq_len, i1.reshape(batch, -1), anchor + 2, anchor,
                               visible[None], seq_len + off["grandchildren"])
    p2, i2 = cached.sparse_probs(lm_head(params, config, out).reshape(batch, groups, k, k, -1), sampling)
    alpha2, accepted2 = candidates(p2, jnp.take_along_axis(q[:, :, 1, None, None], i2, axis=-1), kmax)
    weights2 = w0[..., None] * p1  # [B, G, k, k] the model's probability of (y, z)
    stats.update({
        "p2": p2, "i2": i2,
        "mixture2": mixture_acceptance(weights2.reshape(batch, groups, -1), p2.reshape(batch, groups, k * k, k),
                                       i2.reshape(batch, groups, k * k, k), config.vocab_size),
        "model_path2": jnp.sum(weights2 * alpha2[..., 0], axis=(2, 3)),
        # P(positions 1 and 2 accepted): y ~ p, then the token accepted at 1, then position 2.
        "reach2": jnp.einsum("bgc,bgcjd,bgcdj->bgj", w0, accepted1, alpha2),
        "greedy_hit2": _greedy_hits(q_logits[:, :, 1], i2[:, :, 0, 0, 0], kmax),
    })
    stats["chains"] = _start_chains(key, w0, alpha1, accepted1, alpha2, accepted2, i2, spec)
    return cache, q, q_logits, stats


def _normalized(mass):
    total = jnp.sum(mass, axis=-1, keepdims=True)
    return jnp.where(total > 0, mass / jnp.where(total > 0, total, 1.0), 1.0 / mass.shape[-1])


def _start_chains(key, w0, alpha1, accepted1, alpha2, accepted2, i2, spec: DiagnosticSpec):
    """Continuations for positions past 2, per anchor: chain 0 is greedy (the top child and
    grandchild), chain 1 + (K-1)*paths + s samples y ~ p, then the tokens accepted at positions 1
    and 2 with K candidates. Returns the first token to feed (at a+3), the (child, grandchild) it
    hangs from, and the weight prod_{j<=2} alpha_j of each sampled chain."""
    batch, groups, k = w0.shape
    kmax, paths = spec.max_candidates, spec.paths
    chain = jnp.arange(kmax * paths)
    num_k = chain // paths  # K-1 of each sampled chain
    key_y, key_1, key_2 = jax.random.split(key, 3)
    child = jax.random.categorical(key_y, jnp.log(w0)[:, :, None, :], shape=(batch, groups, kmax * paths))
    acc1 = _pick(accepted1, child)[:, :, chain, num_k]  # [B, G, n, k]
    a1 = _pick(alpha1, child)[:, :, chain, num_k]
    node = child * k + jax.random.categorical(key_1, jnp.log(_normalized(acc1)))
    acc2 = _pick(accepted2.reshape((batch, groups, k * k) + accepted2.shape[4:]), node)[:, :, chain, num_k]
    a2 = _pick(alpha2.reshape(batch, groups, k * k, kmax), node)[:, :, chain, num_k]
    third = jax.random.categorical(key_2, jnp.log(_normalized(acc2)))
    token = jnp.take_along_axis(_pick(i2.reshape(batch, groups, k * k, k), node), third[..., None], axis=-1)[..., 0]
    greedy = jnp.zeros((batch, groups, 1), jnp.int32)
    return {"token": jnp.concatenate([i2[:, :, :1, 0, 0], token], axis=2),
            "child": jnp.concatenate([greedy, child], axis=2),
            "grandchild": jnp.concatenate([greedy, node], axis=2),
            "weight1": a1, "weight2": a1 * a2}


@functools.partial(jax.jit, static_argnames=("config", "spec"), donate_argnames=("cache",))
def _chain_step(params, cache, q, q_logits, anchors, chains, key, step, config: LlamaConfig, spec: DiagnosticSpec):
    """Feed each chain's last accepted token at a+step; position `step`'s acceptance, the next token.
    `step` (3..L) is data: one compilation serves every position."""
    batch, groups = anchors.shape
    n, k, kmax = spec.chains, spec.sampling.top_k, spec.max_candidates
    seq_len = cache[0]["k"].shape[1] - _offsets(spec, groups)["total"]
    off = _offsets(spec, groups)
    scratch = jnp.arange(off["total"])
    chain = jnp.arange(groups * n)
    group = chain // n
    # each chain sees its child, its grandchild, its own earlier chain slots and itself
    child = off["children"] + group[None, :] * k + chains["child"].reshape(batch, -1)
    grand = off["grandchildren"] + group[None, :] * k * k + chains["grandchild"].reshape(batch, -1)
    rel = scratch[None, None, :] - off["chains"]
    own = (rel >= 0) & (rel % (groups * n) == chain[None, :, None]) & (rel < (step - 2) * groups * n)
    visible = own | (scratch[None, None, :] == child[..., None]) | (scratch[None, None, :] == grand[..., None])
    anchor = jnp.repeat(anchors, n, axis=1)
    out, cache = cached.extend(params, config, cache, seq_len, chains["token"].reshape(batch, -1), anchor + step,
                               anchor, visible, seq_len + off["chains"] + (step - 3) * groups * n)
    logits = lm_head(params, config, out).reshape(batch, groups, n, -1)
    p, index = cached.sparse_probs(logits, spec.sampling)
    q_i = jax.lax.dynamic_index_in_dim(q, step - 1, axis=2, keepdims=False)
    alpha, accepted = candidates(p, jnp.take_along_axis(q_i[:, :, None], index, axis=-1), kmax)
    sampled = jnp.arange(1, n)
    num_k = (sampled - 1) // spec.paths
    sampled_alpha, sampled_acc = alpha[:, :, sampled, num_k], accepted[:, :, sampled, num_k]
    following = jax.random.categorical(key, jnp.log(_normalized(sampled_acc)))
    token = jnp.concatenate([index[:, :, :1, 0],
                             jnp.take_along_axis(index[:, :, 1:], following[..., None], axis=-1)[..., 0]], axis=2)
    greedy_hit = _greedy_hits(jax.lax.dynamic_index_in_dim(q_logits, step - 1, axis=2, keepdims=False),
                              index[:, :, 0, 0], kmax)
    return cache, sampled_alpha, greedy_hit, {**chains, "token": token}


def _pool(numerators: list[np.ndarray], denominators: list[np.ndarray]) -> list[float | None]:
    return [float(n.sum() / d.sum()) if d.sum() > 0 else None for n, d in zip(numerators, denominators)]


def diagnose(params, config: LlamaConfig, lookahead, tokens: np.ndarray, anchors: np.ndarray,
             spec: DiagnosticSpec = DiagnosticSpec(), seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """The diagnostic of `lookahead` (any kind, at least num_lookahead steps) on the given anchors."""
    lookahead = lookahead_lib.prepare(lookahead, config, spec.num_lookahead)
    num_l, kmax = spec.num_lookahead, spec.max_candidates
    parts: dict[str, list] = {}
    chunks = range(0, len(tokens), spec.batch)
    key = jax.random.key(seed)
    for start in tqdm(chunks, desc="diagnostic", unit="batch", disable=not progress or len(chunks) < 2):
        rows = slice(start, start + spec.batch)
        tok, anc = jnp.asarray(tokens[rows]), jnp.asarray(anchors[rows])
        key, first_key = jax.random.split(key)
        cache, q, q_logits, stats = _first_calls(params, lookahead, tok, anc, first_key, config=config, spec=spec)
        stats = jax.device_get(stats)
        record = {"mixture1": stats["mixture1"], "reach1": stats["reach1"], "hit1": stats["greedy_hit1"],
                  "optimum1": np.array([[optimum_acceptance(w, p, i) for w, p, i in zip(*row)] for row in
                                        zip(stats["w0"], stats["p1"], stats["i1"])])}
        if spec.depth == 2:
            weights2 = stats["w0"][..., None] * stats["p1"]
            record.update(mixture2=stats["mixture2"], model_path2=stats["model_path2"], reach2=stats["reach2"],
                          hit2=stats["greedy_hit2"],
                          optimum2=np.array([[optimum_acceptance(w, p, i) for w, p, i in zip(*row)] for row in
                                             zip(weights2, stats["p2"], stats["i2"])]))
            chains = stats["chains"]
            record["weights"] = [chains["weight1"], chains["weight2"]]
            record["hits"] = []
            weight = chains["weight2"]
            chains = {k: jnp.asarray(v) for k, v in chains.items()}
            for step in range(3, num_l + 1):
                key, step_key = jax.random.split(key)
                cache, alpha, hit, chains = _chain_step(params, cache, q, q_logits, anc, chains, step_key,
                                                        jnp.int32(step), config=config, spec=spec)
                weight = weight * np.asarray(alpha)
                record["weights"].append(weight)
                record["hits"].append(np.asarray(hit))
        for name, value in record.items():
            parts.setdefault(name, []).append(value)
    return _summarize(parts, spec, len(tokens) * anchors.shape[1])


def _summarize(parts: dict[str, list], spec: DiagnosticSpec, num_anchors: int) -> dict[str, Any]:
    num_l, kmax = spec.num_lookahead, spec.max_candidates
    cat = {name: (np.concatenate([x.reshape((-1,) + x.shape[2:]) for x in value])
                  if not isinstance(value[0], list) else
                  [np.concatenate([chunk[j].reshape((-1,) + chunk[j].shape[2:]) for chunk in value])
                   for j in range(len(value[0]))])
           for name, value in parts.items()}
    mean = lambda name: float(np.mean(cat[name]))  # noqa: E731
    positions = min(spec.depth, num_l)
    ceiling = {"mixture": [mean(f"mixture{i}") for i in range(1, positions + 1)],
               "optimum": [mean(f"optimum{i}") for i in range(1, positions + 1)]}
    model_path = [float(np.mean(cat["reach1"][:, 0]))] + ([mean("model_path2")] if positions == 2 else [])
    # Greedy: P(positions 1..i all accepted) per anchor, by K.
    hits = [cat["hit1"]] + ([cat["hit2"]] + list(cat.get("hits", [])) if positions == 2 else [])
    greedy_reach = np.cumprod(np.stack(hits, axis=1), axis=1)  # [N, positions, K]
    greedy = {str(n + 1): _pool([greedy_reach[:, i, n] for i in range(len(hits))],
                                [np.ones(len(greedy_reach))] + [greedy_reach[:, i - 1, n] for i in range(1, len(hits))])
              for n in range(kmax)}
    sampled = {}
    for n in range(kmax):
        exact = [cat["reach1"][:, n]] + ([cat["reach2"][:, n]] if positions == 2 else [])
        rates = _pool(exact, [np.ones(len(exact[0]))] + exact[:-1])
        if positions == 2 and num_l > 2:  # past 2: sampled prefixes, this K's chains
            chains = slice(n * spec.paths, (n + 1) * spec.paths)
            weights = [w[:, chains] for w in cat["weights"]]
            rates += _pool(weights[2:], weights[1:-1])
        sampled[str(n + 1)] = rates
    return {
        "anchors": num_anchors,
        "sampling": {"temperature": spec.sampling.temperature, "top_k": spec.sampling.top_k},
        "ceiling": ceiling,
        "model_path": model_path,
        "fraction_of_ceiling": {kind: [m / c if c else None for m, c in zip(model_path, values)]
                                for kind, values in ceiling.items()},
        "acceptance": {"sampling": {"temperature": spec.sampling.temperature, "top_k": spec.sampling.top_k},
                       "sampled": sampled, "greedy": greedy},
        "greedy_agreement": [float(np.mean(h[:, 0])) for h in hits],
        "exact_positions": positions,
    }


def _row(name: str, values) -> str:
    return f"{name:<26}" + "".join(f"{'-' if v is None else f'{v:.3f}':>7}" for v in values)


def format_table(result: dict[str, Any]) -> str:
    """A plain-text summary of a diagnostic for the terminal."""
    num_l = len(result["greedy_agreement"])
    lines = [f"{result['anchors']} anchors, top-k {result['sampling']['top_k']}, "
             f"T {result['sampling']['temperature']}", _row("[LA]_i", range(1, num_l + 1)).replace(".000", "    ")]
    for kind, values in result["ceiling"].items():
        lines.append(_row(f"ceiling ({kind})", values))
    lines.append(_row("drafts (same weights)", result["model_path"]))
    for kind, values in result["fraction_of_ceiling"].items():
        lines.append(_row(f"fraction of {kind}", values))
    for mode in ("sampled", "greedy"):
        for k, values in result["acceptance"][mode].items():
            lines.append(_row(f"{mode}, K={k} (given < i)", values))
    lines.append(_row("greedy agreement", result["greedy_agreement"]))
    return "\n".join(lines)


def write_metadata(path, result: dict[str, Any]) -> None:
    """Store a diagnostic in the parameters' JSON metadata: "acceptance" (what `-L auto` reads) and
    the rest under "diagnostic"."""
    import json

    metadata = lookahead_lib.read_metadata(path)
    metadata["acceptance"] = result["acceptance"]
    metadata["diagnostic"] = {k: v for k, v in result.items() if k != "acceptance"}
    outputs.write_text(lookahead_lib.metadata_path(path), json.dumps(metadata, indent=1))
