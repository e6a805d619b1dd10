"""Run by tests/test_multihost.py: one process of a 2-process CPU run (4 devices each), or the
single-process reference (8 devices). Both build the same global 8-device mesh.

(a) greedy PaSS generation of a batch of 8 sharded over `data`, with a sharded KV cache;
(b) one jitted training step of the look-ahead vectors (`pass_jax.train.loop.make_train_step`: many-anchor
    CE loss, clip + AdamW), the batch sharded over `data`.
Results are gathered to the host with `pass_jax.distributed.gather_to_host`; process 0 writes
`result.npz` and `facts.json` into --out.

usage: _multihost_worker.py --out DIR --mesh 2x4 [--process-id I --num-processes N --port P]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--out", required=True)
parser.add_argument("--mesh", default="2x4")
parser.add_argument("--process-id", type=int)
parser.add_argument("--num-processes", type=int)
parser.add_argument("--port", type=int)
args = parser.parse_args()

import jax  # noqa: E402

from pass_jax.distributed import (gather_to_host, global_array_from_local, initialize_from_env,  # noqa: E402
                                  process_local_batch, replicate)

start = time.perf_counter()
if args.num_processes:
    assert initialize_from_env(f"127.0.0.1:{args.port}", args.num_processes, args.process_id,
                               initialization_timeout=60)
    assert initialize_from_env(), "initialize_from_env must be idempotent"
assert jax.device_count() == 8, jax.devices()

import numpy as np  # noqa: E402

from pass_jax.config import load_preset  # noqa: E402
from pass_jax.decoding import DecodeSpec, decode_jit  # noqa: E402
from pass_jax.iteration import Iteration  # noqa: E402
from pass_jax import generate as generate_module  # noqa: E402
from pass_jax.generate import Generator  # noqa: E402
from pass_jax.loading import LoadedModel  # noqa: E402
from pass_jax.lookahead import init_random  # noqa: E402
from pass_jax.model import param_shapes  # noqa: E402
from pass_jax.sampling import GREEDY  # noqa: E402
from pass_jax.sharding import make_mesh, param_shardings  # noqa: E402
from pass_jax.train.loop import init_state, make_train_step  # noqa: E402
from pass_jax.train.run_config import TrainSection  # noqa: E402

BATCH, WIDTH, NEW, L = 8, 16, 12, 3
SEQ = 32


def place(host, sharding):
    """A host value (identical on every process) -> a global array; each process fills its own shards."""
    host = np.asarray(host)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


config = load_preset("tiny")
mesh = make_mesh(args.mesh)
# Random weights drawn with numpy (the same numbers in every process; no compile), then sharded.
weights_rng = np.random.default_rng(0)
host_params = jax.tree.map(lambda s: (0.1 * weights_rng.standard_normal(s.shape) + (s.ndim == 1)).astype(s.dtype),
                           param_shapes(config))
params = jax.tree.map(place, host_params, param_shardings(config, mesh, host_params))

rng = np.random.default_rng(0)
prompts = rng.integers(3, config.vocab_size, size=(BATCH, WIDTH)).astype(np.int32)
lengths = rng.integers(4, WIDTH + 1, size=BATCH).astype(np.int32)
train_tokens = rng.integers(0, config.vocab_size, size=(BATCH, SEQ)).astype(np.int32)
rows = process_local_batch(BATCH, mesh)

# (a) generation
spec = DecodeSpec(config, Iteration.chain(L, calls=2), max_new_tokens=NEW, sampling=GREEDY, eos_ids=(), mesh=mesh)
lookahead = replicate(init_random(config, L, jax.random.key(1)), mesh)
key = replicate(jax.random.key(0), mesh)
state = decode_jit(params, lookahead, global_array_from_local(prompts[rows], mesh),
                   global_array_from_local(lengths[rows], mesh), key, spec)
generated = gather_to_host({"tokens": state.tokens, "lengths": state.lengths})


class _NoTokenizer:
    eos_token_id = None


# (a') the same generation through the user-facing Generator: process-local rows in, gathered rows out
# Each process times its own chunks; make their clocks disagree outright (process 1 would keep chunks of
# one iteration) so that a chunk length not agreed across processes would hang the loop's collectives.
generate_module.CHUNK_INTERVAL_S = 100.0 if jax.process_index() == 0 else 1e-9
generator = Generator(LoadedModel(config, params, _NoTokenizer(), "random"), mode="pass", num_lookahead=L,
                      lookahead=gather_to_host(lookahead), max_new_tokens=NEW, sampling=GREEDY, batch_size=BATCH,
                      mesh=mesh)
generator_state, _ = generator.generate_ids([list(p[:n]) for p, n in zip(prompts, lengths)], seed=0)

# (b) one training step of the look-ahead vectors
t = TrainSection(num_lookahead=L, batch_size=BATCH, steps=10, lr=1e-2, warmup=0, anchors_per_seq=4, seed=0)
train_state = init_state(LoadedModel(config, params, None, "random"), t, mesh)
before = gather_to_host(train_state["lookahead"])
new_state, metrics = make_train_step(config, t)(params, train_state, global_array_from_local(train_tokens[rows], mesh))
trained = gather_to_host({"lookahead": new_state["lookahead"], "loss": metrics["loss"],
                          "grad_norm": metrics["grad_norm"]})

if jax.process_index() == 0:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "result.npz", tokens=generated["tokens"], lengths=generated["lengths"],
             generator_tokens=generator_state.tokens, generator_lengths=generator_state.lengths,
             lookahead_before=before, **trained)
    facts = {"process_count": jax.process_count(), "device_count": jax.device_count(),
             "local_device_count": jax.local_device_count(), "rows": [rows.start, rows.stop],
             "tokens_spec": str(state.tokens.sharding.spec),
             "cache_spec": str(state.cache[0]["k"].sharding.spec),
             "cpu_collectives": jax.config.jax_cpu_collectives_implementation,
             "seconds": time.perf_counter() - start}
    (out / "facts.json").write_text(json.dumps(facts))
print(f"process {jax.process_index()}: rows {rows.start}:{rows.stop} done in {time.perf_counter() - start:.1f} s",
      flush=True)
if args.num_processes:
    jax.distributed.shutdown()
