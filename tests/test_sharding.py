"""Sharding: mesh parsing and logical rules in-process; sharded forward/decode on 8 CPU devices in a subprocess.

The pytest process has already initialised JAX with one CPU device, so the multi-device checks run
`tests/_sharding_worker.py` under XLA_FLAGS=--xla_force_host_platform_device_count=8.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
from jax.sharding import PartitionSpec as P

from pass_jax.config import ConfigError, load_preset
from pass_jax.sharding import RULES, logical_to_spec, make_mesh, param_shardings, parse_mesh_shape, shard_params

MESHES = ("1x8", "2x4", "8x1")
WORKER = Path(__file__).with_name("_sharding_worker.py")


def fake_mesh(data=1, fsdp=1, tensor=1):
    return types.SimpleNamespace(shape={"data": data, "fsdp": fsdp, "tensor": tensor})


@pytest.mark.parametrize("text, expected", [
    ("1x8", {"data": 1, "fsdp": 1, "tensor": 8}),
    ("2x4", {"data": 2, "fsdp": 1, "tensor": 4}),
    ("8x1", {"data": 8, "fsdp": 1, "tensor": 1}),
    ("8", {"data": 8, "fsdp": 1, "tensor": 1}),
    ("2x2x2", {"data": 2, "fsdp": 2, "tensor": 2}),
    (None, {"data": 8, "fsdp": 1, "tensor": 1}),
    ((4, 2), {"data": 4, "fsdp": 1, "tensor": 2}),
])
def test_parse_mesh_shape(text, expected):
    assert parse_mesh_shape(text, num_devices=8) == expected


@pytest.mark.parametrize("text, message", [
    ("3x3", "needs 9 devices but 8 are available"),
    ("2xfour", "is not of the form DATAxTENSOR"),
    ("1x2x2x2", "must have 1-3 positive sizes"),
    ("0x8", "must have 1-3 positive sizes"),
])
def test_parse_mesh_shape_errors(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_mesh_shape(text, num_devices=8)


def test_logical_rules():
    mesh = fake_mesh(data=2, tensor=4)
    assert logical_to_spec(("embed", "q_heads"), (128, 128), mesh) == P(None, "tensor")
    assert logical_to_spec(("vocab", "embed"), (128, 64), mesh) == P("tensor", None)
    assert logical_to_spec(("cache_batch", "cache_seq", "cache_kv_heads", "head_dim"), (8, 32, 4, 16), mesh) == \
        P("data", None, "tensor", None)
    # a mesh axis that does not divide the dimension is dropped (replicated), not an error
    assert logical_to_spec(("cache_batch", "cache_seq", "cache_kv_heads", "head_dim"), (3, 32, 3, 16), mesh) == \
        P(None, None, None, None)
    # batch over both data-parallel axes; fsdp shards the embedding dimension
    mesh3 = fake_mesh(data=2, fsdp=2, tensor=2)
    assert logical_to_spec(("batch", None), (8, 5), mesh3) == P(("data", "fsdp"), None)
    assert logical_to_spec(("embed", "mlp"), (64, 128), mesh3) == P("fsdp", "tensor")
    # one mesh axis is used at most once per array
    assert logical_to_spec(("q_heads", "mlp"), (64, 64), mesh) == P("tensor", None)
    assert {name for name, _ in RULES} >= {"batch", "vocab", "embed", "q_heads", "kv_heads", "mlp",
                                           "cache_batch", "cache_kv_heads", "norm"}


def test_param_shardings_cover_every_param(tiny):
    import jax

    config, params = tiny
    mesh = make_mesh()  # the single device of this process: everything replicated
    assert dict(mesh.shape) == {"data": jax.device_count(), "fsdp": 1, "tensor": 1}
    shardings = param_shardings(config, mesh, params)
    assert jax.tree.structure(shardings) == jax.tree.structure(params)
    sharded = shard_params(params, config, mesh)
    for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(params)):
        assert a.shape == b.shape and (a == b).all()


@pytest.fixture(scope="module")
def worker_results():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
    env["JAX_PLATFORMS"] = "cpu"
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, str(WORKER), *MESHES], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"worker failed:\n{proc.stderr[-5000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mesh", MESHES)
def test_sharded_forward_and_decode_match_single_device(worker_results, mesh):
    result = worker_results[mesh]
    assert result["ok"], result["error"]
    data, tensor = (int(s) for s in mesh.split("x"))
    assert result["mesh_shape"] == {"data": data, "fsdp": 1, "tensor": tensor}
    assert result["logits_max_diff"] < 1e-5
    sharded = result["sharded_params"]
    if tensor > 1:  # tensor parallelism really splits the weights
        assert sharded["['layer_0']['attention']['wq']"] == ["(None, 'tensor')", [128, 128], [128, 128 // tensor]]
        assert sharded["['layer_0']['mlp']['w_down']"] == ["('tensor', None)", [256, 128], [256 // tensor, 128]]
        assert sharded["['embedding']"][0] == "('tensor', None)"
        assert result["logits_spec"].endswith("'tensor')")  # the vocabulary dimension stays split
    else:  # pure data parallelism: weights replicated, batch split
        assert sharded == {}
    if data > 1:
        assert result["prompt_spec"] == "('data', None)"
    # the decode cache keeps the requested sharding: KV heads split only where the tensor axis divides 4
    if mesh == "2x4":  # greedy PaSS sharded == one device (checked in the worker), with drafts really accepted
        hists = result["pass_accepted_hist"]  # measured: calls2 [0, 0, 7, 22], calls1-tree [0, 0, 40] (A = 0..L)
        print(mesh, "PaSS accepted_hist", hists)
        assert set(hists) == {"calls2", "calls1-tree"} and all(sum(h[2:]) >= 1 for h in hists.values()), hists
    kv_axis = "'tensor'" if tensor in (2, 4) else "None"
    batch_axis = "'data'" if data > 1 else "None"
    assert result["cache_spec_requested"] == f"({batch_axis}, None, {kv_axis}, None)"
