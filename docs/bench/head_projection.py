"""Issue 23: the vocabulary projection of k rows (SmolLM2's shape, a random [V, D] table), three ways, each
as a jitted loop of 8 dependent repeats, medians of 7 interleaved rounds: one product (what XLA:CPU runs
as a YNNPACK fusion for k >= 2), k 1-row products (Eigen's matrix-vector path), and a broadcast multiply
and sum laid out [V, k]. Usage (XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type= turns YNNPACK off):

    .venv/bin/python docs/bench/head_projection.py 1,2,3,5 [--hlo]
"""
import time, statistics, sys, jax, jax.numpy as jnp
from jax import lax
V, D, R = 49152, 576, 8
E = jax.random.normal(jax.random.key(0), (V, D)) * 0.02
def loop(proj, k):
    def run(E, h):
        def body(i, c):
            acc, h = c
            lg = proj(h, E)
            return acc + jnp.argmax(lg, -1).sum(), h + 1e-6 * lg[:, :D]
        return lax.fori_loop(0, R, body, (jnp.zeros((), jnp.int32), h))[0]
    return jax.jit(run)
variants = {
  "default h@E.T": lambda h, E: h @ E.T,
  "per-row dots": lambda h, E: jnp.concatenate([h[i:i+1] @ E.T for i in range(h.shape[0])], 0),
  "mul-sum [V,k]": lambda h, E: (E[:, None, :] * h[None, :, :]).sum(-1).T,
}
ks = [int(x) for x in sys.argv[1].split(",")]
fns = {(n, k): loop(f, k) for n, f in variants.items() for k in ks}
hs = {k: jax.random.normal(jax.random.key(k), (k, D)) for k in ks}
for (n, k), f in fns.items(): f(E, hs[k]).block_until_ready()
times = {key: [] for key in fns}
for r in range(7):
    for key, f in fns.items():
        t = time.perf_counter(); f(E, hs[key[1]]).block_until_ready(); times[key].append((time.perf_counter() - t) / R * 1000)
for key, t in times.items(): print(f"{key[0]:16s} k={key[1]}: {statistics.median(t):6.2f} ms")
if "--hlo" in sys.argv:
    print(fns[("default h@E.T", ks[-1])].lower(E, hs[ks[-1]]).compile().as_text().count("ynn_fusion"), "ynn fusions")
