"""Two processes on loopback (4 CPU devices each) give the same results as one process with 8.

`tests/_multihost_worker.py` runs (a) greedy PaSS generation of a batch of 8 sharded over `data`
and (b) one training step of the look-ahead vectors (pass_jax.train.loop's jitted step). The reference and
the two workers run side by side; any failure or the deadline kills every child.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pass_jax import distributed

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).with_name("_multihost_worker.py")
DEADLINE_S = 480
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker_env(devices: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PASS_JAX_", "JAX_COORDINATOR"))}
    # Low XLA:CPU optimisation halves the compile time of the decode loop and the train step (the
    # test's cost); every process uses the same flags, so the comparison is unaffected.
    flags = f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}"
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=flags,
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return env


def run_all(commands: list[tuple[list[str], dict, Path]]) -> None:
    """Start every command; return when all exited 0; on a failure or the deadline kill the rest and fail."""
    procs = []
    try:
        for argv, env, log in commands:
            procs.append((subprocess.Popen([sys.executable, str(WORKER), *argv], cwd=ROOT, env=env,
                                           stdout=log.open("w"), stderr=subprocess.STDOUT), log))
        deadline = time.monotonic() + DEADLINE_S
        while any(p.poll() is None for p, _ in procs):
            failed = [(p, log) for p, log in procs if p.poll() not in (None, 0)]
            if failed or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        for p, _ in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    problems = [f"{log.name}: exit {p.returncode}\n{log.read_text()[-3000:]}" for p, log in procs if p.returncode]
    assert not problems, "\n\n".join(problems)


def test_two_processes_match_one_process(tmp_path):
    ref, multi = tmp_path / "one_process", tmp_path / "two_processes"
    port = str(free_port())
    common = ["--mesh", "2x4"]
    run_all([
        (["--out", str(ref), *common], worker_env(8), tmp_path / "reference.log"),
        *[(["--out", str(multi), *common, "--process-id", str(i), "--num-processes", "2", "--port", port],
           worker_env(4), tmp_path / f"process{i}.log") for i in range(2)],
    ])
    facts_ref = json.loads((ref / "facts.json").read_text())
    facts = json.loads((multi / "facts.json").read_text())
    assert (facts_ref["process_count"], facts_ref["device_count"]) == (1, 8)
    assert (facts["process_count"], facts["device_count"], facts["local_device_count"]) == (2, 8, 4)
    assert facts["rows"] == [0, 4] and facts_ref["rows"] == [0, 8]  # process 0 fed rows 0-3 only
    assert facts["tokens_spec"] == facts_ref["tokens_spec"] == "P('data',)"
    a, b = np.load(ref / "result.npz"), np.load(multi / "result.npz")
    # (a) generation: identical tokens and lengths
    assert a["tokens"].shape == (8, 33)
    np.testing.assert_array_equal(a["lengths"], b["lengths"])
    np.testing.assert_array_equal(a["tokens"], b["tokens"])
    # the Generator edge (process-local prompt rows, gathered outputs) gives the same rows
    for result in (a, b):
        np.testing.assert_array_equal(result["generator_lengths"], result["lengths"])
        for row, length in enumerate(result["lengths"]):
            np.testing.assert_array_equal(result["generator_tokens"][row, :length], result["tokens"][row, :length])
    # (b) training: the same update (cross-process reductions may round differently)
    np.testing.assert_allclose(a["lookahead_before"], b["lookahead_before"], atol=1e-7)
    assert np.abs(a["lookahead"] - a["lookahead_before"]).max() > 1e-3  # the step did move the vectors
    np.testing.assert_allclose(b["lookahead"], a["lookahead"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-5)
    np.testing.assert_allclose(b["grad_norm"], a["grad_norm"], rtol=1e-5)


# --- the helpers in this (single) process --------------------------------------------------------

def test_initialize_from_env_is_off_by_default():
    assert distributed.initialize_from_env(env={}) is False
    assert distributed.initialize_from_env(env={"PASS_JAX_DISTRIBUTED": "0"}) is False
    with pytest.raises(distributed.DistributedError, match="PASS_JAX_NUM_PROCESSES='two' is not an integer"):
        distributed.initialize_from_env(env={"PASS_JAX_NUM_PROCESSES": "two"})
    with pytest.raises(distributed.DistributedError, match="outside 0..1"):
        distributed.initialize_from_env("127.0.0.1:1", 2, 5, env={})


def test_single_process_helpers():
    import jax
    from jax.sharding import PartitionSpec as P

    from pass_jax.sharding import make_mesh

    mesh = make_mesh()
    assert distributed.process_local_batch(8) == slice(0, 8)
    assert distributed.process_local_batch(8, mesh) == slice(0, 8)
    local = np.arange(24, dtype=np.int32).reshape(8, 3)
    array = distributed.global_array_from_local(local, mesh)
    assert array.shape == (8, 3) and array.is_fully_addressable
    np.testing.assert_array_equal(distributed.gather_to_host(array), local)
    key, vectors = distributed.replicate((jax.random.key(3), np.ones((2, 4), np.float32)), mesh)
    assert jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    np.testing.assert_array_equal(jax.random.key_data(key), jax.random.key_data(jax.random.key(3)))
    assert vectors.sharding.spec == P()
