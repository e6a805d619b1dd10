"""Decode-loop iteration time of two versions of one loop change, compiled in one process, timed in
interleaved rounds (order reversed every other round), N iterations from one prefill of a 200-token
prompt, the shipped code parameters, paper sampling. The changes:

- sampling: one Gumbel variate per vocabulary token (`support` forced to None: "dense") against drawing
  among the top-k tokens ("support");
- projection: every projection of several rows onto the vocabulary as one product ("fused":
  `model.ROWWISE_PROJECTION_MAX` = 0) against 2 rows as two 1-row products ("rowwise").

Usage:

    .venv/bin/python docs/bench/loop_ab.py sampling 24 "ar;L=1, 1 call;L=1, 2 calls;tree 4,2, 1 call"
    .venv/bin/python docs/bench/loop_ab.py projection 24 "ar;L=1, 1 call;L=1, 2 calls"
"""
import sys, time, statistics
import jax, numpy as np
from _steps import compiled_loop
from pass_jax.loading import load_model
from pass_jax.iteration import Iteration
from pass_jax.sampling import PAPER, SamplingConfig
from pass_jax import model as model_lib

change, N, labels = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(";")
model = load_model("smollm2-135m"); cfg = model.config
tok = model.tokenizer
text = open(sys.argv[4]).read() if len(sys.argv) > 4 else "def fibonacci(n):\n    " * 20
ids = tok(text)["input_ids"][:200]
real_support, real_rowwise = SamplingConfig.support, model_lib.ROWWISE_PROJECTION_MAX


def use(variant):
    """Set what the variant's traced code reads (restored by use(None))."""
    SamplingConfig.support = property(lambda self: None) if variant == "dense" else real_support
    model_lib.ROWWISE_PROJECTION_MAX = 0 if variant == "fused" else real_rowwise


VARIANTS = {"sampling": ("dense", "support"), "projection": ("fused", "rowwise")}[change]


runs = {}
for variant in VARIANTS:
    use(variant)
    jax.clear_caches()
    for label in labels:
        runs[(label, variant)] = compiled_loop(model, Iteration.parse(label), PAPER, [ids], 4 * N + 8)
use(None)
times = {k: [] for k in runs}; toks = {}
for r in range(5):
    for k in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
        g, prefill, steps, args, lengths = runs[k]
        s = prefill(*args); jax.block_until_ready(s)
        t = time.perf_counter()
        s = steps(model.params, g.lookahead, s, lengths, np.int32(N)); jax.block_until_ready(s.lengths)
        times[k].append(time.perf_counter() - t)
        toks[k] = (int(s.stats.new_tokens[0]) - 1) / N
for k in runs:
    print(f"{k[0]:24s} {k[1]:8s} {1000 * statistics.median(times[k]) / N:6.1f} ms/iteration  {toks[k]:.2f} tokens/iteration", flush=True)
