"""A tiny LLaMA and look-ahead vectors trained in-process on a Markov chain, so drafts are accepted deep.

Random weights almost never commit two drafts in a row (issue 15 measured A <= 1), which leaves the
commit and cache logic for A >= 2 and the bonus token unchecked. This chain is learnt in a few hundred
Optax steps: x -> x+1 (mod V) with probability 1 - eps, x -> x+2 with probability eps. Greedy decoding
then follows x+1, x+2, ... and the trained [LA]_i draft x+1+i, so whole trees are accepted; sampled
with top-k 2, p is about (1 - eps, eps) and q_i about the (i+1)-step marginal, close enough that
A = L is common, and different enough that a lossy rule shows.

Used by tests/test_decoding.py and tests/_sharding_worker.py.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from pass_jax.model import param_shapes
from pass_jax.train.losses import group_layout, lookahead_logits, sample_anchors

JUMP = 2  # the rare step. Even: with an odd one a token's parity is fixed by its position, so q of another
# depth never overlaps p, and a rule that mixes up depths would go unseen


def chain_corpus(key, vocab: int, eps: float, batch: int, seq_len: int):
    """int32 [batch, seq_len] walks of the chain from uniform starts."""
    start_key, jump_key = jax.random.split(key)
    start = jax.random.randint(start_key, (batch, 1), 0, vocab)
    steps = jnp.where(jax.random.uniform(jump_key, (batch, seq_len - 1)) < eps, JUMP, 1)
    return ((start + jnp.concatenate([jnp.zeros((batch, 1), jnp.int32), jnp.cumsum(steps, axis=1)], axis=1))
            % vocab).astype(jnp.int32)


def _init(config, key):
    """Plain random parameters from the model's shapes: `init_params` (Flax init) costs ~5 s of CPU
    eagerly and ~3 s to compile on this machine, more than the training."""
    shapes = jax.tree_util.tree_leaves_with_path(param_shapes(config))
    keys = jax.random.split(key, len(shapes))
    leaves = [jnp.ones(s.shape) if "scale" in jax.tree_util.keystr(path) else 0.1 * jax.random.normal(k, s.shape)
              for (path, s), k in zip(shapes, keys)]
    return jax.tree.unflatten(jax.tree.structure(param_shapes(config)), leaves)


@functools.partial(jax.jit, static_argnums=(0, 1, 3, 4, 5, 6, 7))
def _train(config, num_lookahead: int, eps, steps: int, lr: float, batch: int, seq_len: int, groups: int, key):
    init_key, la_key, data_key = jax.random.split(key, 3)
    params = _init(config, init_key)
    trainable = (params, 0.02 * jax.random.normal(la_key, (num_lookahead, config.hidden_size)))
    optimizer = optax.adam(lr)

    def loss_fn(trainable, tokens, anchors):
        params, lookahead = trainable
        drafts, logits = lookahead_logits(lookahead, params, config, tokens, anchors)
        ce = optax.softmax_cross_entropy_with_integer_labels
        # [LA]_i at anchor a is trained towards the token at a + 1 + i
        targets = jnp.take_along_axis(tokens, group_layout(anchors, num_lookahead)[0] + 1, axis=1)
        return ce(logits[:, :-1], tokens[:, 1:]).mean() + ce(drafts, targets.reshape(drafts.shape[:3])).mean()

    def step(carry, step_key):
        trainable, opt_state = carry
        data_key, anchor_key = jax.random.split(step_key)
        tokens = chain_corpus(data_key, config.vocab_size, eps, batch, seq_len)
        grads = jax.grad(loss_fn)(trainable, tokens, sample_anchors(anchor_key, batch, seq_len, groups, num_lookahead))
        updates, opt_state = optimizer.update(grads, opt_state)
        return (optax.apply_updates(trainable, updates), opt_state), None

    (trainable, _), _ = jax.lax.scan(step, (trainable, optimizer.init(trainable)), jax.random.split(data_key, steps))
    return trainable


def train_chain_lm(config, num_lookahead: int, eps: float, steps: int = 200, lr: float = 1e-2, batch: int = 8,
                   seq_len: int = 64, groups: int = 12, seed: int = 0):
    """(params, look-ahead vectors [L, d]) of `config` trained jointly on the chain: the model's own
    next-token loss plus the paper's look-ahead loss at `groups` random anchors per sequence, in one
    jitted lax.scan (one compile). Sequences as long as the tests' decodes keep RoPE positions seen."""
    return _train(config, num_lookahead, jnp.float32(eps), steps, lr, batch, seq_len, groups, jax.random.key(seed))
