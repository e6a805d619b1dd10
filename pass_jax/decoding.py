"""One jitted `lax.while_loop` for autoregressive and PaSS decoding, with static shapes.

Notation follows `shared/pass-algorithm.md`. At the start of an iteration tokens[:, :n] are
committed, the cache holds positions 0..n-2, and x_n = tokens[:, n-1] is pending. PaSS runs two
calls of fixed width L+1 per iteration:
  drafting   [x_n, LA_1..LA_L] at positions n-1..n-1+L   -> d_1 ~ p, d_{i+1} ~ q_i
  validation [d_1..d_{L+1}]    at positions n..n+L       -> p_1..p_{L+1}, accept/reject
and commits d_1, the A accepted drafts and one replacement or bonus token (A + 2 tokens).
Lengths are per-row data: every row accepts its own A; finished rows stop committing.
"""
from __future__ import annotations

from .errors import PassJaxError

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from . import lookahead as lookahead_lib
from .config import LlamaConfig
from .model import Cache, causal_mask, forward, init_cache
from .sampling import SamplingConfig, probabilities, sample, verify

MODES = ("ar", "pass")


class DecodeError(PassJaxError):
    """Decoding settings that cannot run."""


def check_settings(mode: str, num_lookahead: int, max_new_tokens: int) -> None:
    """Validate user-facing decode settings (also called by the CLI before loading a model)."""
    if mode not in MODES:
        raise DecodeError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "pass" and num_lookahead < 1:
        raise DecodeError(f"PaSS needs at least one look-ahead step (--num-lookahead >= 1), got {num_lookahead}")
    if max_new_tokens < 1:
        raise DecodeError(f"max_new_tokens must be >= 1, got {max_new_tokens}")


@dataclasses.dataclass(frozen=True)
class DecodeSpec:
    """Everything static about a decode: changing it recompiles, changing prompts does not."""

    config: LlamaConfig
    mode: str = "pass"
    num_lookahead: int = 4
    max_new_tokens: int = 128
    sampling: SamplingConfig = SamplingConfig()
    eos_ids: tuple[int, ...] = ()
    cache_sharding: Any = None  # NamedSharding for each cache array, or None

    def __post_init__(self):
        check_settings(self.mode, self.num_lookahead, self.max_new_tokens)

    @property
    def width(self) -> int:
        """Fixed input width of one decode call."""
        return self.num_lookahead + 1 if self.mode == "pass" else 1

    @property
    def stat_lookahead(self) -> int:
        return self.num_lookahead if self.mode == "pass" else 0

    def buffer_length(self, prompt_width: int) -> int:
        # room for the prompt, the budget, and one iteration's overshoot (A + 2 <= L + 2 tokens)
        return prompt_width + self.max_new_tokens + self.width + 1


class DecodeStats(NamedTuple):
    model_calls: jax.Array      # [B] calls while the row was active (the prefill counts as one)
    new_tokens: jax.Array       # [B]
    accepted_hist: jax.Array    # [B, L+1] iterations by number of accepted drafts A
    position_reached: jax.Array  # [B, L] drafts at look-ahead position i that were validated
    position_accepted: jax.Array  # [B, L] ... and accepted


class DecodeState(NamedTuple):
    tokens: jax.Array   # [B, buffer] committed tokens (garbage past `lengths`)
    lengths: jax.Array  # [B] committed length; tokens[lengths-1] is pending
    cache: Cache
    key: jax.Array
    done: jax.Array     # [B]
    stats: DecodeStats


def _commit(state: DecodeState, new_tokens, count, prompt_lengths, spec: DecodeSpec):
    """Append new_tokens[:, :count] per row, cut at EOS and at the budget; finished rows skip."""
    width = new_tokens.shape[1]
    idx = jnp.arange(width)[None, :]
    budget_left = spec.max_new_tokens - (state.lengths - prompt_lengths)
    n = jnp.minimum(count, budget_left)
    if spec.eos_ids:
        is_eos = jnp.isin(new_tokens, jnp.asarray(spec.eos_ids)) & (idx < n[:, None])
        first_eos = jnp.argmax(is_eos, axis=1)
        hit_eos = jnp.any(is_eos, axis=1)
        n = jnp.where(hit_eos, first_eos + 1, n)
    else:
        hit_eos = jnp.zeros_like(state.done)
    n = jnp.where(state.done, 0, n)
    tokens = jax.vmap(lambda row, upd, start: lax.dynamic_update_slice(row, upd, (start,)))(
        state.tokens, new_tokens, state.lengths)
    # A finished row keeps its tokens: restore what the blind write may have covered.
    tokens = jnp.where(state.done[:, None], state.tokens, tokens)
    lengths = state.lengths + n
    done = state.done | hit_eos | (lengths - prompt_lengths >= spec.max_new_tokens)
    return tokens, lengths, done, n


def prefill(params, lookahead, prompt_tokens, prompt_lengths, key, spec: DecodeSpec) -> DecodeState:
    """Run the whole padded prompt in one call and sample the first new token from its last position."""
    batch, width = prompt_tokens.shape
    length = spec.buffer_length(width)
    cache = init_cache(spec.config, batch, length)
    if spec.cache_sharding is not None:
        cache = lax.with_sharding_constraint(cache, jax.tree.map(lambda _: spec.cache_sharding, cache))
    zeros = jnp.zeros((batch,), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(width, dtype=jnp.int32), (batch, width))
    logits, cache = forward(params, spec.config, prompt_tokens, positions, causal_mask(zeros, width, length),
                            cache, zeros, logits_index=prompt_lengths - 1)
    key, sub = jax.random.split(key)
    first = sample(sub, probabilities(logits, spec.sampling))
    tokens = jnp.zeros((batch, length), jnp.int32).at[:, :width].set(prompt_tokens)
    num_l = spec.stat_lookahead
    stats = DecodeStats(jnp.zeros((batch,), jnp.int32), jnp.zeros((batch,), jnp.int32),
                        jnp.zeros((batch, num_l + 1), jnp.int32), jnp.zeros((batch, num_l), jnp.int32),
                        jnp.zeros((batch, num_l), jnp.int32))
    state = DecodeState(tokens, prompt_lengths, cache, key, jnp.zeros((batch,), bool), stats)
    tokens, lengths, done, n = _commit(state, first[:, None], jnp.ones((batch,), jnp.int32), prompt_lengths, spec)
    stats = stats._replace(model_calls=stats.model_calls + 1, new_tokens=n)
    return DecodeState(tokens, lengths, cache, key, done, stats)


def _ar_step(params, state: DecodeState, prompt_lengths, spec: DecodeSpec) -> DecodeState:
    pending = state.lengths - 1
    x_n = jnp.take_along_axis(state.tokens, pending[:, None], axis=1)
    length = state.tokens.shape[1]
    logits, cache = forward(params, spec.config, x_n, pending[:, None], causal_mask(pending, 1, length),
                            state.cache, pending)
    key, sub = jax.random.split(state.key)
    next_token = sample(sub, probabilities(logits[:, 0], spec.sampling))
    active = ~state.done
    tokens, lengths, done, n = _commit(state, next_token[:, None], jnp.ones_like(pending), prompt_lengths, spec)
    stats = state.stats._replace(model_calls=state.stats.model_calls + active,
                                 new_tokens=state.stats.new_tokens + n)
    return DecodeState(tokens, lengths, cache, key, done, stats)


def _pass_step(params, lookahead, state: DecodeState, prompt_lengths, spec: DecodeSpec) -> DecodeState:
    num_l, width = spec.num_lookahead, spec.width
    batch, length = state.tokens.shape
    n_minus_1 = state.lengths - 1  # position of the pending token x_n
    offsets = jnp.arange(width, dtype=jnp.int32)[None, :]
    key, key_draft, key_verify = jax.random.split(state.key, 3)

    # 1. Drafting call: [x_n, LA_1..LA_L].
    x_n = jnp.take_along_axis(state.tokens, n_minus_1[:, None], axis=1)
    draft_inputs = jnp.concatenate([x_n, jnp.zeros((batch, num_l), jnp.int32)], axis=1)
    logits, cache = forward(params, spec.config, draft_inputs, n_minus_1[:, None] + offsets,
                            causal_mask(n_minus_1, width, length), state.cache, n_minus_1,
                            **lookahead_lib.forward_inputs(lookahead, jnp.broadcast_to(offsets, (batch, width))))
    draft_probs = probabilities(logits, spec.sampling)  # [B, L+1, V]: p(.|x_1..x_n), q_1..q_L
    d = sample(key_draft, draft_probs)                   # d_1..d_{L+1}

    # 2. Validation call: [d_1..d_{L+1}] at positions n..n+L.
    logits, cache = forward(params, spec.config, d, state.lengths[:, None] + offsets,
                            causal_mask(state.lengths, width, length), cache, state.lengths)
    p = probabilities(logits, spec.sampling)  # p_1..p_{L+1}
    num_accepted, next_token, accepted = verify(key_verify, d[:, 1:], draft_probs[:, 1:], p)

    # 3. Commit d_1, the A accepted drafts, and the replacement/bonus at index A+1 (A + 2 tokens).
    committed = jnp.concatenate([d, jnp.zeros((batch, 1), jnp.int32)], axis=1)
    committed = jnp.where(jnp.arange(width + 1)[None] == (num_accepted + 1)[:, None], next_token[:, None], committed)
    active = ~state.done
    tokens, lengths, done, n = _commit(state._replace(cache=cache), committed, num_accepted + 2, prompt_lengths, spec)
    act = active[:, None].astype(jnp.int32)
    pos = jnp.arange(num_l)[None, :]
    s = state.stats
    stats = DecodeStats(
        model_calls=s.model_calls + 2 * active,
        new_tokens=s.new_tokens + n,
        accepted_hist=s.accepted_hist + act * jax.nn.one_hot(num_accepted, num_l + 1, dtype=jnp.int32),
        position_reached=s.position_reached + act * (pos <= num_accepted[:, None]),
        position_accepted=s.position_accepted + act * accepted,
    )
    return DecodeState(tokens, lengths, cache, key, done, stats)


def _step_fn(params, lookahead, prompt_lengths, spec: DecodeSpec):
    if spec.mode == "pass":
        return lambda s: _pass_step(params, lookahead, s, prompt_lengths, spec)
    return lambda s: _ar_step(params, s, prompt_lengths, spec)


def decode_steps(params, lookahead, state: DecodeState, prompt_lengths, max_steps, spec: DecodeSpec) -> DecodeState:
    """Continue a decode for at most `max_steps` loop iterations, or until every row is done.

    `max_steps` is data (an int32 scalar), so streaming in chunks reuses one compilation.
    """
    step = _step_fn(params, lookahead, prompt_lengths, spec)

    def body(carry):
        s, i = carry
        return step(s), i + 1

    state, _ = lax.while_loop(lambda c: ~jnp.all(c[0].done) & (c[1] < max_steps), body,
                              (state, jnp.zeros((), jnp.int32)))
    return state


def decode(params, lookahead, prompt_tokens, prompt_lengths, key, spec: DecodeSpec) -> DecodeState:
    """The whole generation: prefill, then one `lax.while_loop` until every row is done.

    prompt_tokens [B, P] are right-padded to a bucket width P; prompt_lengths [B] are data, so
    prompts of any length within a bucket reuse one compilation.
    """
    state = prefill(params, lookahead, prompt_tokens, prompt_lengths, key, spec)
    step = _step_fn(params, lookahead, prompt_lengths, spec)
    return lax.while_loop(lambda s: ~jnp.all(s.done), step, state)


decode_jit = jax.jit(decode, static_argnames=("spec",))
# Streaming: prefill once, then `decode_steps_jit` in chunks, reading the committed tokens between them.
prefill_jit = jax.jit(prefill, static_argnames=("spec",))
decode_steps_jit = jax.jit(decode_steps, static_argnames=("spec",), donate_argnames=("state",))
