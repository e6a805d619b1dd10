"""Look-ahead training objectives, many anchors per sequence.

Paper objective: for a text x and an anchor t, feed `x_1..x_t, [LA]_1..[LA]_L`; the output at
`[LA]_i` is trained to predict `x_{t+1+i}` while the base model stays frozen.

Two ways to compute the draft logits of G anchors per sequence, equal up to float rounding:
- masked (the reference): the sequence's T tokens followed by G look-ahead groups of L slots in
  one forward, with an explicit [B, W, W] mask so that group g sees the tokens up to its anchor and
  its own earlier slots only. Forward and backward run over all T + G*L slots.
- cached (`pass_jax.train.cached`): one no-gradient pass over the tokens into a KV cache, then the G*L
  look-ahead slots as one call on top of it. Only those slots run forward and backward.

Indices are 0-based: an anchor `a` is the index of the last token a group sees (the paper's x_t
is `tokens[a]`). [LA]_i sits at RoPE position `a + i`, as in decoding (`pass_jax.decoding`: pending
x_n at n-1, [LA]_i at n-1+i), and its target is the token at `a + 1 + i`. The token at a+1 is the
model's own next token, drafted exactly at decode time, so it is not trained.

Targets (what [LA]_i is trained towards):
- "data": the corpus continuation: token `tokens[a+1+i]` and the frozen model's processed
  distribution p(. | tokens[..a+i]) (the decode's temperature and top-k).
- "self": the model's own continuation, sampled from the processed p one token at a time on top
  of the cache (self-distillation): the distributions the decode actually validates against.
Objectives: "ce" (the paper: cross-entropy on the continuation token), "kl" (KL(p || q_T), q_T the
draft at the decode temperature), "tv" (1 - sum min(p, q_T), the total-variation surrogate of the
acceptance), "accept" (1 - sum min(p, q) with q processed exactly as the decode does: the rejection
rule's acceptance; its gradient reaches only the draft's own top-k tokens).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from pass_jax import lookahead as lookahead_lib
from pass_jax.config import LlamaConfig
from pass_jax.model import forward, gather_positions, lm_head
from pass_jax.sampling import SamplingConfig, probabilities
from . import cached

OBJECTIVES = ("ce", "kl", "tv", "accept")
TARGETS = ("data", "self")


def num_valid_anchors(seq_len: int, num_lookahead: int) -> int:
    """Anchors 0 .. seq_len-2-L have all L targets inside the sequence."""
    return seq_len - 1 - num_lookahead


def sample_anchors(key, batch: int, seq_len: int, num_anchors: int, num_lookahead: int) -> jax.Array:
    """int32 [B, G]: per row, G distinct sorted anchors drawn uniformly from the valid ones."""
    num_valid = num_valid_anchors(seq_len, num_lookahead)

    def one_row(row_key):
        return jnp.sort(jax.random.choice(row_key, num_valid, (num_anchors,), replace=False))

    return jax.vmap(one_row)(jax.random.split(key, batch)).astype(jnp.int32)


def group_layout(anchors, num_lookahead: int):
    """G groups of L look-ahead slots, flattened: (positions, steps 1..L, anchor), each int [B, G*L]."""
    batch, groups = anchors.shape
    steps = jnp.tile(jnp.arange(1, num_lookahead + 1, dtype=jnp.int32), groups)
    anchor = jnp.repeat(anchors, num_lookahead, axis=1)
    return anchor + steps, jnp.broadcast_to(steps, (batch, groups * num_lookahead)), anchor


def many_anchor_inputs(tokens, anchors, num_lookahead: int):
    """The masked many-anchor input: (ids [B, W], positions [B, W], mask bool [B, W, W], look-ahead
    steps [B, W]) for W = T + G*L."""
    batch, seq_len = tokens.shape
    la_width = anchors.shape[1] * num_lookahead
    token_index = jnp.broadcast_to(jnp.arange(seq_len, dtype=jnp.int32), (batch, seq_len))
    la_positions, la_steps, la_anchor = group_layout(anchors, num_lookahead)
    positions = jnp.concatenate([token_index, la_positions], axis=1)
    steps = jnp.concatenate([jnp.zeros_like(token_index), la_steps], axis=1)
    # Per slot: its group (-1 for tokens) and the last token index it may see.
    group = jnp.concatenate([jnp.full((batch, seq_len), -1, jnp.int32),
                             jnp.broadcast_to(jnp.arange(la_width, dtype=jnp.int32) // num_lookahead,
                                              (batch, la_width))], axis=1)
    last_token = jnp.concatenate([token_index, la_anchor], axis=1)
    order = jnp.concatenate([token_index, la_steps], axis=1)
    key_is_token = (group == -1)[:, None, :]
    sees_token = order[:, None, :] <= last_token[:, :, None]
    sees_own_group = (group[:, None, :] == group[:, :, None]) & (order[:, None, :] <= order[:, :, None])
    mask = jnp.where(key_is_token, sees_token, sees_own_group)
    ids = jnp.concatenate([tokens, jnp.zeros((batch, la_width), tokens.dtype)], axis=1)
    return ids, positions, mask, steps


def lookahead_logits(lookahead, params, config: LlamaConfig, tokens, anchors):
    """The masked many-anchor forward -> (draft logits [B, G, L, V], token logits [B, T, V])."""
    batch, seq_len = tokens.shape
    num_l = lookahead_lib.num_steps(lookahead)
    ids, positions, mask, steps = many_anchor_inputs(tokens, anchors, num_l)
    logits, _ = forward(params, config, ids, positions, mask, lookahead=lookahead_lib.forward_inputs(lookahead, steps))
    return logits[:, seq_len:].reshape(batch, anchors.shape[1], num_l, -1), logits[:, :seq_len]


class Targets(NamedTuple):
    """What [LA]_i is trained towards, per anchor and step ([B, G, L, ...])."""

    probs: jax.Array   # [B, G, L, k] the processed target distribution p, most likely first
    index: jax.Array   # [B, G, L, k] its token ids
    tokens: jax.Array  # [B, G, L] the continuation token (data or sampled)


class Teacher(NamedTuple):
    """The frozen model's part of a cached-prefix step: the cache (tokens, then any sampled
    continuation, which the look-ahead groups never see) and the targets."""

    cache: tuple
    targets: Targets


def _data_targets(model_logits, tokens, anchors, num_lookahead: int, sampling: SamplingConfig) -> Targets:
    """Targets from the model's logits at a+1..a+L [B, G, L, V] and the data tokens."""
    batch, groups = anchors.shape
    following = jnp.take_along_axis(tokens, group_layout(anchors, num_lookahead)[0] + 1, axis=1)
    probs, index = cached.sparse_probs(model_logits, sampling)
    return Targets(probs, index, following.reshape(batch, groups, num_lookahead))


def teach(params, config: LlamaConfig, tokens, anchors, num_lookahead: int, sampling: SamplingConfig,
          source: str = "data", key=None) -> Teacher:
    """The cached prefix and the targets, without gradients (see the module doc for `source`)."""
    batch, seq_len = tokens.shape
    groups = anchors.shape[1]
    sampled = groups * num_lookahead if source == "self" else 0
    cache, hidden = cached.prefix(params, config, tokens, sampled)
    if source == "data":
        at = gather_positions(hidden, group_layout(anchors, num_lookahead)[0])
        logits = lm_head(params, config, at).reshape(batch, groups, num_lookahead, -1)
        return Teacher(cache, _data_targets(logits, tokens, anchors, num_lookahead, sampling))
    if source != "self":
        raise ValueError(f"target source {source!r} is not one of {TARGETS}")
    return _self_teacher(params, config, cache, hidden, anchors, num_lookahead, sampling, key)


def _draw(key, probs, index):
    """One token per sparse distribution."""
    choice = jax.random.categorical(key, jnp.log(probs), axis=-1)
    return jnp.take_along_axis(index, choice[..., None], axis=-1)[..., 0]


def _self_teacher(params, config, cache, hidden, anchors, num_lookahead, sampling, key) -> Teacher:
    """Sample y_1 ~ p(. | x<=a), then feed y_i at position a+i (scratch slot (i-1)*G + g, seeing
    the prefix up to a and its own y_1..y_i): its output is the target of [LA]_i, and y_{i+1} is
    drawn from it. One `lax.scan` step per look-ahead step, all anchors at once."""
    seq_len = hidden.shape[1]
    groups = anchors.shape[1]
    scratch = jnp.arange(cache[0]["k"].shape[1] - seq_len)
    own = scratch[None, :] % groups == jnp.arange(groups)[:, None]  # [G, scratch]
    key, first_key = jax.random.split(key)
    first = _draw(first_key, *cached.sparse_probs(lm_head(params, config, gather_positions(hidden, anchors)),
                                                  sampling))

    def step(carry, i):
        cache, token, key = carry
        visible = own & (scratch[None, :] < i * groups)
        out, cache = cached.extend(params, config, cache, seq_len, token, anchors + i, anchors, visible[None],
                                   seq_len + (i - 1) * groups)
        probs, index = cached.sparse_probs(lm_head(params, config, out), sampling)
        key, draw_key = jax.random.split(key)
        following = _draw(draw_key, probs, index)
        return (cache, following, key), (probs, index, following)

    (cache, _, _), (probs, index, following) = lax.scan(step, (cache, first, key),
                                                        jnp.arange(1, num_lookahead + 1, dtype=jnp.int32))
    return Teacher(cache, Targets(*(jnp.moveaxis(x, 0, 2) for x in (probs, index, following))))


def cached_lookahead_logits(lookahead, params, config: LlamaConfig, cache, seq_len: int, anchors):
    """The G*L look-ahead slots as one call on the prefix cache -> draft logits [B, G, L, V].
    Group g sees the prefix up to its anchor and its own earlier slots."""
    batch, groups = anchors.shape
    num_l = lookahead_lib.num_steps(lookahead)
    positions, steps, anchor = group_layout(anchors, num_l)
    out = cached.groups(params, config, cache, seq_len, positions, anchor, num_l, lookahead, steps)
    return lm_head(params, config, out).reshape(batch, groups, num_l, -1)


def objective_terms(draft_logits, targets: Targets, objective: str, sampling: SamplingConfig):
    """(scalar loss, metrics) of draft logits [B, G, L, V] against the targets.

    Metrics, per look-ahead step [L]: loss_pos; accept = sum min(p, q) with q processed as the decode
    does (the probability the draft is accepted on this continuation); agree (argmax q == argmax p,
    what greedy acceptance needs); acc (argmax q == the continuation token).
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective {objective!r} is not one of {OBJECTIVES}")
    on_target = lambda dist: jnp.take_along_axis(dist, targets.index, axis=-1)  # noqa: E731
    log_q_t = jax.nn.log_softmax(draft_logits / sampling.temperature, axis=-1)
    accept = jnp.sum(jnp.minimum(targets.probs, on_target(probabilities(draft_logits, sampling))), axis=-1)
    if objective == "ce":
        log_q = jax.nn.log_softmax(draft_logits, axis=-1)
        per_target = -jnp.take_along_axis(log_q, targets.tokens[..., None], axis=-1)[..., 0]
    elif objective == "kl":
        p = targets.probs
        per_target = jnp.sum(p * (jnp.log(jnp.where(p > 0, p, 1.0)) - on_target(log_q_t)), axis=-1)
    elif objective == "tv":
        per_target = 1.0 - jnp.sum(jnp.minimum(targets.probs, jnp.exp(on_target(log_q_t))), axis=-1)
    else:
        per_target = 1.0 - accept
    draft = jnp.argmax(draft_logits, axis=-1)
    metrics = {
        "loss": jnp.mean(per_target),
        "loss_pos": jnp.mean(per_target, axis=(0, 1)),
        "accept": jnp.mean(accept, axis=(0, 1)),
        "agree": jnp.mean(draft == targets.index[..., 0], axis=(0, 1)),
        "acc": jnp.mean(draft == targets.tokens, axis=(0, 1)),
    }
    return metrics["loss"], metrics


def lookahead_loss(lookahead, params, config: LlamaConfig, tokens, anchors, objective: str = "ce",
                   sampling: SamplingConfig = SamplingConfig()):
    """The masked reference: (loss, metrics) on data targets; differentiate w.r.t. `lookahead`."""
    draft_logits, token_logits = lookahead_logits(lookahead, params, config, tokens, anchors)
    num_l = draft_logits.shape[2]
    model_logits = gather_positions(token_logits, group_layout(anchors, num_l)[0]).reshape(draft_logits.shape)
    targets = _data_targets(lax.stop_gradient(model_logits), tokens, anchors, num_l, sampling)
    return objective_terms(draft_logits, targets, objective, sampling)


def cached_loss(lookahead, params, config: LlamaConfig, teacher: Teacher, seq_len: int, anchors,
                objective: str = "ce", sampling: SamplingConfig = SamplingConfig()):
    """The cached-prefix form: (loss, metrics); differentiate w.r.t. `lookahead`."""
    draft_logits = cached_lookahead_logits(lookahead, params, config, teacher.cache, seq_len, anchors)
    return objective_terms(draft_logits, teacher.targets, objective, sampling)
