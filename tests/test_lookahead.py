"""Look-ahead parametrisations (pass_jax.lookahead): lossless for real tokens, used by the decoder,
saved and loaded with their kind, cut to L steps."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pass_jax import lookahead as lookahead_lib
from pass_jax.decoding import DecodeSpec, decode_jit
from pass_jax.iteration import Iteration
from pass_jax.model import forward
from pass_jax.sampling import GREEDY

L = 3


def parameters(kind, config, params, scale=1.0, seed=0):
    """Untrained parameters of a kind with every leaf moved far from its start, so each one matters."""
    start = lookahead_lib.init(kind, params, config, L, jax.random.key(seed))
    leaves, tree = jax.tree.flatten(start)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    return jax.tree.unflatten(tree, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


@pytest.mark.parametrize("kind", lookahead_lib.KINDS)
def test_real_tokens_see_exactly_the_base_model(tiny, kind):
    """Tokens, then L look-ahead slots: the tokens' logits are bit-identical to the base model's on the
    same input (ordinary tokens in those slots, no look-ahead inputs), while the slots' differ."""
    config, params = tiny
    tokens = jax.random.randint(jax.random.key(0), (2, 12), 0, config.vocab_size)
    ids = jnp.concatenate([tokens, jnp.full((2, L), 7)], axis=1)
    width = ids.shape[1]
    positions = jnp.broadcast_to(jnp.arange(width), ids.shape)
    mask = jnp.broadcast_to(jnp.tril(jnp.ones((width, width), bool)), (2, width, width))
    steps = jnp.broadcast_to(jnp.concatenate([jnp.zeros(12, jnp.int32), jnp.arange(1, L + 1)]), ids.shape)
    call = jax.jit(forward, static_argnums=1)
    base, _ = call(params, config, ids, positions, mask)
    with_la, _ = call(params, config, ids, positions, mask,
                      lookahead=lookahead_lib.forward_inputs(parameters(kind, config, params), steps))
    np.testing.assert_array_equal(np.asarray(with_la[:, :12]), np.asarray(base[:, :12]))
    assert float(jnp.abs(with_la[:, 12:] - base[:, 12:]).min()) > 0


def test_deep_with_zero_layers_is_the_paper_vectors(tiny):
    config, params = tiny
    vectors = parameters("vectors", config, params)
    deep = lookahead_lib.as_kind(vectors, "deep", config.num_layers)
    assert deep["layers"].shape == (config.num_layers, L, config.hidden_size)
    steps = jnp.array([[0, 1, 2, 3]])
    ids, positions = jnp.array([[3, 0, 0, 0]]), jnp.arange(4)[None]
    mask = jnp.tril(jnp.ones((4, 4), bool))[None]
    a, _ = forward(params, config, ids, positions, mask, lookahead=lookahead_lib.forward_inputs(vectors, steps))
    b, _ = forward(params, config, ids, positions, mask, lookahead=lookahead_lib.forward_inputs(deep, steps))
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(lookahead_lib.as_kind(deep, "vectors", config.num_layers), vectors)
    deep["layers"] = deep["layers"].at[0, 0, 0].set(1.0)
    with pytest.raises(lookahead_lib.LookaheadError, match="non-zero per-layer"):
        lookahead_lib.as_kind(deep, "vectors", config.num_layers)


@pytest.mark.parametrize("kind", ["deep", "adapter"])
@pytest.mark.parametrize("variant", [dict(calls=2), dict(calls=1), dict(calls=2, draft_tree=(2, 1, 1))])
def test_greedy_pass_with_deep_parameters_equals_ar(tiny, variant, kind):
    config, params = tiny
    prompts = np.array([[5, 17, 3, 9, 1, 0, 0, 0], [9, 1, 44, 2, 7, 100, 12, 8]], np.int32)
    lengths = jnp.array([5, 8], jnp.int32)

    def decode(mode, lookahead):
        spec = DecodeSpec(config, Iteration.from_options(mode, L, **variant), max_new_tokens=32, sampling=GREEDY)
        state = decode_jit(params, lookahead, jnp.asarray(prompts), lengths, jax.random.key(0), spec=spec)
        return np.asarray(state.tokens), jax.device_get(state.stats)

    ar, _ = decode("ar", parameters("vectors", config, params))
    deep = parameters("deep", config, params, scale=0.5)
    if kind == "adapter":  # adapters large enough to change which drafts are accepted
        deep = lookahead_lib.as_kind(deep, kind, config.num_layers, 4, key=jax.random.key(3))
        deep.update({name: 1.0 * jax.random.normal(jax.random.key(i), deep[name].shape)
                     for i, name in enumerate(lookahead_lib.ADAPTER_LEAVES) if name.endswith("_up")})
    pss, stats = decode("pass", deep)
    for row, length in enumerate(np.asarray(lengths)):
        np.testing.assert_array_equal(pss[row, :length + 32], ar[row, :length + 32])
    # the per-layer vectors (adapters) reach the decoder's drafts: without them, acceptance differs
    flat = deep["embeds"] if kind == "deep" else {name: deep[name] for name in lookahead_lib.DEEP_KEYS}
    _, flat_stats = decode("pass", flat)
    assert not np.array_equal(stats.position_accepted, flat_stats.position_accepted) or not np.array_equal(
        stats.model_calls, flat_stats.model_calls)


def test_adapters_are_lossless_at_zero_and_reach_only_their_steps(tiny):
    """Zero "up" computes exactly the deep part; trained adapters of step 1 change [LA]_1's slot but not a
    step-2 slot that cannot see it, nor the tokens; non-zero adapters cannot be dropped silently."""
    config, params = tiny
    deep = parameters("deep", config, params)
    adapter = lookahead_lib.as_kind(deep, "adapter", config.num_layers, 4, 1, key=jax.random.key(2))
    assert lookahead_lib.adapter_steps(adapter) == 1 and adapter["attn_down"].shape == (config.num_layers, 1, 64, 4)
    ids, positions = jnp.array([[3, 9, 0, 0]]), jnp.array([[0, 1, 2, 2]])
    steps = jnp.array([[0, 0, 1, 2]])
    mask = jnp.array([[[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 0, 1]]], bool)  # step 2 does not see step 1
    run = lambda la: forward(params, config, ids, positions, mask, lookahead=lookahead_lib.forward_inputs(la, steps))[0]  # noqa: E731
    np.testing.assert_allclose(run(adapter), run(deep), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(lookahead_lib.as_kind(adapter, "deep", config.num_layers)["layers"], deep["layers"])
    trained = {**adapter, **{name: adapter[name] + 0.3 for name in lookahead_lib.ADAPTER_LEAVES if name.endswith("_up")}}
    a, b = run(trained), run(deep)
    np.testing.assert_array_equal(a[:, :2], b[:, :2])
    np.testing.assert_allclose(a[:, 3], b[:, 3], rtol=1e-6, atol=1e-6)
    assert float(jnp.abs(a[:, 2] - b[:, 2]).max()) > 1e-3
    with pytest.raises(lookahead_lib.LookaheadError, match="non-zero adapters"):
        lookahead_lib.as_kind(trained, "deep", config.num_layers)
    bad = {**trained, "head_up": trained["head_up"][..., :3, :]}
    with pytest.raises(lookahead_lib.LookaheadError, match="adapter head_up has shape"):
        lookahead_lib.check(bad, config)


def test_adapters_grow_to_a_higher_rank_without_changing_their_function(tiny):
    """train.adapter_rank above an init file's rank grows its adapters (was silently kept at the file's rank);
    a lower rank is refused, since cutting trained adapters would change the drafts."""
    config, params = tiny
    adapter = lookahead_lib.as_kind(parameters("deep", config, params), "adapter", config.num_layers, 4,
                                    key=jax.random.key(2))
    trained = {**adapter, **{name: adapter[name] + 0.3 for name in lookahead_lib.ADAPTER_LEAVES if name.endswith("_up")}}
    grown = lookahead_lib.as_kind(trained, "adapter", config.num_layers, 6, key=jax.random.key(5))
    assert grown["mlp_down"].shape[-1] == 6 and grown["head_up"].shape[-2] == 6
    lookahead_lib.check(grown, config)
    ids, positions, steps = jnp.array([[3, 9, 0, 0]]), jnp.array([[0, 1, 2, 3]]), jnp.array([[0, 0, 1, 2]])
    mask = jnp.tril(jnp.ones((1, 4, 4), bool))
    run = lambda la: forward(params, config, ids, positions, mask, lookahead=lookahead_lib.forward_inputs(la, steps))[0]  # noqa: E731
    np.testing.assert_allclose(run(grown), run(trained), rtol=1e-6, atol=1e-6)
    assert float(jnp.abs(run(grown) - run(adapter)).max()) > 1e-3  # the trained adapters are kept
    with pytest.raises(lookahead_lib.LookaheadError, match="rank 4: they cannot be cut to rank 2"):
        lookahead_lib.as_kind(trained, "adapter", config.num_layers, 2)


def test_adapters_grow_to_more_steps_without_changing_their_function(tiny):
    """An init file with adapters for [LA]_1 only, trained at L=2 (train.init), gets zero-output adapters for
    [LA]_2 (was: step 2 kept no adapter, so training could not give it one)."""
    config, params = tiny
    adapter = lookahead_lib.as_kind(parameters("deep", config, params), "adapter", config.num_layers, 4, 1,
                                    key=jax.random.key(2))
    trained = {**adapter, **{name: adapter[name] + 0.3 for name in lookahead_lib.ADAPTER_LEAVES if name.endswith("_up")}}
    grown = lookahead_lib.as_kind(trained, "adapter", config.num_layers, 4, num_adapted=2, key=jax.random.key(5))
    assert lookahead_lib.adapter_steps(grown) == 2 and grown["attn_up"].shape == (config.num_layers, 2, 4, 64)
    lookahead_lib.check(grown, config)
    assert lookahead_lib.adapter_steps(lookahead_lib.as_kind(trained, "adapter", config.num_layers, 4)) == 1
    ids, positions, steps = jnp.array([[3, 9, 0, 0]]), jnp.array([[0, 1, 2, 3]]), jnp.array([[0, 0, 1, 2]])
    mask = jnp.tril(jnp.ones((1, 4, 4), bool))
    run = lambda la: forward(params, config, ids, positions, mask, lookahead=lookahead_lib.forward_inputs(la, steps))[0]  # noqa: E731
    np.testing.assert_allclose(run(grown), run(trained), rtol=1e-6, atol=1e-6)
    moved = {**grown, **{name: grown[name].at[..., 1, :, :].add(0.3) for name in lookahead_lib.ADAPTER_LEAVES
                         if name.endswith("_up")}}
    assert float(jnp.abs(run(moved)[:, 3] - run(grown)[:, 3]).max()) > 1e-3  # step 2's new adapters act


@pytest.mark.parametrize("kind", lookahead_lib.KINDS)
@pytest.mark.parametrize("suffix", [".npz", ""])
def test_save_load_and_resolve_every_kind(tiny, tmp_path, kind, suffix):
    config, params = tiny
    saved = parameters(kind, config, params)
    path = tmp_path / f"la{suffix}"
    lookahead_lib.save(path, saved, {"note": "x"})
    loaded = lookahead_lib.load(path, config)
    assert lookahead_lib.kind_of(loaded) == kind
    jax.tree.map(np.testing.assert_array_equal, loaded, saved)
    assert lookahead_lib.read_metadata(path) == {"kind": kind, "note": "x"}
    resolved = lookahead_lib.resolve(str(path), params, config)
    assert resolved.metadata == {"kind": kind, "note": "x"} and resolved.path == path
    cut, source = resolved.prepare(config, 2), resolved.source
    assert lookahead_lib.num_steps(cut) == 2 and source == f"trained ({path})"
    jax.tree.map(np.testing.assert_array_equal, cut, lookahead_lib.truncate(saved, 2))
    with pytest.raises(lookahead_lib.LookaheadError, match=f"hold {L} look-ahead steps; 4 were asked for"):
        resolved.prepare(config, 4)


def test_bad_parameters_give_one_line_errors(tiny, tmp_path):
    config, params = tiny
    deep = parameters("deep", config, params)
    np.savez(tmp_path / "short.npz", lookahead=np.asarray(deep["embeds"]), layers=np.asarray(deep["layers"][:1]))
    with pytest.raises(lookahead_lib.LookaheadError, match=r"per-layer look-ahead vectors have shape \(1, 3, 64\)"):
        lookahead_lib.load(tmp_path / "short.npz", config)
    with pytest.raises(lookahead_lib.LookaheadError, match="no known kind"):
        lookahead_lib.kind_of({"embeds": deep["embeds"]})
    with pytest.raises(lookahead_lib.LookaheadError, match="kind must be one of vectors, deep, adapter"):
        lookahead_lib.as_kind(deep, "lora", config.num_layers)


def test_shipped_metadata_has_the_acceptance_schema():
    """The shipped files' metadata carries what `-L auto` reads, measured by `pass-jax train eval`."""
    for domain in ("text", "code"):
        metadata = json.loads(lookahead_lib.metadata_path(lookahead_lib.bundled_path(domain)).read_text())
        acceptance = metadata["acceptance"]
        assert acceptance["sampling"] == {"temperature": 0.8, "top_k": 10}
        for mode in ("sampled", "greedy"):
            assert sorted(acceptance[mode]) == ["1", "2", "3", "4"]
            for k, rates in acceptance[mode].items():
                assert len(rates) == metadata["num_lookahead"]
                assert all(r is None or 0 <= r <= 1 for r in rates)
            firsts = [acceptance[mode][k][0] for k in "1234"]
            assert firsts == sorted(firsts)  # more candidates never accept less
