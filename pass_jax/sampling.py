"""Logits processing and the speculative-sampling rejection rule, all in float32.

The same processors (temperature, top-k, top-p) turn both draft and target logits into
distributions, so p and q share one support rule. Greedy decoding (temperature 0) is the limit
case: p and q become one-hot, and the general rule then accepts exactly when the draft equals
argmax p and replaces with argmax p.
"""
from __future__ import annotations

from .errors import PassJaxError

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax import lax


class SamplingError(PassJaxError):
    """Sampling settings that do not define a distribution."""


# Below this, logits / T leave float32's range for large logits (at 1e-40 the softmax gives NaN);
# sampling that cold is greedy decoding in all but name.
MIN_TEMPERATURE = 1e-2


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.8
    top_k: int | None = 10
    top_p: float = 1.0

    def __post_init__(self):
        if not (self.temperature == 0 or MIN_TEMPERATURE <= self.temperature < math.inf):
            raise SamplingError(f"temperature must be 0 (greedy) or a finite number >= {MIN_TEMPERATURE}, "
                                f"got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise SamplingError(f"top-k must be >= 1 (or unset for no top-k), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise SamplingError(f"top-p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def support(self) -> int | None:
        """At most this many tokens of a processed distribution have probability > 0 (`sample`), or None."""
        return 1 if self.greedy else self.top_k


GREEDY = SamplingConfig(temperature=0.0, top_k=None)
PAPER = SamplingConfig(temperature=0.8, top_k=10)  # the PaSS paper's setting


def probabilities(logits, sampling: SamplingConfig):
    """Processed next-token distribution [..., V] in float32."""
    logits = logits.astype(jnp.float32)
    vocab = logits.shape[-1]
    if sampling.greedy:
        return jax.nn.one_hot(jnp.argmax(logits, axis=-1), vocab, dtype=jnp.float32)
    logits = logits / sampling.temperature
    top_k = sampling.top_k if sampling.top_k is not None and sampling.top_k < vocab else None
    if top_k is None and sampling.top_p == 1.0:
        return jax.nn.softmax(logits, axis=-1)
    # Work on the sorted top-k values and scatter back. Keeping the indices in use matters: a
    # values-only `top_k` was rewritten by XLA:CPU into a full sort, 100x slower (measured).
    values, indices = lax.top_k(logits, top_k or vocab)
    if sampling.top_p < 1.0:
        sorted_probs = jax.nn.softmax(values, axis=-1)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        keep = (jnp.cumsum(sorted_probs, axis=-1) - sorted_probs) < sampling.top_p
        values = jnp.where(keep, values, -jnp.inf)
    return jnp.put_along_axis(jnp.zeros_like(logits), indices, jax.nn.softmax(values, axis=-1), axis=-1,
                              inplace=False)


def row_keys(key, batch: int):
    """One PRNG key per row [B]: `key` itself where it already is one per row, else split from the one key.
    Every draw of this module is made per row from the row's own key, so a row's draws do not depend
    on which other rows share its batch."""
    return key if key.ndim else jax.random.split(key, batch)


def split_rows(keys, count: int) -> tuple:
    """`jax.random.split` of each row's key [B]: `count` arrays of B keys."""
    split = jax.vmap(lambda k: jax.random.split(k, count))(keys)
    return tuple(split[:, i] for i in range(count))


def _sample_row(key, probs, support: int | None):
    if support is None or support >= probs.shape[-1]:
        return jax.random.categorical(key, jnp.log(probs), axis=-1).astype(jnp.int32)
    values, indices = lax.top_k(probs, support)
    choice = jax.random.categorical(key, jnp.log(values), axis=-1)
    return jnp.take_along_axis(indices, choice[..., None], axis=-1)[..., 0].astype(jnp.int32)


def sample(key, probs, support: int | None = None):
    """One token per distribution of probs [B, ..., V], each row's drawn from its own key (`row_keys`:
    key is [B] keys, or one key split into them); log(0) = -inf keeps excluded tokens impossible.

    `support`: at most that many tokens have probability > 0 (`SamplingConfig.support`: top-k, 1 when
    greedy, also for residuals, whose support lies inside p's). Drawing among the `support` most likely
    tokens is then the same law at a fraction of the cost: a categorical over the whole vocabulary draws
    one Gumbel variate per token, 3.1 ms a row against 0.15 ms for top-10 on the project's CPU (V=49152,
    measured), once per committed token in ar and once per draft and iteration in PaSS."""
    return jax.vmap(lambda k, p: _sample_row(k, p, support))(row_keys(key, probs.shape[0]), probs)


def acceptance_probability(p_draft, q_draft):
    """min(1, p(d)/q(d)); d was drawn from q so q(d) > 0, but guard q = 0 anyway."""
    return jnp.where(q_draft > 0, jnp.minimum(1.0, p_draft / jnp.where(q_draft > 0, q_draft, 1.0)), 0.0)


def residual_distribution(p, q):
    """norm(max(0, p - q)); where p == q the rejection has probability 0, so fall back to p."""
    diff = jnp.maximum(p - q, 0.0)
    total = jnp.sum(diff, axis=-1, keepdims=True)
    return jnp.where(total > 0, diff / jnp.where(total > 0, total, 1.0), p)


def draft_candidates(key, logits, tree, sampling: SamplingConfig):
    """Draft tokens for every node of a `DraftTree` from the look-ahead outputs.

    logits [B, D, V] at [LA]_1..[LA]_D; key: one per row, or one (`row_keys`). Returns (node tokens [B, N] for nodes 1..N, q [B, D, V]).
    Sampling: each node's token is an independent draw from q at its depth, which is what makes the
    multi-candidate rule in `verify` exact. Greedy: the K siblings are the top-K of the logits.
    """
    q = probabilities(logits, sampling)
    nodes = slice(1, tree.lookahead_nodes + 1)  # the tree's look-ahead nodes (a context chain follows them)
    depth = tree.node_depth[nodes] - 1
    if sampling.greedy:
        top = lax.top_k(logits, max(tree.branching))[1]  # [B, D, K]
        return top[:, depth, tree.rank[nodes]].astype(jnp.int32), q
    return sample(key, q[:, depth], sampling.support), q


def candidate_q(q_depth, token, deterministic):
    """The distribution a candidate was drawn from: q of its depth [B, V], or one-hot at `token` [B]
    where `deterministic` [B] (a context or recycled draft). Returns (q at the token [B], q [B, V])."""
    one_hot = jax.nn.one_hot(token, q_depth.shape[-1], dtype=q_depth.dtype)
    q_node = jnp.where(deterministic[:, None], one_hot, q_depth)
    return jnp.take_along_axis(q_node, token[:, None], axis=1)[:, 0], q_node


def greedy_walk(tree, node_tokens, p, valid=None):
    """`verify` under greedy decoding (p one-hot at argmax): a node is accepted when its token is argmax p
    at its parent and its parent is accepted; the walk ends at the deepest accepted node (the first in
    node order among equals). Every accepted path is the greedy continuation, so the deepest is the most
    tokens; it matters where two proposers drafted the same token (a context draft and a look-ahead
    sibling), whose subtrees differ. Same returns as `verify`."""
    batch = node_tokens.shape[0]
    depth = jnp.asarray(tree.node_depth)
    target = jnp.argmax(p, axis=-1).astype(jnp.int32)  # [B, N+1]: the greedy token after each node
    ok = node_tokens == target[:, tree.parent[1:]]  # [B, N]
    if valid is not None:
        ok = ok & valid
    accepted = jnp.concatenate([jnp.ones((batch, 1), bool), ok], axis=1)  # by node index
    for _ in range(tree.depth - 1):  # an accepted node needs an accepted parent: propagate down the depths
        accepted = accepted & accepted[:, jnp.maximum(jnp.asarray(tree.parent), 0)]
    last = jnp.argmax(jnp.where(accepted, depth, -1), axis=1)  # the deepest accepted node (0: the root)
    num_accepted = depth[last]
    # path[:, d]: the ancestor of `last` at depth d + 1 (0 past A)
    on_path = jnp.asarray(tree.ancestors)[last]  # [B, N+1]: the nodes on the root-to-last path
    levels = depth[None, :, None] == jnp.arange(1, tree.depth + 1)[None, None, :]  # [1, N+1, D]
    path = jnp.sum(jnp.where(on_path[:, :, None] & levels, jnp.arange(tree.num_nodes + 1)[None, :, None], 0), axis=1)
    flags = jnp.arange(tree.depth)[None, :] < num_accepted[:, None]
    next_token = jnp.take_along_axis(target, last[:, None], axis=1)[:, 0]
    return num_accepted.astype(jnp.int32), path.astype(jnp.int32), next_token, flags


def verify(key, tree, node_tokens, q, p, greedy: bool = False, valid=None, support: int | None = None):
    """The speculative-sampling rule over a static draft tree, for one validation call.

    node_tokens [B, N]: the drafts at nodes 1..N; q [B, L, V]: the look-ahead draft distribution per
    depth; p [B, N+1, V]: the target distribution after each node (node 0 is the root); valid [B, N]
    (None: all): candidates to try. The walk starts at the root and, depth by depth, tries the current
    node's valid children in the tree's order (`tree.children`):
      sampled: accept child c with prob min(1, p'(c)/q_c(c)); after each rejection p' <- norm(max(0,
        p' - q_c)), q_c being that candidate's own q: q of its depth for a look-ahead draft, one-hot
        for a context or recycled draft (`candidate_q`). With each candidate drawn independently of the others
        this is exact: the recursive rejection sampling of SpecInfer (Miao et al. 2024, "multi-step
        speculative sampling"); with one child per node it is the rule of Leviathan et al. 2023 /
        Chen et al. 2023.
      greedy: the deepest node whose path holds argmax p at every step (`greedy_walk`).
    An accepted child becomes the current node (p' = p at it); when every child is rejected the walk
    stops and the next token is drawn from p' (the residual), or from p at a leaf (the bonus).
    `support`: p's at most this many nonzero tokens (`sample`). key: one per row [B] or one (`row_keys`);
    each row's uniforms and residual draw come from its own. Returns (A [B], path [B, D]: the accepted
    node per depth (0 past A), next token [B], accepted [B, D] flags), D = `tree.depth`.
    """
    if greedy:
        return greedy_walk(tree, node_tokens, p, valid)
    batch = node_tokens.shape[0]
    tokens = jnp.concatenate([jnp.zeros((batch, 1), node_tokens.dtype), node_tokens], axis=1)  # by node index
    if valid is not None:
        valid = jnp.concatenate([jnp.ones((batch, 1), bool), valid], axis=1)
    children = jnp.asarray(tree.children)
    deterministic = jnp.asarray(tree.deterministic)
    rows = jnp.arange(batch)
    keys = split_rows(row_keys(key, batch), tree.num_nodes + 1)
    uniform = jax.vmap(lambda k: jax.random.uniform(k, (), dtype=jnp.float32))
    current = jnp.zeros((batch,), jnp.int32)
    walking = jnp.ones((batch,), bool)
    dist = p[:, 0]
    path, flags, used = [], [], 0
    for d, fanout in enumerate(tree.fanout):
        chosen = jnp.full((batch,), -1, jnp.int32)
        q_depth = q[:, min(d, q.shape[1] - 1)]  # past the tree's depth only chain drafts remain
        for rank in range(fanout):
            child = children[current, rank]
            token = tokens[rows, child]
            trying = walking & (chosen < 0) & (child >= 0)
            if valid is not None:
                trying = trying & valid[rows, child]
            u = uniform(keys[used])
            q_token, q_node = candidate_q(q_depth, token, deterministic[child]) if tree.deterministic.any() else (
                q_depth[rows, token], q_depth)
            ok = u < acceptance_probability(dist[rows, token], q_token)
            used += 1
            chosen = jnp.where(trying & ok, child, chosen)
            rejected = trying & (chosen < 0)  # this candidate was tried and rejected: move to the residual
            dist = jnp.where(rejected[:, None], residual_distribution(dist, q_node), dist)
        walking = walking & (chosen >= 0)
        current = jnp.where(walking, chosen, current)
        dist = jnp.where(walking[:, None], p[rows, current], dist)
        path.append(jnp.where(walking, chosen, 0))
        flags.append(walking)
    accepted = jnp.stack(flags, axis=1)
    return (jnp.sum(accepted, axis=1).astype(jnp.int32), jnp.stack(path, axis=1), sample(keys[-1], dist, support),
            accepted)
