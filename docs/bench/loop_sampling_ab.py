"""Decode-loop iteration time with the old sampling (one Gumbel variate per vocabulary token: `support`
forced to None) and the new (among the top-k tokens), compiled in one process, timed in interleaved
rounds (order reversed every other round), N iterations from one prefill of a 200-token prompt, the
shipped code parameters, paper sampling. Usage:

    .venv/bin/python docs/bench/loop_sampling_ab.py 24 "ar;L=1, 1 call;L=1, 2 calls;tree 4,2, 1 call"
"""
import sys, time, statistics
import jax, jax.numpy as jnp, numpy as np
from pass_jax.loading import load_model
from pass_jax.generate import Generator, resolve_lookahead
from pass_jax.iteration import Iteration
from pass_jax.sampling import PAPER, SamplingConfig
from pass_jax import sampling as sampling_lib

model = load_model("smollm2-135m"); cfg = model.config
N = int(sys.argv[1]); labels = sys.argv[2].split(";")
tok = model.tokenizer
text = open(sys.argv[3]).read() if len(sys.argv) > 3 else "def fibonacci(n):\n    " * 20
ids = tok(text)["input_ids"][:200]
width = 256
tokens = jnp.asarray(np.pad(np.asarray([ids], np.int32), ((0, 0), (0, width - len(ids)))))
lengths = jnp.asarray([len(ids)], jnp.int32)
real_support = SamplingConfig.support

def build(it):
    la = None if it.mode == "ar" else resolve_lookahead(model, "code", num_lookahead=it.num_lookahead)
    g = Generator(model, it, lookahead=la, max_new_tokens=4 * N + 8, sampling=PAPER)
    args = (model.params, g.lookahead, tokens, lengths, jax.random.key(1))
    return g, args, g._executables(1, width, args)

runs = {}
for variant in ("dense", "support"):
    SamplingConfig.support = property(lambda self: None) if variant == "dense" else real_support
    jax.clear_caches()
    for label in labels:
        runs[(label, variant)] = build(Iteration.parse(label))
SamplingConfig.support = real_support
times = {k: [] for k in runs}; toks = {}
for r in range(5):
    for k in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
        g, args, (prefill, steps) = runs[k]
        s = prefill(*args); jax.block_until_ready(s)
        t = time.perf_counter()
        s = steps(model.params, g.lookahead, s, lengths, np.int32(N)); jax.block_until_ready(s.lengths)
        times[k].append(time.perf_counter() - t)
        toks[k] = (int(s.stats.new_tokens[0]) - 1) / N
for k in runs:
    print(f"{k[0]:18s} {k[1]:8s} {1000 * statistics.median(times[k]) / N:6.1f} ms/iteration  {toks[k]:.2f} tokens/iteration", flush=True)
