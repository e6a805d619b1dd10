"""Logits processors against a NumPy reference, and the setting checks."""
import jax
import numpy as np
import pytest

from pass_jax.sampling import SamplingConfig, SamplingError, probabilities


def reference(logits, cfg):
    out = []
    for row in logits / cfg.temperature:
        order = np.argsort(-row)
        kept = order[:cfg.top_k or len(row)]
        probs = np.zeros_like(row)
        probs[kept] = np.exp(row[kept] - row[kept].max())
        probs /= probs.sum()
        if cfg.top_p < 1:
            sorted_probs = probs[order]
            nucleus = order[(np.cumsum(sorted_probs) - sorted_probs) < cfg.top_p]
            probs = np.where(np.isin(np.arange(len(row)), nucleus), probs, 0)
            probs /= probs.sum()
        out.append(probs)
    return np.stack(out)


@pytest.mark.parametrize("cfg", [SamplingConfig(1.0, 5), SamplingConfig(0.7, None, 0.9),
                                 SamplingConfig(0.8, 10, 0.5), SamplingConfig(1.3, None)])
def test_probabilities_match_reference(cfg):
    logits = np.asarray(jax.random.normal(jax.random.key(0), (4, 50))) * 3
    np.testing.assert_allclose(probabilities(logits, cfg), reference(logits, cfg), atol=1e-6)


def test_greedy_is_one_hot_argmax():
    logits = np.asarray(jax.random.normal(jax.random.key(1), (3, 20)))
    probs = np.asarray(probabilities(logits, SamplingConfig(temperature=0, top_k=None)))
    np.testing.assert_array_equal(probs.argmax(-1), logits.argmax(-1))
    np.testing.assert_array_equal(probs.sum(-1), 1)


@pytest.mark.parametrize("kwargs, message", [({"temperature": -0.1}, "temperature"), ({"top_k": 0}, "top-k"),
                                             ({"top_p": 0.0}, "top-p"), ({"top_p": 1.01}, "top-p")])
def test_bad_settings(kwargs, message):
    with pytest.raises(SamplingError, match=message):
        SamplingConfig(**kwargs)


@pytest.mark.parametrize("support, exact", [(None, True), (3, True), (8, True), (2, False)])
def test_sample_among_the_support_draws_the_same_law(support, exact):
    """`sample` with `support` (drawing among the top-`support` tokens) has the law of the whole
    distribution when at most that many tokens are possible; a support cut below them is caught."""
    import jax.numpy as jnp

    from pass_jax.sampling import sample

    probs = jnp.zeros((4000, 50)).at[:, jnp.array([3, 17, 41])].set(jnp.array([0.5, 0.3, 0.2]))
    draws = np.asarray(sample(jax.random.key(0), probs, support))
    counts = np.bincount(draws, minlength=50)
    expected = np.zeros(50)
    expected[[3, 17, 41]] = np.array([0.5, 0.3, 0.2]) * len(draws)
    outside = counts[expected == 0].sum()
    stat = sum((counts[t] - expected[t]) ** 2 / expected[t] for t in (3, 17, 41))
    assert (outside == 0 and stat < 2 + 6 * 2) == exact, (counts[[3, 17, 41]], outside, stat)
