"""Run by tests/test_sharding.py in a subprocess with 8 forced host CPU devices.

For each mesh given on the command line: shard a small LLaMA, run the jitted forward and a greedy
decode, compare with the unsharded single-device result, and check the shardings. Prints one JSON
line: {mesh: {"ok": bool, "error": traceback or None, ...facts}}.
"""
from __future__ import annotations

import json
import math
import os
import sys
import traceback

assert "--xla_force_host_platform_device_count=8" in os.environ.get("XLA_FLAGS", ""), "run with 8 host devices"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from pass_jax.config import load_preset  # noqa: E402
from pass_jax.decoding import DecodeSpec, decode_jit  # noqa: E402
from pass_jax.model import causal_mask, forward, init_params  # noqa: E402
from pass_jax.sampling import GREEDY  # noqa: E402
from pass_jax.sharding import batch_sharding, cache_sharding, make_mesh, shard_params  # noqa: E402

TOL = 1e-5
BATCH, WIDTH, NEW = 8, 8, 8
# dims that 8 divides: 8 heads of 16, 4 KV heads (sharded by a 4-way but not an 8-way tensor axis)
CONFIG = load_preset("tiny").replace(hidden_size=128, num_heads=8, num_kv_heads=4, intermediate_size=256,
                                    num_layers=1)

forward_jit = jax.jit(forward, static_argnums=1)


def spec_text(sharding) -> str:
    return str(tuple(sharding.spec))


def run_mesh(name, params, inputs, reference):
    tokens, positions, mask, prompt_lengths = inputs
    ref_logits, ref_tokens, ref_lengths = reference
    mesh = make_mesh(name)
    facts = {"mesh_shape": dict(mesh.shape)}

    sharded = shard_params(params, CONFIG, mesh)
    leaves = jax.tree_util.tree_leaves_with_path(sharded)
    split = {}
    for path, leaf in leaves:
        assert isinstance(leaf.sharding, NamedSharding) and leaf.sharding.mesh == mesh, path
        assert len(leaf.addressable_shards) == 8, path
        if any(axis is not None for axis in leaf.sharding.spec):
            shard_shape = leaf.addressable_shards[0].data.shape
            assert math.prod(shard_shape) < math.prod(leaf.shape), (path, shard_shape)
            assert leaf.sharding.shard_shape(leaf.shape) == shard_shape
            split[jax.tree_util.keystr(path)] = [spec_text(leaf.sharding), list(leaf.shape), list(shard_shape)]
    facts["sharded_params"] = split
    for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    place = lambda x: jax.device_put(x, batch_sharding(mesh, x.shape))  # noqa: E731
    logits, _ = forward_jit(sharded, CONFIG, place(tokens), place(positions), place(mask))
    assert isinstance(logits.sharding, NamedSharding) and logits.sharding.mesh == mesh
    facts["logits_spec"] = spec_text(logits.sharding)
    facts["logits_max_diff"] = float(np.abs(np.asarray(logits) - ref_logits).max())
    np.testing.assert_allclose(np.asarray(logits), ref_logits, atol=TOL, rtol=0)

    base = DecodeSpec(CONFIG, mode="ar", max_new_tokens=NEW, sampling=GREEDY, eos_ids=())
    c_sharding = cache_sharding(CONFIG, mesh, BATCH, base.buffer_length(WIDTH))
    spec = DecodeSpec(CONFIG, mode="ar", max_new_tokens=NEW, sampling=GREEDY, eos_ids=(), cache_sharding=c_sharding)
    prompt = place(tokens)
    facts["prompt_spec"] = spec_text(prompt.sharding)
    state = decode_jit(sharded, None, prompt, place(prompt_lengths), jax.random.key(0), spec)
    np.testing.assert_array_equal(np.asarray(state.lengths), ref_lengths)
    np.testing.assert_array_equal(np.asarray(state.tokens), ref_tokens)
    facts["cache_spec_requested"] = spec_text(c_sharding)
    facts["cache_specs"] = sorted({spec_text(layer[kv].sharding) for layer in state.cache for kv in ("k", "v")})
    for layer in state.cache:
        for kv in ("k", "v"):
            sh = layer[kv].sharding
            assert isinstance(sh, NamedSharding) and sh.mesh == mesh, sh
            assert sh.is_equivalent_to(c_sharding, layer[kv].ndim), (sh, c_sharding)
    assert isinstance(state.tokens.sharding, NamedSharding) and state.tokens.sharding.mesh == mesh
    return facts


def main(meshes):
    assert jax.device_count() == 8, jax.devices()
    params = jax.jit(init_params, static_argnums=0)(CONFIG, jax.random.key(0))
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, CONFIG.vocab_size, size=(BATCH, WIDTH)).astype(np.int32)
    prompt_lengths = rng.integers(2, WIDTH + 1, size=BATCH).astype(np.int32)
    positions = np.broadcast_to(np.arange(WIDTH, dtype=np.int32), (BATCH, WIDTH)).copy()
    mask = np.asarray(causal_mask(jnp.zeros((BATCH,), jnp.int32), WIDTH, WIDTH))
    # the single-device reference
    ref_logits = np.asarray(forward_jit(params, CONFIG, tokens, positions, mask)[0])
    ref_spec = DecodeSpec(CONFIG, mode="ar", max_new_tokens=NEW, sampling=GREEDY, eos_ids=())
    ref_state = decode_jit(params, None, tokens, prompt_lengths, jax.random.key(0), ref_spec)
    reference = (ref_logits, np.asarray(ref_state.tokens), np.asarray(ref_state.lengths))
    assert (reference[2] == prompt_lengths + NEW).all()
    results = {}
    for name in meshes:
        try:
            results[name] = {"ok": True, "error": None, **run_mesh(name, params, (tokens, positions, mask, prompt_lengths),
                                                                 reference)}
        except Exception:  # reported per mesh to the test
            results[name] = {"ok": False, "error": traceback.format_exc()}
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1:])
