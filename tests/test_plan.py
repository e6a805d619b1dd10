"""`pass-jax plan`: per-device bytes from the real shardings, fit verdicts, the recommended mesh,
the CLI table, and a check against what 8 CPU devices really allocate for the tiny model."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest
from jax.sharding import AbstractMesh

from pass_jax import cli
from pass_jax.config import load_preset
from pass_jax.decoding import DecodeSpec
from pass_jax.iteration import Iteration
from pass_jax.model import param_shapes
from pass_jax.plan import DEVICES, GiB, USABLE, _fits, factorisations, plan
from pass_jax.sharding import MESH_AXES, cache_sharding, param_shardings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def llama7b():
    return load_preset("llama1_7b")


@pytest.fixture(scope="module")
def plan_7b_2x4(llama7b):
    return plan(llama7b, "2x4", batch=8, max_len=2048, dtype="bfloat16")


def test_llama7b_param_bytes_equal_the_real_sharded_shapes(llama7b, plan_7b_2x4):
    mesh = AbstractMesh((2, 1, 4), MESH_AXES)
    shapes = param_shapes(llama7b)
    shardings = param_shardings(llama7b, mesh, shapes)
    expected = sum(math.prod(sh.shard_shape(s.shape)) * s.dtype.itemsize
                   for s, sh in zip(jax.tree.leaves(shapes), jax.tree.leaves(shardings)))
    assert plan_7b_2x4["per_device"]["params"] == expected
    # by hand: every matrix is split 4 ways by `tensor` (32 heads, 11008, 32000 all divide), norms replicated
    norms = (2 * llama7b.num_layers + 1) * llama7b.hidden_size
    assert expected == (llama7b.num_params() - norms) * 2 // 4 + norms * 2
    shards = plan_7b_2x4["param_shards"]
    assert shards["['layer_0']['attention']['wq']"]["shard_shape"] == (4096, 1024)
    assert shards["['embedding']"]["shard_shape"] == (8000, 4096)
    assert shards["['final_norm']['scale']"]["shard_shape"] == (4096,)


def test_llama7b_cache_bytes(llama7b, plan_7b_2x4):
    # the default iteration (one call, tree 4,2, context 4) is 51 positions wide: 2048 + 51 + 1 slots
    length = DecodeSpec(llama7b, max_new_tokens=2048 - 16).buffer_length(16)
    assert plan_7b_2x4["cache_length"] == length == 2100
    sharding = cache_sharding(llama7b, AbstractMesh((2, 1, 4), MESH_AXES), 8, length)
    per_array = math.prod(sharding.shard_shape((8, length, 32, 128))) * 2
    assert per_array == 4 * length * 8 * 128 * 2  # batch over data=2, heads over tensor=4
    assert plan_7b_2x4["per_device"]["kv_cache"] == 2 * 32 * per_array
    dev = plan_7b_2x4["per_device"]
    assert dev["total"] == dev["params"] + dev["kv_cache"] + dev["lookahead"] + dev["optimizer"] + \
        dev["activations_estimate"]
    assert dev["optimizer"] == 0 and dev["lookahead"] == 2 * 4096 * 2  # L = 2 vectors in bfloat16


def test_train_counts_adamw_for_the_lookahead_vectors_only(llama7b):
    p = plan(llama7b, "2x2", batch=8, max_len=512, iteration=Iteration.chain(8), dtype="bfloat16", train=True)
    assert p["per_device"]["kv_cache"] == 0
    assert p["per_device"]["lookahead"] == 8 * 4096 * 4  # float32 vectors
    assert p["per_device"]["optimizer"] == 3 * 8 * 4096 * 4  # two moments and the gradient
    assert p["activation_detail"]["tokens"] == 512 + 32 * 8


def test_lookahead_memory_counts_every_kind(llama7b):
    """deep adds one vector per layer and step; adapter adds down/up per layer (attention, MLP) and the head's."""
    d, layers = 4096, 32
    by_kind = {kind: plan(llama7b, "1", batch=1, max_len=64, iteration=Iteration.chain(4), dtype="float32",
                          lookahead_kind=kind, adapter_rank=8, recommend=False)["per_device"]["lookahead"]
               for kind in ("vectors", "deep", "adapter")}
    assert by_kind["vectors"] == 4 * d * 4
    assert by_kind["deep"] == (1 + layers) * 4 * d * 4
    assert by_kind["adapter"] == by_kind["deep"] + (4 * layers + 2) * 4 * d * 8 * 4


def test_cli_sizes_the_cache_for_the_iteration_it_names(capsys):
    """plan reads -L/--calls/--draft-tree/--mode as generate does: the KV buffer is max_len + the widest call + 1."""
    for argv, width in ((["-L", "4", "--calls", "2"], 5), ([], 51), (["--draft-tree", "3,1,1"], 10 * 4),
                        (["--mode", "ar"], 1), (["-L", "0"], 1)):
        code = cli.main(["plan", "--config", "tiny", "--mesh", "1", "--batch", "1", "--max-len", "64", "--json", *argv])
        out, err = capsys.readouterr()
        assert code == 0, err
        assert json.loads(out)["cache_length"] == 64 + width + 1, argv


def test_fit_verdicts():
    usable = {name: int(memory * USABLE) for name, memory in DEVICES}
    exact = _fits(usable["TPU v5e"])
    assert exact["TPU v5e"]["fits"] and not _fits(usable["TPU v5e"] + 1)["TPU v5e"]["fits"]
    # 7B in float32 on one device, batch 8 x 2048: 25 GiB of weights + 16 GiB of cache -> only the 80 GB parts
    big = plan("llama1_7b", "1", batch=8, max_len=2048, dtype="float32")
    assert big["per_device"]["params"] == load_preset("llama1_7b").num_params() * 4
    assert {name for name, row in big["fits"].items() if row["fits"]} == {"A100-80GB", "H100-80GB"}
    # 7B in bfloat16 on 8 devices (1x8): fits everything
    small = plan("llama1_7b", "1x8", batch=8, max_len=2048, dtype="bfloat16")
    assert all(row["fits"] for row in small["fits"].values())
    for p in (big, small):
        for name, row in p["fits"].items():
            assert row["fits"] == (p["per_device"]["total"] <= dict(DEVICES)[name] * USABLE)


def test_recommended_mesh_is_the_most_data_parallel_that_fits(llama7b):
    p = plan(llama7b, "2x4", batch=8, max_len=2048, dtype="bfloat16")
    rec = p["recommended"]
    budget = min(memory for _, memory in DEVICES) * USABLE
    assert rec["budget_device"] == "TPU v5e" and rec["total_bytes"] <= budget
    for shape in factorisations(8):
        if (shape["data"], -shape["fsdp"]) > (rec["mesh_shape"]["data"], -rec["mesh_shape"]["fsdp"]) and \
                8 % (shape["data"] * shape["fsdp"]) == 0:
            other = plan(llama7b, shape, batch=8, max_len=2048, dtype="bfloat16", recommend=False)
            assert other["per_device"]["total"] > budget, shape
    # the tiny model fits anywhere: all devices on data
    assert plan("tiny", "2x4", batch=8, max_len=64)["recommended"]["mesh"] == "8x1"
    # batch 1 cannot be split: tensor parallelism only
    assert plan("tiny", "2x4", batch=1, max_len=64)["recommended"]["mesh"] == "1x8"
    # no mesh: plan the recommended one of --devices
    assert plan("tiny", None, batch=8, max_len=64, num_devices=4)["mesh"] == "4x1"


def test_cli_prints_the_table(capsys):
    code = cli.main(["plan", "--config", "llama1_7b", "--mesh", "2x4", "--batch", "8", "--max-len", "2048"])
    out, err = capsys.readouterr()
    assert code == 0, err
    for text in ("mesh 2x4 = data 2 x fsdp 1 x tensor 4", "parameters (sharded)", "3.14 GiB", "KV cache (8 x 2100", "tree 4,2, 1 call",
                 "activations (ESTIMATE)", "TPU v4", "TPU v5e", "A100-40GB", "A100-80GB", "H100-80GB",
                 "recommended mesh for 8 devices"):
        assert text in out, out
    code = cli.main(["plan", "--config", "tiny", "--devices", "4", "--batch", "4", "--max-len", "64", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    data = json.loads(out)
    assert data["mesh"] == data["recommended"]["mesh"] == "4x1" and data["per_device"]["total"] > 0


@pytest.mark.parametrize("argv, message", [
    (["--mesh", "2xfour"], "is not of the form DATAxTENSOR"),
    (["--mesh", "0x4"], "must have 1-3 positive sizes"),
    (["--mesh", "1x2x2x2"], "must have 1-3 positive sizes"),
    (["--mesh", "2x4", "--devices", "4"], "--mesh 2x4 has 8 devices but --devices is 4"),
    ([], "give --mesh"),
])
def test_cli_bad_mesh_is_a_clear_error(capsys, argv, message):
    code = cli.main(["plan", "--config", "tiny", "--batch", "8", "--max-len", "64", *argv])
    out, err = capsys.readouterr()
    assert code == 2 and "Traceback" not in err
    assert "pass-jax plan: error:" in err and message in err, err


REAL_ALLOCATION = r"""
import json, sys
import jax, numpy as np
from pass_jax.config import load_preset
from pass_jax.model import init_cache, param_shapes
from pass_jax.iteration import Iteration
from pass_jax.plan import plan
from pass_jax.sharding import cache_sharding, make_mesh, shard_params
assert jax.device_count() == 8
config = load_preset("tiny")
params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), param_shapes(config))  # values do not matter
device0 = jax.devices()[0]
on_device0 = lambda tree: sum(s.data.nbytes for x in jax.tree.leaves(tree) for s in x.addressable_shards
                              if s.device == device0)
out = {}
for name in sys.argv[1:]:
    mesh = make_mesh(name)
    p = plan(config, name, batch=8, max_len=40, iteration=Iteration.chain(4, calls=2), recommend=False)
    cache = jax.device_put(init_cache(config, 8, p["cache_length"]),
                           cache_sharding(config, mesh, 8, p["cache_length"]))
    out[name] = {"plan_params": p["per_device"]["params"], "real_params": on_device0(shard_params(params, config, mesh)),
                 "plan_cache": p["per_device"]["kv_cache"], "real_cache": on_device0(cache),
                 "total_params": sum(x.nbytes for x in jax.tree.leaves(params))}
print(json.dumps(out))
"""


def test_plan_matches_the_real_allocation_of_the_tiny_model():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    meshes = ("2x4", "1x8", "8x1", "2x2x2")
    proc = subprocess.run([sys.executable, "-c", REAL_ALLOCATION, *meshes], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for name in meshes:
        row = result[name]
        assert row["plan_params"] == row["real_params"], (name, row)
        assert row["plan_cache"] == row["real_cache"], (name, row)
    # the meshes differ: 8-way data replicates everything, 1x8 splits the weights
    assert result["8x1"]["real_params"] == result["8x1"]["total_params"]
    assert result["1x8"]["real_params"] < result["2x4"]["real_params"] < result["8x1"]["real_params"]
