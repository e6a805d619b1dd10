"""Loading a Hugging Face checkpoint streams it: peak host memory stays near one copy.

A LLaMA with the 7B layout (multi-head attention, untied head, vocab 32000) but a narrow width is
saved as safetensors (float32, ~230 MB), then loaded with `pass_jax.loading.load_model` onto a
1x8 CPU mesh in a subprocess. On CPU the "device" buffers live in host memory too: with 8-way
tensor parallelism they add up to one copy of the parameters, so a loader that first read the
whole checkpoint into host memory would peak at about two copies. The subprocess reports
peak RSS, anonymous and file-backed, from a sampler thread that runs during the load
(safetensors memory-maps the file; the loader opens one handle per tensor so touched pages do not
accumulate in RSS).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MiB = 1024 ** 2

SHAPE = dict(vocab_size=32000, hidden_size=512, intermediate_size=1376, num_hidden_layers=8,
             num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=2048, rms_norm_eps=1e-6,
             tie_word_embeddings=False, initializer_range=0.02)

MEASURE = r"""
import json, resource, sys, threading, time
path = sys.argv[1]
import jax, numpy as np, transformers, safetensors  # noqa: F401
from pass_jax.loading import load_model
from pass_jax.sharding import make_mesh

def status():
    fields = {}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
            fields[key] = int(value.split()[0]) * 1024
    return fields

# everything load_model touches besides the tensors, before the baseline
transformers.AutoConfig.from_pretrained(path)
transformers.AutoTokenizer.from_pretrained(path)
mesh = make_mesh("1x8")
jax.block_until_ready(jax.make_array_from_callback((8, 8), jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "tensor")),
                                                   lambda idx: np.zeros((8, 8), np.float32)[idx]))
base = status()
peaks = dict(base)
running = True
def sample():
    while running:
        for key, value in status().items():
            peaks[key] = max(peaks[key], value)
        time.sleep(0.002)
thread = threading.Thread(target=sample, daemon=True)
thread.start()
start = time.perf_counter()
model = load_model(path, mesh)
jax.block_until_ready(model.params)
seconds = time.perf_counter() - start
running = False
thread.join()
after = status()
leaves = jax.tree.leaves(model.params)
print(json.dumps({
    "seconds": seconds,
    "base": base, "peaks": peaks, "after": after,
    "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    "param_bytes": sum(x.nbytes for x in leaves),
    "device_bytes": sum(s.data.nbytes for x in leaves for s in x.addressable_shards),
    "dtype": str(leaves[0].dtype),
}))
"""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, make_hf_llama):
    path, torch_model = make_hf_llama(tmp_path_factory.mktemp("llama7b_layout"), **SHAPE)
    num_params = sum(p.numel() for p in torch_model.parameters())
    del torch_model
    size = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    return path, num_params, size


@pytest.fixture(scope="module")
def measured(checkpoint):
    path, num_params, size = checkpoint
    assert size >= 200 * MiB and abs(size - 4 * num_params) < MiB  # float32, meaningful against noise
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(path)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads(proc.stdout.strip().splitlines()[-1])
    # peak RSS during the load (sampled every 2 ms) over the RSS before it; ru_maxrss would also count
    # peaks from before the baseline (imports, tokenizer conversion), which a fresh CI run showed
    m["increase"] = m["peaks"]["VmRSS"] - m["base"]["VmRSS"]
    m["anon_increase"] = m["peaks"]["RssAnon"] - m["base"]["RssAnon"]
    m["file_increase"] = m["peaks"]["RssFile"] - m["base"]["RssFile"]
    print(f"\ncheckpoint {size / MiB:.1f} MiB, {num_params:,} params; loaded in {m['seconds']:.1f} s; peak RSS "
          f"+{m['increase'] / MiB:.1f} MiB (anonymous +{m['anon_increase'] / MiB:.1f}, file-backed "
          f"+{m['file_increase'] / MiB:.1f}); device buffers {m['device_bytes'] / MiB:.1f} MiB")
    return m, num_params, size


def test_loader_allocates_one_copy(measured):
    m, num_params, size = measured
    assert m["dtype"] == "float32" and m["param_bytes"] == 4 * num_params
    # 1x8: the device buffers are one copy (plus 8 copies of the small norm vectors)
    assert m["param_bytes"] <= m["device_bytes"] < 1.01 * m["param_bytes"]
    # anonymous memory (everything the loader allocates): that copy plus a tensor or two in flight
    assert m["anon_increase"] < 1.25 * size, (m["anon_increase"] / MiB, size / MiB)


def test_peak_rss_stays_under_one_and_a_half_copies(measured):
    m, _, size = measured
    assert m["increase"] < 1.5 * size, (m["increase"] / MiB, size / MiB)
