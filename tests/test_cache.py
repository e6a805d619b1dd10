"""The KV cache: incremental decoding with `init_cache`/`causal_mask` equals one full-sequence forward."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pass_jax.model import LookaheadInputs, causal_mask, forward, init_cache

TOL = 1e-5
forward_jit = jax.jit(forward, static_argnums=1)


def full_logits(params, config, ids) -> np.ndarray:
    """Logits [T, V] of one row, no cache."""
    width = len(ids)
    logits, cache = forward_jit(params, config, jnp.asarray([ids], jnp.int32), jnp.arange(width)[None],
                                causal_mask(jnp.zeros((1,), jnp.int32), width, width))
    assert cache is None
    return np.asarray(logits[0])


def sequences(config, lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, config.vocab_size, size=n).tolist() for n in lengths]


def run_chunks(params, config, ids, chunks, length):
    """Feed `ids` in chunks of the given widths through a cache of `length` slots; returns logits [T, V]."""
    cache = init_cache(config, 1, length)
    out, start = [], 0
    for width in chunks:
        index = jnp.asarray([start], jnp.int32)
        logits, cache = forward_jit(params, config, jnp.asarray([ids[start:start + width]], jnp.int32),
                                    start + jnp.arange(width)[None], causal_mask(index, width, length), cache, index)
        out.append(np.asarray(logits[0]))
        start += width
    assert start == len(ids)
    return np.concatenate(out), cache


def test_causal_mask_shape_and_values():
    mask = np.asarray(causal_mask(jnp.asarray([0, 3]), 2, 6))
    assert mask.shape == (2, 2, 6) and mask.dtype == bool
    np.testing.assert_array_equal(mask[0], [[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0]])
    np.testing.assert_array_equal(mask[1], [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0]])


def test_init_cache_layout(tiny):
    config, _ = tiny
    cache = init_cache(config, 3, 20)
    assert len(cache) == config.num_layers
    for layer in cache:
        assert set(layer) == {"k", "v"}
        assert layer["k"].shape == layer["v"].shape == (3, 20, config.num_kv_heads, config.head_dim)
        assert layer["k"] is not layer["v"]  # separate (donatable) buffers
        assert layer["k"].dtype == config.jnp_dtype


@pytest.mark.parametrize("chunks", [[1] * 12, [5, 1, 3, 3]], ids=["token_by_token", "prefill_then_chunks"])
def test_incremental_decoding_matches_full_forward(tiny, chunks):
    config, params = tiny
    (ids,) = sequences(config, [12])
    expected = full_logits(params, config, ids)
    got, cache = run_chunks(params, config, ids, chunks, length=16)
    assert np.abs(got - expected).max() < TOL
    # slots past the written prefix are untouched zeros; the prefix is filled
    k = np.asarray(cache[0]["k"][0])
    assert not np.any(k[len(ids):]) and np.all(np.any(k[:len(ids)] != 0, axis=(1, 2)))


def test_cache_is_really_used(tiny):
    """Guard against a test that passes without the cache: a zeroed cache changes the logits."""
    config, params = tiny
    (ids,) = sequences(config, [8])
    expected = full_logits(params, config, ids)
    _, cache = run_chunks(params, config, ids[:7], [7], length=16)
    cache = jax.tree.map(jnp.zeros_like, cache)
    index = jnp.asarray([7], jnp.int32)
    logits, _ = forward_jit(params, config, jnp.asarray([ids[7:]], jnp.int32), index[:, None],
                            causal_mask(index, 1, 16), cache, index)
    assert np.abs(np.asarray(logits[0, 0]) - expected[7]).max() > 100 * TOL


def test_ragged_batch_with_different_write_offsets(tiny):
    """Two rows padded into one prefill, then decoded with per-row write offsets, positions and masks."""
    config, params = tiny
    lengths = [4, 7]
    steps = 5
    length = 16
    rows = sequences(config, [n + steps for n in lengths], seed=1)
    width = max(lengths)
    prompt = np.zeros((2, width), np.int32)
    for r, n in enumerate(lengths):
        prompt[r, :n] = rows[r][:n]
    zeros = jnp.zeros((2,), jnp.int32)
    cache = init_cache(config, 2, length)
    # prefill the padded prompt; logits_index picks each row's last real position
    last, cache = forward_jit(params, config, jnp.asarray(prompt), jnp.broadcast_to(jnp.arange(width), (2, width)),
                              causal_mask(zeros, width, length), cache, zeros,
                              logits_index=jnp.asarray(lengths, jnp.int32) - 1)
    got = [[np.asarray(last[r])] for r in range(2)]
    index = np.asarray(lengths, np.int32)
    for step in range(steps):
        # row 0 overwrites its padding slots; row 1 writes past the prompt width
        tokens = jnp.asarray([[rows[r][index[r]]] for r in range(2)], jnp.int32)
        wi = jnp.asarray(index)
        logits, cache = forward_jit(params, config, tokens, wi[:, None], causal_mask(wi, 1, length), cache, wi)
        for r in range(2):
            got[r].append(np.asarray(logits[r, 0]))
        index = index + 1
    for r, n in enumerate(lengths):
        expected = full_logits(params, config, rows[r])[n - 1:]
        assert np.abs(np.stack(got[r]) - expected).max() < TOL, f"row {r}"
    # the rows really had different offsets: row 0 stopped writing at slot 9, row 1 at slot 12
    k = np.asarray(cache[0]["k"])
    assert np.any(k[0, 8]) and not np.any(k[0, 9:])
    assert np.any(k[1, 11]) and not np.any(k[1, 12:])


def test_input_embeds_equal_to_token_embedding_change_nothing(tiny):
    config, params = tiny
    (ids,) = sequences(config, [6], seed=2)
    tokens = jnp.asarray([ids], jnp.int32)
    embeds = jnp.take(params["embedding"], tokens, axis=0)
    mask = causal_mask(jnp.zeros((1,), jnp.int32), 6, 6)
    replaced = jnp.asarray([[False, True, False, True, True, False]])
    plain, _ = forward_jit(params, config, tokens, jnp.arange(6)[None], mask)
    same, _ = forward_jit(params, config, tokens, jnp.arange(6)[None], mask,
                          lookahead=LookaheadInputs(mask=replaced, embeds=embeds))
    other, _ = forward_jit(params, config, tokens, jnp.arange(6)[None], mask,
                           lookahead=LookaheadInputs(mask=replaced, embeds=embeds * 3.0))
    np.testing.assert_allclose(np.asarray(same), np.asarray(plain), atol=TOL)
    diff = np.abs(np.asarray(other) - np.asarray(plain)).max(axis=-1)[0]
    assert diff[0] < TOL and diff[1] > 100 * TOL  # positions before the first replacement are unchanged
