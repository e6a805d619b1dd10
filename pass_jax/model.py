"""A functional Flax LLaMA: RMSNorm, RoPE (`rotate_half`), grouped-query attention, SwiGLU.

The same decoder serves Mistral (no sliding window in the computation: see `LlamaConfig.sliding_window`),
Qwen2/2.5 (`qkv_bias`) and Qwen3 (`qk_norm`).

One pure forward takes params, inputs (token ids and, per position, optional input embeddings),
positions, an explicit attention mask and an optional KV cache; it returns logits and the new
cache. Layers are unrolled: on XLA:CPU a `lax.scan` over layers compiles faster but runs a decode
step about 1.7x slower (ARCHITECTURE.md, "Design measurements"), and decoding is what this project is for.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from .config import LlamaConfig

# A KV cache is a tuple with one {"k", "v"} dict per layer; each array is [batch, seq, kv_heads, head_dim].
# Separate arrays per layer keep `dynamic_update_slice` in place and the buffers donatable.
Cache = tuple
CACHE_AXES = ("cache_batch", "cache_seq", "cache_kv_heads", "head_dim")

_init = nn.initializers.normal(stddev=0.02)


def _param(module: nn.Module, name: str, shape, axes, init=_init):
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, module.config.jnp_param_dtype)


class RMSNorm(nn.Module):
    config: LlamaConfig
    dim: int | None = None  # None: hidden_size; head_dim for Qwen3's per-head q/k norms
    axis: str = "norm"

    @nn.compact
    def __call__(self, x):
        scale = _param(self, "scale", (self.dim or self.config.hidden_size,), (self.axis,), nn.initializers.ones)
        x32 = x.astype(jnp.float32)
        x32 = x32 * lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.config.rms_eps)
        return (x32.astype(self.config.jnp_dtype) * scale.astype(self.config.jnp_dtype))


def rope_inv_freq(config: LlamaConfig) -> jnp.ndarray:
    """RoPE inverse frequencies, with Llama-3 scaling when configured (as transformers computes them)."""
    hd = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (jnp.arange(0, hd, 2, dtype=jnp.float32) / hd))
    rs = config.rope_scaling
    if rs is None:
        return inv_freq
    low_wavelen = rs.original_max_position_embeddings / rs.low_freq_factor
    high_wavelen = rs.original_max_position_embeddings / rs.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = jnp.where(wavelen > low_wavelen, inv_freq / rs.factor, inv_freq)
    smooth = (rs.original_max_position_embeddings / wavelen - rs.low_freq_factor) / (
        rs.high_freq_factor - rs.low_freq_factor)
    smoothed = (1 - smooth) * scaled / rs.factor + smooth * scaled
    is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return jnp.where(is_medium, smoothed, scaled)


def apply_rope(x, positions, inv_freq):
    """x: [B, T, heads, hd]; positions: [B, T]. The `rotate_half` convention of transformers."""
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, hd/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    x32 = x.astype(jnp.float32)
    half = x32.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * cos + rotated * sin).astype(x.dtype)


def write_cache(cache_array, new, write_index):
    """Write new [B, T, ...] into cache [B, S, ...] at a per-row offset with `dynamic_update_slice`."""
    def one_row(row, update, start):
        return lax.dynamic_update_slice(row, update.astype(row.dtype), (start,) + (0,) * (row.ndim - 1))
    return jax.vmap(one_row)(cache_array, new, write_index)


class Attention(nn.Module):
    config: LlamaConfig

    @nn.compact
    def __call__(self, x, positions, mask, inv_freq, layer_cache=None, write_index=None, group_size=None):
        """group_size: the call's slots are independent groups of that many consecutive slots (look-ahead
        training): each sees the cache through `mask` and, causally, its own group; nothing is written."""
        c = self.config
        b, t, d = x.shape
        wq = _param(self, "wq", (d, c.num_heads * c.head_dim), ("embed", "q_heads"))
        wk = _param(self, "wk", (d, c.num_kv_heads * c.head_dim), ("embed", "kv_heads"))
        wv = _param(self, "wv", (d, c.num_kv_heads * c.head_dim), ("embed", "kv_heads"))
        wo = _param(self, "wo", (c.num_heads * c.head_dim, d), ("q_heads", "embed"))
        dt = c.jnp_dtype
        q, k, v = x @ wq.astype(dt), x @ wk.astype(dt), x @ wv.astype(dt)
        if c.qkv_bias:  # Qwen2/2.5
            zeros = nn.initializers.zeros
            q = q + _param(self, "bq", (c.num_heads * c.head_dim,), ("q_heads",), zeros).astype(dt)
            k = k + _param(self, "bk", (c.num_kv_heads * c.head_dim,), ("kv_heads",), zeros).astype(dt)
            v = v + _param(self, "bv", (c.num_kv_heads * c.head_dim,), ("kv_heads",), zeros).astype(dt)
        q = q.reshape(b, t, c.num_heads, c.head_dim)
        k = k.reshape(b, t, c.num_kv_heads, c.head_dim)
        v = v.reshape(b, t, c.num_kv_heads, c.head_dim)
        if c.qk_norm:  # Qwen3: RMSNorm over each head's q and k, before RoPE
            q = RMSNorm(c, c.head_dim, "head_dim", name="q_norm")(q)
            k = RMSNorm(c, c.head_dim, "head_dim", name="k_norm")(k)
        q = apply_rope(q, positions, inv_freq)
        k = apply_rope(k, positions, inv_freq)
        if group_size is not None:
            return _grouped_attention(q, k, v, layer_cache, mask, group_size, c) @ wo.astype(dt), layer_cache
        new_cache = None
        if layer_cache is not None:
            new_cache = {"k": write_cache(layer_cache["k"], k, write_index),
                         "v": write_cache(layer_cache["v"], v, write_index)}
            k, v = new_cache["k"].astype(dt), new_cache["v"].astype(dt)
        q = q.reshape(b, t, c.num_kv_heads, c.num_heads // c.num_kv_heads, c.head_dim)
        probs = jax.nn.softmax(_masked_scores(q, k, mask, c.head_dim), axis=-1).astype(dt)
        out = jnp.einsum("bkgts,bskh->btkgh", probs, _zero_non_finite(v)).reshape(b, t, c.num_heads * c.head_dim)
        return out @ wo.astype(dt), new_cache


def _zero_non_finite(v):
    """A masked slot gets probability exactly 0, but 0 * NaN = NaN in `probs @ v`: a non-finite value in a
    stale or look-ahead cache slot would leak into every query's output. (Masked scores are replaced, so k
    needs no such care.)"""
    return jnp.where(jnp.isfinite(v), v, jnp.zeros((), v.dtype))


def _masked_scores(q, k, mask, head_dim: int):
    """Scaled float32 scores [b, kv_heads, groups, t, s] of grouped queries q [b, t, kv_heads, groups, h]
    against keys k [b, s, kv_heads, h]; slots where `mask` [b, t, s] is False get the lowest float."""
    scores = jnp.einsum("btkgh,bskh->bkgts", q, k, preferred_element_type=jnp.float32) / math.sqrt(head_dim)
    return jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)


def _grouped_attention(q, k, v, layer_cache, mask, group_size: int, c: LlamaConfig):
    """Attention of independent groups (see `Attention`): scores against the cache [.., S] and against the
    group's own slots [.., group_size] share one softmax. Costs S + group_size keys a slot, not S + T."""
    b, t = q.shape[:2]
    n, groups, dt = t // group_size, c.num_heads // c.num_kv_heads, c.jnp_dtype
    q = q.reshape(b, t, c.num_kv_heads, groups, c.head_dim)
    k_cache, v_cache = layer_cache["k"].astype(dt), _zero_non_finite(layer_cache["v"].astype(dt))
    to_cache = _masked_scores(q, k_cache, mask, c.head_dim)
    q_local = q.reshape(b, n, group_size, c.num_kv_heads, groups, c.head_dim)
    k_local = k.reshape(b, n, group_size, c.num_kv_heads, c.head_dim)
    to_group = jnp.einsum("bnlkgh,bnmkh->bkgnlm", q_local, k_local, preferred_element_type=jnp.float32) / math.sqrt(
        c.head_dim)
    causal = jnp.tril(jnp.ones((group_size, group_size), bool))
    to_group = jnp.where(causal, to_group, jnp.finfo(jnp.float32).min).reshape(b, c.num_kv_heads, groups, t, group_size)
    probs = jax.nn.softmax(jnp.concatenate([to_cache, to_group], axis=-1), axis=-1).astype(dt)
    from_cache = jnp.einsum("bkgts,bskh->btkgh", probs[..., :k_cache.shape[1]], v_cache)
    local_probs = probs[..., k_cache.shape[1]:].reshape(b, c.num_kv_heads, groups, n, group_size, group_size)
    from_group = jnp.einsum("bkgnlm,bnmkh->bnlkgh", local_probs, v.reshape(k_local.shape)).reshape(from_cache.shape)
    return (from_cache + from_group).reshape(b, t, c.num_heads * c.head_dim)


class MLP(nn.Module):
    config: LlamaConfig

    @nn.compact
    def __call__(self, x):
        c = self.config
        w_gate = _param(self, "w_gate", (c.hidden_size, c.intermediate_size), ("embed", "mlp"))
        w_up = _param(self, "w_up", (c.hidden_size, c.intermediate_size), ("embed", "mlp"))
        w_down = _param(self, "w_down", (c.intermediate_size, c.hidden_size), ("mlp", "embed"))
        dt = c.jnp_dtype
        return (nn.silu(x @ w_gate.astype(dt)) * (x @ w_up.astype(dt))) @ w_down.astype(dt)


def adapt(x, down, up, select, where):
    """Look-ahead adapters: x + (x @ down[s]) @ up[s] at the rows of `where`, s each row's adapted step.

    x [B, T, D]; down [La, D, r], up [La, r, D]; select [B, T, La] one-hot (zero where no adapter);
    where bool [B, T]. Every other row is returned bit for bit."""
    low = jnp.einsum("btd,ldr->btlr", x, down.astype(x.dtype)) * select[..., None].astype(x.dtype)
    return jnp.where(where[..., None], x + jnp.einsum("btlr,lrd->btd", low, up.astype(x.dtype)), x)


class Block(nn.Module):
    config: LlamaConfig

    @nn.compact
    def __call__(self, x, positions, mask, inv_freq, layer_cache=None, write_index=None, adapter=None,
                 group_size=None):
        """adapter: None, or (this layer's look-ahead adapters {attn,mlp}_{down,up}, select, where) (`adapt`)."""
        def normed(name, h):
            h = RMSNorm(self.config, name=f"{name}_norm")(h)
            if adapter is None:
                return h
            leaves, select, where = adapter
            return adapt(h, leaves[f"{name}_down"], leaves[f"{name}_up"], select, where)

        h, new_cache = Attention(self.config, name="attention")(
            normed("attn", x), positions, mask, inv_freq, layer_cache, write_index, group_size)
        x = x + h
        x = x + MLP(self.config, name="mlp")(normed("mlp", x))
        return x, new_cache


class LookaheadInputs(NamedTuple):
    """What look-ahead parameters put into one call (`lookahead.forward_inputs` builds it for every
    kind): B rows, T positions, D = hidden size, La adapted steps."""

    mask: jax.Array                        # bool [B, T]: the look-ahead slots; every other one sees the base model
    embeds: jax.Array                      # [B, T, D]: replace the token embeddings at those slots
    layer_embeds: jax.Array | None = None  # [num_layers, B, T, D]: added before each layer there (deep, adapter)
    adapters: dict | None = None           # {attn,mlp}_{down,up} [num_layers, La, ..], head_{down,up} [La, ..] (`adapt`)
    adapter_select: jax.Array | None = None  # float32 [B, T, La]: one-hot of each slot's adapted step (zero: none)


class Llama(nn.Module):
    """The LLaMA decoder. See `forward` for the call signature users should prefer."""

    config: LlamaConfig

    @nn.compact
    def __call__(self, tokens, positions, mask, cache: Cache | None = None, write_index=None, *,
                 lookahead: LookaheadInputs | None = None, logits_index=None, hidden_only=False, group_size=None):
        c = self.config
        embedding = _param(self, "embedding", (c.vocab_size, c.hidden_size), ("vocab", "embed"))
        x = jnp.take(embedding, tokens, axis=0).astype(c.jnp_dtype)
        la = lookahead
        if la is not None:
            # Look-ahead parameters (or any custom embedding) replace the token embedding per position.
            x = jnp.where(la.mask[..., None], la.embeds.astype(c.jnp_dtype), x)
        inv_freq = rope_inv_freq(c)
        new_cache = []
        adapters = None if la is None else la.adapters
        for i in range(c.num_layers):
            if la is not None and la.layer_embeds is not None:  # deep: added to the residual stream at la.mask only
                x = jnp.where(la.mask[..., None], x + la.layer_embeds[i].astype(c.jnp_dtype), x)
            adapter = None if adapters is None else (
                {name: leaf[i] for name, leaf in adapters.items() if not name.startswith("head")},
                la.adapter_select, la.mask)
            x, layer_cache = Block(c, name=f"layer_{i}")(
                x, positions, mask, inv_freq, None if cache is None else cache[i], write_index, adapter, group_size)
            new_cache.append(layer_cache)
        x = RMSNorm(c, name="final_norm")(x)
        if adapters is not None:
            x = adapt(x, adapters["head_down"], adapters["head_up"], la.adapter_select, la.mask)
        head = None if c.tie_embeddings else _param(self, "lm_head", (c.hidden_size, c.vocab_size), ("embed", "vocab"))
        new_cache = None if cache is None else tuple(new_cache)
        if hidden_only:  # the caller projects the positions it needs with `lm_head`
            return x, new_cache
        if logits_index is not None:  # only some positions per row need the vocabulary projection
            x = gather_positions(x, logits_index)
        return _project(x, embedding if head is None else head, c), new_cache


def gather_positions(x, index):
    """x [B, T, ...] at index int [B] -> [B, ...], or at int [B, K] -> [B, K, ...]."""
    flat = index if index.ndim == 2 else index[:, None]
    out = jnp.take_along_axis(x, flat.reshape(flat.shape + (1,) * (x.ndim - 2)), axis=1)
    return out if index.ndim == 2 else out[:, 0]


# On XLA:CPU a product of 2 rows with the vocabulary table ran as one YNNPACK fusion at 2-3x a 1-row product,
# which takes Eigen's matrix-vector path; two 1-row products cost 2x. At 3 rows the two tie, past that the
# fusion wins (docs/BENCHMARKS.md, "The vocabulary projection of 2 rows"). 0 turns this off.
ROWWISE_PROJECTION_MAX = 2


def _project(x, weight, config: LlamaConfig):
    rows = math.prod(x.shape[:-1])
    if 1 < rows <= ROWWISE_PROJECTION_MAX and jax.default_backend() == "cpu":
        flat = x.reshape(rows, x.shape[-1])
        logits = [_project(flat[i:i + 1], weight, config) for i in range(rows)]
        return jnp.concatenate(logits).reshape(*x.shape[:-1], -1)
    if config.tie_embeddings:  # contract with the [V, D] table directly: no transposed copy per call
        return jnp.einsum("...d,vd->...v", x, weight.astype(config.jnp_dtype), preferred_element_type=jnp.float32)
    return jnp.dot(x, weight.astype(config.jnp_dtype), preferred_element_type=jnp.float32)


def lm_head(params, config: LlamaConfig, hidden):
    """float32 logits of final hidden states (from `forward(..., hidden_only=True)`)."""
    return _project(hidden, params["embedding"] if config.tie_embeddings else params["lm_head"], config)


def forward(params, config: LlamaConfig, tokens, positions, mask, cache: Cache | None = None, write_index=None, *,
            lookahead: LookaheadInputs | None = None, logits_index=None, hidden_only=False, group_size=None):
    """Pure forward pass.

    tokens: int [B, T]; positions: int [B, T] (RoPE positions); mask: bool [B, T, S] where S is the
    cache length (or T without a cache); cache: from `init_cache`, written at per-row `write_index`
    [B]; lookahead: what look-ahead parameters put at the look-ahead slots (`LookaheadInputs`, built
    by `lookahead.forward_inputs`; other positions see the base model exactly); logits_index [B]
    picks one position per row, [B, K] several. Returns (float32 logits, new cache or None); with
    hidden_only, (final hidden states [B, T, D], new cache) for `lm_head`.
    group_size (static): T is made of independent groups of that many slots that see the cache through
    `mask` [B, T, S] and, causally, their own group; the cache is read, not written (training).
    """
    return Llama(config).apply({"params": params}, tokens, positions, mask, cache, write_index, lookahead=lookahead,
                               logits_index=logits_index, hidden_only=hidden_only, group_size=group_size)


def _init_inputs():
    """The smallest call `Llama.init` traces: one token at position 0 that sees itself."""
    tokens = jnp.zeros((1, 1), jnp.int32)
    return tokens, tokens, jnp.ones((1, 1, 1), bool)


def init_params(config: LlamaConfig, rng) -> dict[str, Any]:
    """Random parameters (unboxed), for tests and shape-only planning."""
    return nn.unbox(Llama(config).init(rng, *_init_inputs())["params"])


def abstract_variables(config: LlamaConfig):
    """`Llama(config).init`'s variables as shapes only (no memory, no device), boxed with their logical axes."""
    return jax.eval_shape(lambda: Llama(config).init(jax.random.key(0), *_init_inputs()))


def param_logical_axes(config: LlamaConfig) -> dict[str, Any]:
    """The logical axis names of every parameter, as a pytree of PartitionSpecs."""
    return nn.get_partition_spec(abstract_variables(config))["params"]


def param_shapes(config: LlamaConfig) -> dict[str, Any]:
    return nn.unbox(abstract_variables(config)["params"])


def init_cache(config: LlamaConfig, batch: int, length: int, dtype=None) -> Cache:
    shape = (batch, length, config.num_kv_heads, config.head_dim)
    dtype = dtype or config.jnp_dtype
    return tuple({"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)} for _ in range(config.num_layers))


def causal_mask(write_index, width: int, length: int):
    """bool [B, width, length]: the query at write_index+t sees every cache slot up to itself."""
    query_pos = write_index[:, None] + jnp.arange(width)[None, :]
    return jnp.arange(length)[None, None, :] <= query_pos[:, :, None]
