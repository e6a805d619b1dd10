"""Run by tests/test_sharding.py in a subprocess with 8 forced host CPU devices.

For each mesh given on the command line: shard a small LLaMA, run the jitted forward and a greedy
decode, compare with the unsharded single-device result, and check the shardings. On the 2x4 mesh,
also greedy PaSS (two calls, and one call with a tree) with look-ahead vectors trained
to be accepted (tests/_chain_lm.py), against the same decode on one device. Prints one JSON line:
{mesh: {"ok": bool, "error": traceback or None, ...facts}}.
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
from jax.sharding import NamedSharding  # noqa: E402

from _chain_lm import chain_corpus, train_chain_lm  # noqa: E402
from pass_jax.config import load_preset  # noqa: E402
from pass_jax.decoding import DecodeSpec, decode_jit  # noqa: E402
from pass_jax.iteration import Iteration  # noqa: E402
from pass_jax.model import causal_mask, forward, init_params  # noqa: E402
from pass_jax.sampling import GREEDY  # noqa: E402
from pass_jax.sharding import batch_sharding, cache_sharding, make_mesh, shard_params  # noqa: E402

TOL = 1e-5
BATCH, WIDTH, NEW = 8, 8, 8
# dims that 8 divides: 8 heads of 16, 4 KV heads (sharded by a 4-way but not an 8-way tensor axis); with
# Qwen2's q/k/v biases and Qwen3's q/k norms (random, below), so their shardings are exercised too
CONFIG = load_preset("tiny").replace(hidden_size=128, num_heads=8, num_kv_heads=4, intermediate_size=256,
                                    num_layers=1, qkv_bias=True, qk_norm=True)

forward_jit = jax.jit(forward, static_argnums=1)

# PaSS: the same dims with a 16-token chain (16 splits over the tensor axis), greedy, 16 new tokens
PASS_CONFIG = CONFIG.replace(vocab_size=16)
PASS_VARIANTS = {"calls2": dict(num_lookahead=3, calls=2), "calls1-tree": dict(num_lookahead=2, calls=1, draft_tree=(2, 2))}
PASS_NEW = 16
PASS_MESH = "2x4"  # tensor and data axes both split; one mesh only, as each sharded decode compiles for seconds


def pass_spec(variant, mesh=None):
    return DecodeSpec(PASS_CONFIG, Iteration.from_options("pass", **PASS_VARIANTS[variant]), max_new_tokens=PASS_NEW,
                      sampling=GREEDY, eos_ids=(), mesh=mesh)


def spec_text(sharding) -> str:
    return str(tuple(sharding.spec))


def run_pass(mesh, place, chain, pass_reference):
    """Greedy PaSS on the mesh == on one device, token for token; returns the accepted histograms."""
    params, vectors, tokens, prompt_lengths = chain
    sharded = shard_params(params, PASS_CONFIG, mesh)
    hists = {}
    for variant, (ref_tokens, ref_lengths) in pass_reference.items():
        spec = pass_spec(variant, mesh)
        state = decode_jit(sharded, vectors[:spec.iteration.num_lookahead], place(tokens), place(prompt_lengths),
                           jax.random.key(0), spec)
        np.testing.assert_array_equal(np.asarray(state.lengths), ref_lengths)
        np.testing.assert_array_equal(np.asarray(state.tokens), ref_tokens)
        hists[variant] = np.asarray(state.stats.accepted_hist).sum(0).tolist()
    return hists


def run_mesh(name, params, inputs, reference, chain, pass_reference):
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

    spec = DecodeSpec(CONFIG, Iteration.AR, max_new_tokens=NEW, sampling=GREEDY, eos_ids=(), mesh=mesh)
    c_sharding = cache_sharding(CONFIG, mesh, BATCH, spec.buffer_length(WIDTH))  # what prefill should ask for
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
    if name == PASS_MESH:
        facts["pass_accepted_hist"] = run_pass(mesh, place, chain, pass_reference)
    return facts


def main(meshes):
    assert jax.device_count() == 8, jax.devices()
    params = jax.jit(init_params, static_argnums=0)(CONFIG, jax.random.key(0))
    attention = params["layer_0"]["attention"]
    for i, name in enumerate(("bq", "bk", "bv")):  # zeros and ones at init: make them matter
        attention[name] = jax.random.normal(jax.random.key(10 + i), attention[name].shape)
    for i, name in enumerate(("q_norm", "k_norm")):
        attention[name]["scale"] = 1 + 0.3 * jax.random.normal(jax.random.key(20 + i), attention[name]["scale"].shape)
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, CONFIG.vocab_size, size=(BATCH, WIDTH)).astype(np.int32)
    prompt_lengths = rng.integers(2, WIDTH + 1, size=BATCH).astype(np.int32)
    positions = np.broadcast_to(np.arange(WIDTH, dtype=np.int32), (BATCH, WIDTH)).copy()
    mask = np.asarray(causal_mask(jnp.zeros((BATCH,), jnp.int32), WIDTH, WIDTH))
    # the single-device reference
    ref_logits = np.asarray(forward_jit(params, CONFIG, tokens, positions, mask)[0])
    ref_spec = DecodeSpec(CONFIG, Iteration.AR, max_new_tokens=NEW, sampling=GREEDY, eos_ids=())
    ref_state = decode_jit(params, None, tokens, prompt_lengths, jax.random.key(0), ref_spec)
    reference = (ref_logits, np.asarray(ref_state.tokens), np.asarray(ref_state.lengths))
    assert (reference[2] == prompt_lengths + NEW).all()
    # PaSS: a trained chain model, ragged walks of the chain as prompts, one-device reference decodes
    chain_params, vectors = train_chain_lm(PASS_CONFIG, 3, eps=0.1)
    chain_tokens = np.asarray(chain_corpus(jax.random.key(1), PASS_CONFIG.vocab_size, 0.1, BATCH, WIDTH))
    chain = (chain_params, vectors, chain_tokens, prompt_lengths)
    pass_reference = {}
    for variant, settings in PASS_VARIANTS.items():
        state = decode_jit(chain_params, vectors[:settings["num_lookahead"]], chain_tokens, prompt_lengths,
                           jax.random.key(0), pass_spec(variant))
        pass_reference[variant] = (np.asarray(state.tokens), np.asarray(state.lengths))
    results = {}
    for name in meshes:
        try:
            results[name] = {"ok": True, "error": None, **run_mesh(name, params, (tokens, positions, mask, prompt_lengths),
                                                                 reference, chain, pass_reference)}
        except Exception:  # reported per mesh to the test
            results[name] = {"ok": False, "error": traceback.format_exc()}
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1:])
