"""The cost of the sampling steps on one row of SmolLM2's vocabulary (V = 49152), each as a jitted loop of
200 repeats: what a decode iteration pays per distribution and per drawn token. Usage:

    .venv/bin/python docs/bench/sampling_cost.py
"""
import time, statistics
import jax, jax.numpy as jnp
from jax import lax
from pass_jax.sampling import PAPER, probabilities, sample
V, N = 49152, 200
key = jax.random.key(0)
x0 = jax.random.normal(key, (1, V)) * 3
def timed(name, fn):
    f = jax.jit(lambda x: lax.fori_loop(0, N, lambda i, c: (c[0] + 1e-6 * fn(i, c[0]).astype(jnp.float32).sum(), c[1]), (x, 0))[0])
    f(x0).block_until_ready(); ts = []
    for _ in range(9):
        t = time.perf_counter(); f(x0).block_until_ready(); ts.append(time.perf_counter() - t)
    print(f"{name:40s} {1000 * statistics.median(ts) / N:.3f} ms", flush=True)
timed("nothing (loop + add)", lambda i, x: x[:, :1])
timed("top_k 10 (values+indices)", lambda i, x: lax.top_k(x, 10)[0])
timed("probabilities (top_k, softmax, scatter)", lambda i, x: probabilities(x, PAPER))
timed("softmax over V", lambda i, x: jax.nn.softmax(x))
timed("sample: categorical over V", lambda i, x: sample(jax.random.fold_in(key, i), jax.nn.softmax(x)))
timed("uniform over V", lambda i, x: jax.random.uniform(jax.random.fold_in(key, i), (1, V)))
timed("categorical over top-10 only", lambda i, x: jax.random.categorical(jax.random.fold_in(key, i), lax.top_k(x, 10)[0]))
