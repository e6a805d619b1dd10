"""Cached-prefix calls: one pass over the real tokens, then calls of new slots on top of its cache.

The base model is frozen, so the real tokens' keys and values never depend on the look-ahead
parameters. `prefix` runs the tokens [B, T] once into a KV cache of T + scratch slots; `extend`
then runs new slots (the children of an anchor, a sampled continuation) written at scratch slots, and
`groups` runs look-ahead groups that read the prefix and their own group only. A new slot's RoPE position is given explicitly, so it need not equal its slot; it sees the prefix
up to its own anchor and whichever scratch slots the caller allows.
Training differentiates `groups` only; the diagnostic uses the same calls without gradients.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from pass_jax import lookahead as lookahead_lib
from pass_jax.config import LlamaConfig
from pass_jax.model import causal_mask, forward, init_cache
from pass_jax.sampling import SamplingConfig


def prefix(params, config: LlamaConfig, tokens, scratch: int):
    """tokens int [B, T] -> (cache of T + scratch slots, final hidden states [B, T, D])."""
    batch, seq_len = tokens.shape
    length = seq_len + scratch
    start = jnp.zeros((batch,), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(seq_len, dtype=jnp.int32), (batch, seq_len))
    hidden, cache = forward(params, config, tokens, positions, causal_mask(start, seq_len, length),
                            cache=init_cache(config, batch, length), write_index=start, hidden_only=True)
    return cache, hidden


def extend(params, config: LlamaConfig, cache, seq_len: int, ids, positions, anchor, scratch_visible, write_at,
           lookahead=None, steps=None):
    """Run new slots on top of a prefix cache.

    ids, positions, anchor int [B, W]: token ids (ignored at look-ahead slots), RoPE positions, and
    the last prefix slot each new slot sees; scratch_visible bool [B or 1, W, S - T]: the scratch
    slots each one sees (its own included); write_at: the absolute slot of the call's first new
    slot. With `lookahead`, `steps` int [B, W] marks [LA]_i slots with i (0 for tokens).
    Returns (final hidden states [B, W, D], the cache with the new slots written).
    """
    batch, width = ids.shape
    length = cache[0]["k"].shape[1]
    scratch_visible = jnp.broadcast_to(scratch_visible, (batch, width, length - seq_len))
    mask = jnp.concatenate([jnp.arange(seq_len)[None, None, :] <= anchor[:, :, None], scratch_visible], axis=-1)
    return forward(params, config, ids, positions, mask, cache=cache, write_index=jnp.full((batch,), write_at, jnp.int32),
                   hidden_only=True, lookahead=lookahead_lib.forward_inputs(lookahead, steps))


def groups(params, config: LlamaConfig, cache, seq_len: int, positions, anchor, group_size: int, lookahead, steps):
    """Look-ahead groups on top of a prefix cache, without writing it: the W = G * group_size slots
    (ids ignored; positions, anchor and look-ahead `steps` int [B, W]) form G groups of consecutive
    slots; each sees the prefix up to its anchor and, causally, its own group (`model.forward`'s
    group_size), so it costs T + group_size keys a slot. Returns the final hidden states [B, W, D]."""
    prefix_only = tuple({name: layer[name][:, :seq_len] for name in ("k", "v")} for layer in cache)
    mask = jnp.arange(seq_len)[None, None, :] <= anchor[:, :, None]
    out, _ = forward(params, config, jnp.zeros_like(positions), positions, mask, cache=prefix_only, hidden_only=True,
                     group_size=group_size, lookahead=lookahead_lib.forward_inputs(lookahead, steps))
    return out


def sparse_probs(logits, sampling: SamplingConfig):
    """The processed distribution (temperature, top-k) as (probs [..., k], token ids [..., k]),
    most likely first; `pass_jax.sampling.probabilities` is its dense form (top-p is not supported)."""
    k = min(sampling.top_k or logits.shape[-1], logits.shape[-1])
    # As rows of a 2-D array: XLA:CPU rewrote a [B, G, L, V] top_k of the data targets into a full
    # sort of the vocabulary (5 s a training step), while the 2-D one stays its fast TopK call.
    values, index = lax.top_k(logits.astype(jnp.float32).reshape(-1, logits.shape[-1]), k)
    values, index = values.reshape(logits.shape[:-1] + (k,)), index.reshape(logits.shape[:-1] + (k,))
    return jax.nn.softmax(values / sampling.temperature, axis=-1), index.astype(jnp.int32)
