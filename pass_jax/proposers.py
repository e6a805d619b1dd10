"""Draft proposers: each fills its own nodes of the static draft tree (`draft_tree.DraftTree`); one
validation and commit step (`decoding._pass_step`, `sampling.verify`) serves them all.

- `lookahead`: the tree's nodes 1..N from the look-ahead outputs (q per depth; sampled i.i.d. from q,
  or the top-K under greedy decoding).
- `context`: the context chain's nodes N+1..N+M, the tokens that followed the latest longest n-gram
  match (n <= NGRAM) of the row's last tokens in its own prompt and committed tokens (prompt lookup).
  They are deterministic candidates: q is one-hot at the token, which `verify` applies per node.
  Where a row has no match, or the match's continuation is shorter than M, those nodes are invalid:
  `verify` never tries them.

All run inside the jitted loop on device arrays, per row, with static shapes.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from .draft_tree import DraftTree
from .sampling import SamplingConfig, draft_candidates

NGRAM = 3  # the longest suffix the context proposer matches


class Drafts(NamedTuple):
    """A validation call's candidates: node tokens [B, N+M] for nodes 1..N+M, valid [B, N+M] (None:
    all valid), q [B, L, V] the look-ahead distributions per depth."""

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


def with_context(la_tokens, q, tree: DraftTree, tokens, lengths) -> Drafts:
    """The look-ahead nodes (drafted earlier: single-call PaSS carries them) joined by the context chain."""
    if not tree.context:
        return Drafts(la_tokens, None, q)
    ctx_tokens, ctx_valid = context(tokens, lengths, tree.context)
    return Drafts(jnp.concatenate([la_tokens, ctx_tokens], axis=1),
                  jnp.concatenate([jnp.ones_like(la_tokens, bool), ctx_valid], axis=1), q)
