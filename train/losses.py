"""The look-ahead training objective, many anchors per sequence in one masked forward.

Paper objective: for a text x and an anchor t, feed `x_1..x_t, [LA]_1..[LA]_L`; the output at
`[LA]_i` is trained to predict `x_{t+1+i}` while the base model stays frozen.

Efficient form: the input is the sequence's T tokens followed by G look-ahead groups of L vectors
(width W = T + G*L). An explicit [B, W, W] mask lets group g see the tokens up to its anchor and
its own earlier look-ahead vectors only, so each group computes exactly what the single-anchor
input would, and all G share one pass over the tokens.

Indices here are 0-based: an anchor `a` is the index of the last token the group sees (the
paper's x_t is `tokens[a]`). Look-ahead vector i (1..L) sits at RoPE position `a + i`, as in
decoding (`pass_jax.decoding._pass_step`: pending token x_n at n-1, `[LA]_i` at n-1+i), and its
target is `tokens[a + 1 + i]`. The output at the anchor itself predicts `tokens[a + 1]`: that is
the model's own next token, drafted exactly at decode time, so it is not trained.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from pass_jax.config import LlamaConfig
from pass_jax.model import forward

OBJECTIVES = ("ce", "distill")


def num_valid_anchors(seq_len: int, num_lookahead: int) -> int:
    """Anchors 0 .. seq_len-2-L have all L targets inside the sequence."""
    return seq_len - 1 - num_lookahead


def sample_anchors(key, batch: int, seq_len: int, num_anchors: int, num_lookahead: int) -> jax.Array:
    """int32 [B, G]: per row, G distinct sorted anchors drawn uniformly from the valid ones."""
    num_valid = num_valid_anchors(seq_len, num_lookahead)

    def one_row(row_key):
        return jnp.sort(jax.random.choice(row_key, num_valid, (num_anchors,), replace=False))

    return jax.vmap(one_row)(jax.random.split(key, batch)).astype(jnp.int32)


def many_anchor_inputs(tokens, anchors, lookahead):
    """The masked many-anchor input for `forward`.

    tokens int [B, T], anchors int [B, G], lookahead [L, D]. Returns (input ids [B, W],
    positions [B, W], mask bool [B, W, W], input embeds [B, W, D], embeds mask [B, W]).
    """
    batch, seq_len = tokens.shape
    num_groups = anchors.shape[1]
    num_l, dim = lookahead.shape
    steps = jnp.arange(1, num_l + 1, dtype=jnp.int32)
    la_width = num_groups * num_l

    token_index = jnp.broadcast_to(jnp.arange(seq_len, dtype=jnp.int32), (batch, seq_len))
    la_positions = (anchors[:, :, None] + steps).reshape(batch, la_width)
    positions = jnp.concatenate([token_index, la_positions], axis=1)

    # Per position: its group (-1 for tokens), its order inside the group (the look-ahead step),
    # and the last token index it may see (itself for tokens, the anchor for a group).
    group = jnp.concatenate([jnp.full((batch, seq_len), -1, jnp.int32),
                             jnp.broadcast_to(jnp.repeat(jnp.arange(num_groups, dtype=jnp.int32), num_l),
                                              (batch, la_width))], axis=1)
    order = jnp.concatenate([token_index, jnp.broadcast_to(jnp.tile(steps, num_groups), (batch, la_width))], axis=1)
    last_token = jnp.concatenate([token_index, jnp.repeat(anchors, num_l, axis=1)], axis=1)

    key_is_token = (group == -1)[:, None, :]
    sees_token = order[:, None, :] <= last_token[:, :, None]
    sees_own_group = (group[:, None, :] == group[:, :, None]) & (order[:, None, :] <= order[:, :, None])
    mask = jnp.where(key_is_token, sees_token, sees_own_group)

    ids = jnp.concatenate([tokens, jnp.zeros((batch, la_width), tokens.dtype)], axis=1)
    la_embeds = jnp.broadcast_to(jnp.tile(lookahead, (num_groups, 1)), (batch, la_width, dim))
    embeds = jnp.concatenate([jnp.zeros((batch, seq_len, dim), lookahead.dtype), la_embeds], axis=1)
    embeds_mask = group >= 0
    return ids, positions, mask, embeds, embeds_mask


def lookahead_logits(lookahead, params, config: LlamaConfig, tokens, anchors):
    """One masked forward -> (draft logits [B, G, L, V], token logits [B, T, V])."""
    batch, seq_len = tokens.shape
    ids, positions, mask, embeds, embeds_mask = many_anchor_inputs(tokens, anchors, lookahead)
    logits, _ = forward(params, config, ids, positions, mask, input_embeds=embeds, embeds_mask=embeds_mask)
    draft = logits[:, seq_len:].reshape(batch, anchors.shape[1], lookahead.shape[0], -1)
    return draft, logits[:, :seq_len]


def _gather_rows(x, index):
    """x [B, T, ...] at index int [B, G, L] -> [B, G, L, ...]."""
    batch, groups, steps = index.shape
    flat = index.reshape(batch, groups * steps)
    flat = flat.reshape(flat.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, flat, axis=1).reshape((batch, groups, steps) + x.shape[2:])


def lookahead_loss(lookahead, params, config: LlamaConfig, tokens, anchors, objective: str = "ce"):
    """(scalar loss, metrics) for the look-ahead vectors; differentiate w.r.t. `lookahead` only.

    objective "ce": cross-entropy of q_i against the data token `tokens[a+1+i]` (the paper).
    objective "distill": KL(p || q_i) where p = p_model(. | tokens[..a+i]), the frozen model's own
    next-token distribution at the target, read off the token part of the same forward.
    Metrics: loss, loss_pos [L], acc [L] (argmax q_i == data token), agree [L] (argmax q_i ==
    argmax p, the draft greedy decoding would accept when the earlier ones were right).
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective {objective!r} is not one of {OBJECTIVES}")
    draft_logits, token_logits = lookahead_logits(lookahead, params, config, tokens, anchors)
    steps = jnp.arange(1, lookahead.shape[0] + 1, dtype=jnp.int32)
    # The model's output at a+i predicts tokens[a+1+i], the target of look-ahead step i.
    model_index = anchors[:, :, None] + steps
    targets = _gather_rows(tokens, model_index + 1)
    model_logits = jax.lax.stop_gradient(_gather_rows(token_logits, model_index))
    log_q = jax.nn.log_softmax(draft_logits, axis=-1)
    if objective == "ce":
        per_target = -jnp.take_along_axis(log_q, targets[..., None], axis=-1)[..., 0]
    else:
        log_p = jax.nn.log_softmax(model_logits, axis=-1)
        per_target = jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)
    draft = jnp.argmax(draft_logits, axis=-1)
    metrics = {
        "loss": jnp.mean(per_target),
        "loss_pos": jnp.mean(per_target, axis=(0, 1)),
        "acc": jnp.mean(draft == targets, axis=(0, 1)),
        "agree": jnp.mean(draft == jnp.argmax(model_logits, axis=-1), axis=(0, 1)),
    }
    return metrics["loss"], metrics
