"""Issue 23's per-iteration breakdown: each setting's decode loop (`decode_steps`, N iterations from one
prefill of a 200-token prompt, the shipped code parameters, paper sampling) against a while loop of
only its model calls (the same widths and projected positions, argmax instead of sampling), so the
difference is the loop's own work. Usage:

    .venv/bin/python docs/bench/loop_breakdown.py 40 all        # or a comma list: ar,L1,L2,tree
"""
import sys, time, statistics
import jax, jax.numpy as jnp, numpy as np
from jax import lax
from pass_jax.loading import load_model
from _steps import WIDTH, compiled_loop
from pass_jax.iteration import Iteration
from pass_jax.sampling import PAPER, GREEDY
from pass_jax import decoding
from pass_jax.model import forward, causal_mask, lm_head, gather_positions

model = load_model("smollm2-135m")
cfg = model.config
N = int(sys.argv[1]) if len(sys.argv) > 1 else 40
sampling = GREEDY if "greedy" in sys.argv else PAPER
prompt = [[(7 * i + 3) % cfg.vocab_size for i in range(200)]]

def loop_ms(it):
    g, prefill, steps, args, lengths = compiled_loop(model, it, sampling, prompt, 4 * N + 8)
    times = []
    for r in range(5):
        s = prefill(*args); jax.block_until_ready(s)
        t = time.perf_counter()
        s = steps(model.params, g.lookahead, s, lengths, np.int32(N))
        jax.block_until_ready(s.lengths)
        times.append(time.perf_counter() - t)
    it_ms = 1000 * statistics.median(times) / N
    new = int(s.stats.new_tokens[0]) - 1
    return it_ms, new / N, g.spec.buffer_length(WIDTH)

def call_loop_ms(width, projected, length, N=N):
    """forward of `width` tokens + lm_head at `projected` positions, N times in a while loop with the cache carried."""
    from pass_jax.model import init_cache
    def run(params, cache):
        def body(c):
            cache, i, acc = c
            idx = jnp.full((1,), 200, jnp.int32) + i % 4
            toks = jnp.full((1, width), 5, jnp.int32) + acc[:, :1]
            h, cache = forward(params, cfg, toks, idx[:, None] + jnp.arange(width)[None], causal_mask(idx, width, length),
                               cache=cache, write_index=idx, hidden_only=True)
            lg = lm_head(params, cfg, h[:, :projected])
            return cache, i + 1, jnp.argmax(lg, -1).astype(jnp.int32)
        return lax.while_loop(lambda c: c[1] < N, body, (cache, 0, jnp.zeros((1, projected), jnp.int32)))[2]
    f = jax.jit(run)
    cache = init_cache(cfg, 1, length)
    f(model.params, cache).block_until_ready()
    ts = []
    for r in range(5):
        t = time.perf_counter(); f(model.params, cache).block_until_ready(); ts.append(time.perf_counter() - t)
    return 1000 * statistics.median(ts) / N

for label, it in [("ar", Iteration.AR), ("L1 1call", Iteration(1, (1,))), ("L2 1call", Iteration(1, (1, 1))),
                  ("tree 4,2 1call", Iteration(1, (4, 2))), ("L1 2calls", Iteration(2, (1,)))]:
    if len(sys.argv) > 2 and sys.argv[2] != "all" and label.split()[0] not in sys.argv[2].split(","):
        continue
    ms, tpi, length = loop_ms(it)
    shapes = it.call_shapes() if it.mode == "pass" else ((1, 1),)
    call = sum(call_loop_ms(w, p, length) for w, p in shapes)
    print(f"{label:16s} iter {ms:6.1f} ms  calls {call:6.1f} ms  loop work {ms - call:5.1f} ms  tok/iter {tpi:.2f} shapes {shapes}", flush=True)
