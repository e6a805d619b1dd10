"""Logits processing and the speculative-sampling rejection rule, all in float32.

The same processors (temperature, top-k, top-p) turn both draft and target logits into
distributions, so p and q share one support rule. Greedy decoding (temperature 0) is the limit
case: p and q become one-hot, and the general rule then accepts exactly when the draft equals
argmax p and replaces with argmax p.
"""
from __future__ import annotations

from .errors import PassJaxError

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax


class SamplingError(PassJaxError):
    """Sampling settings that do not define a distribution."""


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.8
    top_k: int | None = 10
    top_p: float = 1.0

    def __post_init__(self):
        if self.temperature < 0:
            raise SamplingError(f"temperature must be >= 0 (0 is greedy), got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise SamplingError(f"top-k must be >= 1 (or unset for no top-k), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise SamplingError(f"top-p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


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


def sample(key, probs):
    """One token per distribution; log(0) = -inf keeps excluded tokens impossible."""
    return jax.random.categorical(key, jnp.log(probs), axis=-1).astype(jnp.int32)


def acceptance_probability(p_draft, q_draft):
    """min(1, p(d)/q(d)); d was drawn from q so q(d) > 0, but guard q = 0 anyway."""
    return jnp.where(q_draft > 0, jnp.minimum(1.0, p_draft / jnp.where(q_draft > 0, q_draft, 1.0)), 0.0)


def residual_distribution(p, q):
    """norm(max(0, p - q)); where p == q the rejection has probability 0, so fall back to p."""
    diff = jnp.maximum(p - q, 0.0)
    total = jnp.sum(diff, axis=-1, keepdims=True)
    return jnp.where(total > 0, diff / jnp.where(total > 0, total, 1.0), p)


def verify(key, drafts, q, p):
    """The speculative-sampling rule for one validation call.

    drafts [B, L]: d_2..d_{L+1}; q [B, L, V]: their draft distributions q_1..q_L;
    p [B, L+1, V]: target distributions p_1..p_{L+1}. Returns (accepted [B] = A, the replacement or
    bonus token [B], accepted-per-position flags [B, L]).
    """
    key_accept, key_next = jax.random.split(key)
    num_drafts = drafts.shape[1]
    p_d = jnp.take_along_axis(p[:, :num_drafts], drafts[..., None], axis=-1)[..., 0]
    q_d = jnp.take_along_axis(q, drafts[..., None], axis=-1)[..., 0]
    u = jax.random.uniform(key_accept, drafts.shape, dtype=jnp.float32)
    accept = u < acceptance_probability(p_d, q_d)
    accepted_prefix = jnp.cumprod(accept.astype(jnp.int32), axis=1)
    num_accepted = jnp.sum(accepted_prefix, axis=1)
    # Distribution for the token after the accepted prefix: the residual at the first rejection,
    # or p_{L+1} (the bonus) when everything was accepted.
    p_next = jnp.take_along_axis(p, num_accepted[:, None, None], axis=1)[:, 0]
    q_next = jnp.take_along_axis(q, jnp.minimum(num_accepted, num_drafts - 1)[:, None, None], axis=1)[:, 0]
    dist = jnp.where((num_accepted < num_drafts)[:, None], residual_distribution(p_next, q_next), p_next)
    return num_accepted, sample(key_next, dist), accepted_prefix.astype(bool)
