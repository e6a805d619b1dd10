"""One jitted `lax.while_loop` for autoregressive and PaSS decoding, with static shapes: `prefill`,
then `decode_steps` (`decode` is the two; `Generator` runs `decode_steps` in chunks).

Notation (ARCHITECTURE.md, "Notation"): L look-ahead steps [LA]_1..[LA]_L, d_i the draft of [LA]_i
drawn from q_i, p the target model's distribution, A the accepted drafts. At the start of an
iteration tokens[:, :n] are committed, the cache holds positions 0..n-2, and x_n = tokens[:, n-1]
is pending.

PaSS with `calls=2` (the paper) runs two calls per iteration:
  drafting   [x_n, LA_1..LA_L] at positions n-1..n-1+L   -> d_1 ~ p, drafts from q_1..q_L
  validation [d_1, the draft tree]                         -> p at every node, accept/reject
and commits d_1, the A accepted drafts and one replacement or bonus token (A + 2 tokens).

PaSS with `calls=1` validates and drafts in the same call:
  [x_n, the draft tree, one look-ahead group LA_1..LA_L after every node]
The tree's drafts came from the previous call. Each group sees the prefix up to its node and itself,
as in training; after the walk accepts A drafts, the group at the last accepted node drafts the next
tree. Those drafts never see the replacement/bonus token r, so q does not depend on r and the rule
stays exact. Each call commits A + 1 tokens; the prefill drafts the first tree.

The iteration's shape (`iteration.Iteration`: calls and the draft tree, K_d candidates at depth d, the
chain (1,)*L being the paper's, and the context chain of M drafts) is static, in `DecodeSpec`. The
proposers (`proposers`) fill the tree's nodes; validation and commit are one step for all of them.
The context and recycle chains are drafted at the start of each iteration from the committed tokens
(and, with two calls, d_1) and the row's successor table, so single-call PaSS carries only the
look-ahead drafts; every validation call then records the successors it saw in that table.
Lengths are per-row data: every row accepts its own A; finished rows stop committing.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import lookahead as lookahead_lib
from . import proposers
from .config import LlamaConfig
from .draft_tree import DraftTree
from .iteration import DEFAULT_ITERATION, DecodeError, Iteration
from .model import Cache, causal_mask, forward, gather_positions, init_cache, lm_head, write_cache
from .sampling import SamplingConfig, probabilities, row_keys, sample, split_rows, verify
from .sharding import cache_sharding

__all__ = ["DecodeError", "DecodeSpec", "DecodeState", "DecodeStats", "Iteration", "check_context", "decode",
           "decode_jit", "decode_steps", "decode_steps_jit", "prefill", "prefill_jit"]


@dataclasses.dataclass(frozen=True)
class DecodeSpec:
    """Everything static about a decode: changing it recompiles, changing prompts does not.

    `iteration` is the shape of one loop iteration (`Iteration`: calls, look-ahead steps, draft
    tree; `Iteration.AR` for plain decoding); its default is the one every entry point shares.
    """

    config: LlamaConfig
    iteration: Iteration = DEFAULT_ITERATION
    max_new_tokens: int = 128
    sampling: SamplingConfig = SamplingConfig()
    eos_ids: tuple[int, ...] = ()
    mesh: Any = None            # shard the KV cache over this mesh (`sharding.cache_sharding`), or None

    def __post_init__(self):
        if not isinstance(self.iteration, Iteration):
            raise DecodeError(f"DecodeSpec.iteration must be an Iteration, got {self.iteration!r}")
        check_budget(self.max_new_tokens)

    def buffer_length(self, prompt_width: int) -> int:
        """KV buffer slots of a decode whose prompts are padded to `prompt_width`."""
        return self.iteration.buffer_length(prompt_width + self.max_new_tokens)


def check_budget(max_new_tokens: int) -> None:
    if max_new_tokens < 1:
        raise DecodeError(f"max_new_tokens must be >= 1, got {max_new_tokens}")


def check_context(spec: DecodeSpec, prompt_length: int, error: type[Exception] = DecodeError) -> None:
    """Raise `error` unless a prompt of `prompt_length` tokens, the budget and the slots a decode call
    may write past it fit the model's context. A host check: inside jit the lengths are data."""
    limit, budget, margin = spec.config.max_seq_len, spec.max_new_tokens, spec.iteration.overshoot
    window = spec.config.sliding_window
    if window is not None and window < limit and prompt_length + budget + margin > window:
        # pass-jax attends to every cached position: past the window it would differ from the model.
        raise error(f"prompt of {prompt_length} tokens + max_new_tokens={budget} + {margin} positions that a decode "
                    f"call may write past them = {prompt_length + budget + margin} exceeds the model's sliding "
                    f"attention window of {window} tokens, which pass-jax does not implement; these settings leave "
                    f"room for {max(window - budget - margin, 0)} prompt tokens")
    if prompt_length + budget + margin > limit:
        raise error(f"prompt of {prompt_length} tokens + max_new_tokens={budget} + {margin} positions that a decode "
                    f"call may write past them = {prompt_length + budget + margin} exceeds the model's context of "
                    f"{limit} tokens; these settings leave room for {max(limit - budget - margin, 0)} prompt tokens")


@functools.lru_cache(maxsize=None)
def _validation_layout(tree: DraftTree, group_size: int):
    """The validation call's static layout: nodes 0..N, then (with groups) L look-ahead slots per node.

    Returns numpy (position offsets [W], look-ahead steps [W], visible [W, W]): the RoPE position
    relative to the root, 0 for tokens or i for [LA]_i, and which in-call slots each slot attends to.
    """
    nodes = tree.num_nodes + 1
    depth, ancestors = tree.node_depth, tree.ancestors
    offsets, steps = list(depth), [0] * nodes
    visible = np.zeros((nodes * (1 + group_size),) * 2, bool)
    visible[:nodes, :nodes] = ancestors
    for node in range(nodes if group_size else 0):
        first = nodes + node * group_size
        for i in range(group_size):
            offsets.append(depth[node] + 1 + i)
            steps.append(1 + i)
            visible[first + i, :nodes] = ancestors[node]
            visible[first + i, first:first + i + 1] = True
    return np.asarray(offsets, np.int32), np.asarray(steps, np.int32), visible


def _call_mask(base, visible, length: int):
    """bool [B, W, length]: every valid cache slot before `base`, plus the in-call slots `visible` allows."""
    width = visible.shape[0]
    rel = jnp.arange(length)[None, :] - base[:, None]  # [B, S]
    in_call = jnp.take(jnp.asarray(visible), jnp.clip(rel, 0, width - 1), axis=1)  # [W, B, S]
    in_call = in_call & ((rel >= 0) & (rel < width))[None]
    return (rel < 0)[:, None, :] | jnp.moveaxis(in_call, 0, 1)


class DecodeStats(NamedTuple):
    """Per-row decode statistics. B rows, D = `Iteration.depth` (the tree's L, or the context chain's M;
    0 in ar mode)."""

    model_calls: jax.Array        # int32 [B]: calls while the row was active (the prefill counts as one)
    new_tokens: jax.Array         # int32 [B]: tokens committed after the prompt
    accepted_hist: jax.Array      # int32 [B, D+1]: iterations by number of accepted drafts A
    position_reached: jax.Array   # int32 [B, D]: drafts at depth i that were validated
    position_accepted: jax.Array  # int32 [B, D]: ... and accepted
    context_accepted: jax.Array   # int32 [B]: accepted drafts that the context proposer made
    recycle_accepted: jax.Array   # int32 [B]: accepted drafts that the recycle proposer made


class DecodeState(NamedTuple):
    """The carry of the decode loop. B rows, S = `DecodeSpec.buffer_length(P)` slots (P the padded
    prompt width), N = `Iteration.num_nodes` draft nodes, L look-ahead steps, V the vocabulary."""

    tokens: jax.Array   # int32 [B, S]: committed tokens (garbage past `lengths`)
    lengths: jax.Array  # int32 [B]: committed length; tokens[:, lengths-1] is the pending x_n
    cache: Cache        # per layer {"k", "v"}: [B, S, kv_heads, head_dim]; valid before lengths-1
    key: jax.Array      # PRNG keys [B]: each row's own, split once per iteration (a row's draws use only its key)
    done: jax.Array     # bool [B]: the row hit EOS, a stop id or its budget
    stats: DecodeStats
    drafts: jax.Array   # int32 [B, N]: the next call's look-ahead drafts (single-call PaSS; [B, 0] otherwise)
    draft_q: jax.Array  # float32 [B, L, V]: the distributions those drafts were drawn from ([B, 0, 0] otherwise)
    successors: jax.Array  # int32 [B, V]: each token's likeliest successor seen, -1 none (recycle; [B, 0] otherwise)


def _commit(state: DecodeState, new_tokens, count, prompt_lengths, spec: DecodeSpec) -> DecodeState:
    """Append new_tokens[:, :count] per row, cut at EOS and at the budget; finished rows skip.

    Returns the state with tokens, lengths, done and the new-token count updated."""
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
    return state._replace(tokens=tokens, lengths=lengths, done=done,
                          stats=state.stats._replace(new_tokens=state.stats.new_tokens + n))


def _prefill_inputs(prompt_tokens, prompt_lengths, num_groups: int, length: int):
    """The prompt, then (single-call PaSS) one look-ahead group anchored at each row's last token.

    Returns (ids, positions, look-ahead steps, mask [B, P+L, length], logits index [B, 1+L])."""
    batch, width = prompt_tokens.shape
    steps = jnp.arange(1, num_groups + 1, dtype=jnp.int32)
    ids = jnp.concatenate([prompt_tokens, jnp.zeros((batch, num_groups), jnp.int32)], axis=1)
    positions = jnp.concatenate([jnp.broadcast_to(jnp.arange(width, dtype=jnp.int32), (batch, width)),
                                 prompt_lengths[:, None] - 1 + steps], axis=1)
    la_steps = jnp.broadcast_to(jnp.concatenate([jnp.zeros(width, jnp.int32), steps]), ids.shape)
    slot, query = jnp.arange(length)[None, None, :], jnp.arange(width + num_groups)[None, :, None]
    # a group sees the row's real prompt tokens and itself, causally; tokens see the causal prefix
    group_sees = (slot < prompt_lengths[:, None, None]) | ((slot >= width) & (slot <= query))
    mask = jnp.where(query >= width, group_sees, slot <= query)
    logits_index = jnp.concatenate([prompt_lengths[:, None] - 1, jnp.broadcast_to(width - 1 + steps, (batch, num_groups))],
                                   axis=1)
    return ids, positions, la_steps, mask, logits_index


def prefill(params, lookahead, prompt_tokens, prompt_lengths, key, spec: DecodeSpec) -> DecodeState:
    """Run the whole padded prompt in one call and sample the first new token from its last position.

    `key`: one PRNG key per row [B] (a row's draws, here and in the loop, come from its key alone, so
    its output does not depend on the rows beside it), or one key split into them (`sampling.row_keys`).
    Single-call PaSS also drafts the first tree here, from a look-ahead group after the prompt."""
    batch, width = prompt_tokens.shape
    length = spec.buffer_length(width)
    cache = init_cache(spec.config, batch, length)
    if spec.mesh is not None:
        sharding = cache_sharding(spec.config, spec.mesh, batch, length)
        cache = lax.with_sharding_constraint(cache, jax.tree.map(lambda _: sharding, cache))
    it = spec.iteration
    groups = it.num_lookahead if it.mode == "pass" and it.calls == 1 else 0
    ids, positions, la_steps, mask, logits_index = _prefill_inputs(prompt_tokens, prompt_lengths, groups, length)
    logits, cache = forward(params, spec.config, ids, positions, mask, cache=cache,
                            write_index=jnp.zeros((batch,), jnp.int32), logits_index=logits_index,
                            lookahead=lookahead_lib.forward_inputs(lookahead, la_steps) if groups else None)
    key, key_first, key_draft = split_rows(row_keys(key, batch), 3)
    first = sample(key_first, probabilities(logits[:, 0], spec.sampling), spec.sampling.support)
    if groups:
        drafts, draft_q = proposers.lookahead(key_draft, logits[:, 1:], it.tree, spec.sampling)
    else:
        drafts, draft_q = jnp.zeros((batch, 0), jnp.int32), jnp.zeros((batch, 0, 0), jnp.float32)
    tokens = jnp.zeros((batch, length), jnp.int32).at[:, :width].set(prompt_tokens)
    depth = it.depth
    stats = DecodeStats(jnp.ones((batch,), jnp.int32), jnp.zeros((batch,), jnp.int32),
                        jnp.zeros((batch, depth + 1), jnp.int32), jnp.zeros((batch, depth), jnp.int32),
                        jnp.zeros((batch, depth), jnp.int32), jnp.zeros((batch,), jnp.int32),
                        jnp.zeros((batch,), jnp.int32))
    successors = jnp.full((batch, spec.config.vocab_size if it.recycle else 0), -1, jnp.int32)
    state = DecodeState(tokens, prompt_lengths, cache, key, jnp.zeros((batch,), bool), stats, drafts, draft_q,
                        successors)
    return _commit(state, first[:, None], jnp.ones((batch,), jnp.int32), prompt_lengths, spec)


def start_row(state: DecodeState, fresh: DecodeState, prompt_lengths, fresh_length, row
              ) -> tuple[DecodeState, jax.Array]:
    """Start a new prompt in row `row` (an int32 scalar: data) of a running decode; the other rows go on.

    `fresh` is `prefill`'s state for the new prompt alone (batch 1, `fresh_length` [1] its length) at
    the running state's bucket width. Every per-row array of that row (tokens, length, cache slots,
    done, stats, drafts, successor table, PRNG key) becomes the fresh one's, written in place, so the row
    continues exactly as the prompt decoded alone with the same key would (greedy and sampled). Returns
    (state, prompt_lengths) for `decode_steps`."""
    put = lambda old, new: lax.dynamic_update_slice_in_dim(old, new, row, axis=0)  # noqa: E731
    return jax.tree.map(put, state, fresh), put(prompt_lengths, fresh_length)


def _ar_step(params, state: DecodeState, prompt_lengths, spec: DecodeSpec) -> DecodeState:
    pending = state.lengths - 1
    x_n = jnp.take_along_axis(state.tokens, pending[:, None], axis=1)
    length = state.tokens.shape[1]
    logits, cache = forward(params, spec.config, x_n, pending[:, None], causal_mask(pending, 1, length),
                            cache=state.cache, write_index=pending)
    key, sub = split_rows(state.key, 2)
    next_token = sample(sub, probabilities(logits[:, 0], spec.sampling), spec.sampling.support)
    active = ~state.done
    state = _commit(state._replace(cache=cache, key=key), next_token[:, None], jnp.ones_like(pending),
                    prompt_lengths, spec)
    return state._replace(stats=state.stats._replace(model_calls=state.stats.model_calls + active))


def _move_accepted_kv(cache: Cache, base, path, tree: DraftTree) -> Cache:
    """Copy the K/V of the accepted nodes (call slots base + path) to the contiguous slots after the root."""
    if tree.is_chain:  # a chain's node at depth j already sits in slot base + j
        return cache
    source = base[:, None] + path
    return tuple({name: write_cache(layer[name], gather_positions(layer[name], source), base + 1)
                  for name in ("k", "v")} for layer in cache)


def _pass_step(params, lookahead, state: DecodeState, prompt_lengths, spec: DecodeSpec) -> DecodeState:
    it, sampling = spec.iteration, spec.sampling
    num_l, tree = it.num_lookahead, it.tree
    num_nodes = tree.num_nodes + 1
    batch, length = state.tokens.shape
    rows = jnp.arange(batch)
    pending = state.lengths - 1  # slot of the pending token x_n
    key, key_draft, key_verify, key_first = split_rows(state.key, 4)
    x_n = state.tokens[rows, pending]

    if it.calls == 2:
        # Drafting call [x_n, LA_1..LA_L]: d_1 ~ p is exact and becomes the root of the tree.
        offsets = jnp.arange(num_l + 1, dtype=jnp.int32)[None, :]
        ids = jnp.concatenate([x_n[:, None], jnp.zeros((batch, num_l), jnp.int32)], axis=1)
        logits, cache = forward(params, spec.config, ids, pending[:, None] + offsets,
                                causal_mask(pending, num_l + 1, length), cache=state.cache, write_index=pending,
                                lookahead=lookahead_lib.forward_inputs(lookahead, jnp.broadcast_to(offsets, ids.shape)))
        root = sample(key_first, probabilities(logits[:, 0], sampling), sampling.support)
        la_drafts, la_q = proposers.lookahead(key_draft, logits[:, 1:], tree, sampling)
        base, committed_root = state.lengths, root[:, None]
        sequence = state.tokens.at[rows, state.lengths].set(root)  # the context proposer matches after d_1
    else:
        cache, root, la_drafts, la_q = state.cache, x_n, state.drafts, state.draft_q
        base, committed_root = pending, jnp.zeros((batch, 0), jnp.int32)
        sequence = state.tokens
    drafts = proposers.with_chains(la_drafts, la_q, tree, sequence, base + 1, root, state.successors, it.ngram)

    # Validation call: the root, the tree, and (single call) a look-ahead group after every node.
    group_size = num_l if it.calls == 1 else 0
    offsets, la_steps, visible = _validation_layout(tree, group_size)
    ids = jnp.concatenate([root[:, None], drafts.tokens, jnp.zeros((batch, len(offsets) - num_nodes), jnp.int32)],
                          axis=1)
    la_steps = jnp.broadcast_to(jnp.asarray(la_steps), ids.shape)
    hidden, cache = forward(params, spec.config, ids, base[:, None] + jnp.asarray(offsets),
                            _call_mask(base, visible, length), cache=cache, write_index=base, hidden_only=True,
                            lookahead=lookahead_lib.forward_inputs(lookahead, la_steps) if group_size else None)
    p = probabilities(lm_head(params, spec.config, hidden[:, :num_nodes]), sampling)
    if it.recycle:  # the root's and every valid node's successor (with a recycle chain, `valid` is given)
        state = state._replace(successors=proposers.record_successors(
            state.successors, ids[:, :num_nodes], p, jnp.concatenate([jnp.ones((batch, 1), bool), drafts.valid], 1)))
    num_accepted, path, next_token, accepted = verify(key_verify, tree, drafts.tokens, q=drafts.q, p=p,
                                                      greedy=sampling.greedy, valid=drafts.valid,
                                                      support=sampling.support)
    cache = _move_accepted_kv(cache, base, path, tree)
    path_tokens = jnp.take_along_axis(jnp.concatenate([root[:, None], drafts.tokens], axis=1), path, axis=1)
    if group_size:  # the group after the last accepted node drafts the next call's look-ahead nodes
        last = jnp.where(num_accepted > 0, path[rows, jnp.maximum(num_accepted - 1, 0)], 0)
        group = num_nodes + last[:, None] * num_l + jnp.arange(num_l)[None, :]
        la_drafts, la_q = proposers.lookahead(key_draft, lm_head(params, spec.config, gather_positions(hidden, group)),
                                              tree, sampling)

    # Commit [d_1 (two calls)], the A accepted drafts, and the replacement/bonus token.
    committed = jnp.concatenate([committed_root, path_tokens, jnp.zeros((batch, 1), jnp.int32)], axis=1)
    end = committed_root.shape[1] + num_accepted
    committed = jnp.where(jnp.arange(committed.shape[1])[None] == end[:, None], next_token[:, None], committed)
    active = ~state.done
    if group_size:
        state = state._replace(drafts=la_drafts, draft_q=la_q)
    state = _commit(state._replace(cache=cache, key=key), committed, end + 1, prompt_lengths, spec)
    act = active[:, None].astype(jnp.int32)
    s = state.stats
    from_chain = lambda nodes: active * jnp.sum(accepted & jnp.asarray(nodes)[path], axis=1)  # noqa: E731
    stats = s._replace(
        model_calls=s.model_calls + it.calls * active,
        accepted_hist=s.accepted_hist + act * jax.nn.one_hot(num_accepted, tree.depth + 1, dtype=jnp.int32),
        position_reached=s.position_reached + act * (jnp.arange(tree.depth)[None, :] <= num_accepted[:, None]),
        position_accepted=s.position_accepted + act * accepted,
        context_accepted=s.context_accepted + from_chain(tree.is_context),
        recycle_accepted=s.recycle_accepted + from_chain(tree.is_recycle),
    )
    return state._replace(stats=stats)


NO_STEP_LIMIT = np.iinfo(np.int32).max  # `decode_steps`' max_steps for a run to the end


def _step_fn(params, lookahead, prompt_lengths, spec: DecodeSpec):
    if spec.iteration.mode == "pass":
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
    """The whole generation: `prefill`, then `decode_steps` until every row is done.

    prompt_tokens [B, P] are right-padded to a bucket width P; prompt_lengths [B] are data, so
    prompts of any length within a bucket reuse one compilation. `lookahead` (the look-ahead
    parameters) is unused in ar mode, and may be None there. This is the loop `Generator` runs, in
    chunks of `decode_steps` (a chunk only caps the iteration count, so the result is the same).
    """
    state = prefill(params, lookahead, prompt_tokens, prompt_lengths, key, spec)
    return decode_steps(params, lookahead, state, prompt_lengths, NO_STEP_LIMIT, spec)


def check_prompt_lengths(spec: DecodeSpec, prompt_lengths) -> None:
    """`check_context` for the longest prompt this process holds (of a host or a sharded array)."""
    shards = getattr(prompt_lengths, "addressable_shards", None)
    longest = max(np.max(np.asarray(s.data)) for s in shards) if shards else np.max(np.asarray(prompt_lengths))
    check_context(spec, int(longest))


_decode_jit = jax.jit(decode, static_argnames=("spec",))


def decode_jit(params, lookahead, prompt_tokens, prompt_lengths, key, spec: DecodeSpec) -> DecodeState:
    """`decode`, jitted, once the longest prompt this process holds is checked to fit the context."""
    check_prompt_lengths(spec, prompt_lengths)
    return _decode_jit(params, lookahead, prompt_tokens, prompt_lengths, key, spec=spec)


# `Generator` runs these: `prefill_jit` once, then `decode_steps_jit` in chunks, reading the state between them.
prefill_jit = jax.jit(prefill, static_argnames=("spec",))
decode_steps_jit = jax.jit(decode_steps, static_argnames=("spec",), donate_argnames=("state",))
# `Generator.results` starts a queued prompt in a finished row with `prefill_jit` (batch 1) and this, between chunks.
start_row_jit = jax.jit(start_row, donate_argnames=("state",))
