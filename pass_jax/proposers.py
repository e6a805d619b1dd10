"""Draft proposers: each fills its own nodes of the static draft tree (`draft_tree.DraftTree`); one
validation and commit step (`decoding._pass_step`, `sampling.verify`) serves them all.

- `lookahead`: the tree's nodes 1..N from the look-ahead outputs (q per depth; sampled i.i.d. from q,
  or the top-K under greedy decoding).
- `context`: the context chain's nodes N+1..N+M, the tokens that followed the latest longest n-gram
  match (n <= N, `Iteration.ngram`: 3 unless `--drafts context:M:N`) of the row's last tokens in its
  own prompt and committed tokens (prompt lookup).
  They are deterministic candidates: q is one-hot at the token, which `verify` applies per node.
  Where a row has no match, or the match's continuation is shorter than M, those nodes are invalid:
  `verify` never tries them.
- `recycle`: the recycle chain's nodes N+M+1..N+M+R, from the root each token's likeliest successor in
  the row's own table (Token Recycling, Luo et al. 2024): `record_successors` writes argmax p after
  every token a validation call saw, so drafts the model rejected still teach the table. The table is
  per row (`DecodeState.successors` [B, V]), so a row decodes as it would alone (`decoding.start_row`
  refills one row without touching the others). Deterministic as well; a token never seen has no
  successor, and the nodes past it are invalid.

All run inside the jitted loop on device arrays, per row, with static shapes.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from .draft_tree import DraftTree
from .iteration import NGRAM
from .sampling import SamplingConfig, draft_candidates


class Drafts(NamedTuple):
    """A validation call's candidates: node tokens [B, N+M+R] for nodes 1..N+M+R, valid [B, N+M+R]
    (None: all valid), q [B, L, V] the look-ahead distributions per depth."""

    tokens: jax.Array
    valid: jax.Array | None
    q: jax.Array


def lookahead(key, logits, tree: DraftTree, sampling: SamplingConfig):
    """(node tokens [B, N], q [B, L, V]) of the tree's look-ahead nodes from the outputs at [LA]_1..[LA]_L."""
    return draft_candidates(key, logits, tree, sampling)


def context(tokens, lengths, size: int, ngram: int = NGRAM):
    """The row's continuation of its latest longest suffix match: (drafts [B, size], valid [B, size]).

    tokens [B, S]: each row's sequence is tokens[:, :lengths], its last token the tree's root. The match
    ends at j < lengths - 1 and is the longest (up to `ngram`) common suffix of tokens[:j+1] and the
    sequence; among equal lengths the latest j. Its continuation tokens[j+1..j+size] is valid up to
    the root (index lengths - 1)."""
    batch, width = tokens.shape
    last = lengths - 1
    pos = jnp.arange(width)[None, :]
    run = jnp.ones((batch, width), bool)
    match = jnp.zeros((batch, width), jnp.int32)
    for k in range(ngram):  # match[b, j]: common suffix length of tokens[:j+1] and the sequence, capped
        earlier = jnp.pad(tokens, ((0, 0), (k, 0)), constant_values=-1)[:, :width]  # tokens[j-k], -1 before 0
        target = jnp.take_along_axis(tokens, jnp.maximum(last - k, 0)[:, None], axis=1)
        run = run & (earlier == target) & (last[:, None] >= k)
        match = match + run
    score = jnp.where((pos < last[:, None]) & (match > 0), match * width + pos, -1)
    best = jnp.argmax(score, axis=1)
    found = jnp.max(score, axis=1) >= 0
    idx = best[:, None] + 1 + jnp.arange(size)[None, :]
    drafts = jnp.take_along_axis(tokens, jnp.minimum(idx, width - 1), axis=1)
    return drafts, found[:, None] & (idx <= last[:, None])


def recycle(successors, root, size: int):
    """The chain of likeliest successors from `root` [B] in each row's table `successors` [B, V] (-1: none
    seen): (drafts [B, size], valid [B, size]); a draft is valid while every token before it had one."""
    rows = jnp.arange(successors.shape[0])
    token, known, drafts, valid = root, jnp.ones(root.shape, bool), [], []
    for _ in range(size):
        token = successors[rows, jnp.maximum(token, 0)]
        known = known & (token >= 0)
        drafts.append(jnp.maximum(token, 0))
        valid.append(known)
    return jnp.stack(drafts, axis=1), jnp.stack(valid, axis=1)


def record_successors(successors, node_tokens, p, valid):
    """The table after one validation call: each valid node's token [B, N+1] (the root first) gets argmax p
    after it [B, N+1, V] as its successor. Invalid nodes (garbage tokens) write nothing."""
    vocab = successors.shape[1]
    rows = jnp.broadcast_to(jnp.arange(successors.shape[0])[:, None], node_tokens.shape)
    best = jnp.argmax(p, axis=-1).astype(successors.dtype)
    return successors.at[rows, jnp.where(valid, node_tokens, vocab)].set(best, mode="drop")


def with_chains(la_tokens, q, tree: DraftTree, tokens, lengths, root, successors, ngram: int = NGRAM) -> Drafts:
    """The look-ahead nodes (drafted earlier: single-call PaSS carries them) joined by the context chain
    (from `tokens`[:, :lengths]) and the recycle chain (from `root` [B] through `successors`)."""
    if not tree.context and not tree.recycle:
        return Drafts(la_tokens, None, q)
    parts = [(la_tokens, jnp.ones_like(la_tokens, bool))]
    if tree.context:
        parts.append(context(tokens, lengths, tree.context, ngram))
    if tree.recycle:
        parts.append(recycle(successors, root, tree.recycle))
    return Drafts(jnp.concatenate([t for t, _ in parts], axis=1), jnp.concatenate([v for _, v in parts], axis=1), q)
