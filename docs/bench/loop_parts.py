"""Parts of the L=1 one-call and ar decode iterations, each timed as a jitted loop of N repeats: the call
with and without the look-ahead inputs and the tree mask, one or two vocabulary projections, and the
sampling path of each (probabilities, drafts, the walk). Usage:

    .venv/bin/python docs/bench/loop_parts.py fwd samp
"""
import time, statistics, sys
import jax, jax.numpy as jnp, numpy as np
from jax import lax
from pass_jax.loading import load_model
from pass_jax.generate import resolve_lookahead
from pass_jax import lookahead as la_lib, decoding
from pass_jax.model import forward, causal_mask, init_cache, lm_head
from pass_jax.iteration import Iteration
from pass_jax.sampling import PAPER, probabilities, sample, verify, draft_candidates
model = load_model("smollm2-135m"); cfg = model.config; P = model.params
N, S, V = 20, 512, cfg.vocab_size
it = Iteration(1, (1,)); tree = it.tree
la = resolve_lookahead(model, "code", num_lookahead=1).prepare(cfg, 1)
offsets, steps, visible = decoding._validation_layout(tree, 1)
W = len(offsets)
base = jnp.full((1,), 300, jnp.int32)

def timed(name, fn, *args):
    def loop(*args):
        def body(i, c):
            return fn(i, c, *args)
        return lax.fori_loop(0, N, body, init(*args))
    f = jax.jit(loop)
    jax.block_until_ready(f(*args))
    ts = []
    for _ in range(7):
        t = time.perf_counter(); jax.block_until_ready(f(*args)); ts.append(time.perf_counter() - t)
    ms = 1000 * statistics.median(ts) / N
    print(f"{name:46s} {ms:7.2f} ms", flush=True)
    return ms

def fwd(use_la, real_mask, project):
    def fn(i, c, params, la):
        cache, acc = c
        ids = jnp.ones((1, W), jnp.int32) + acc
        mask = decoding._call_mask(base, visible, S) if real_mask else causal_mask(base, W, S)
        h, cache = forward(params, cfg, ids, base[:, None] + jnp.asarray(offsets), mask, cache=cache, write_index=base,
                           hidden_only=True, lookahead=la_lib.forward_inputs(la, jnp.asarray(steps)[None]) if use_la else None)
        out = 0
        for rows in project:
            out = out + jnp.argmax(lm_head(params, cfg, h[:, rows]), -1).sum().astype(jnp.int32)
        return cache, out % 2
    return fn
global init
init = lambda params, la: (init_cache(cfg, 1, S), jnp.zeros((), jnp.int32))
which = sys.argv[1:] or ["fwd", "samp"]
if "fwd" in which:
    w1 = lambda i, c, params, la: (lambda h: (h[1], jnp.argmax(lm_head(params, cfg, h[0][:, :1]), -1).sum().astype(jnp.int32) % 2))(
        forward(params, cfg, jnp.ones((1, 1), jnp.int32) + c[1], base[:, None], causal_mask(base, 1, S), cache=c[0], write_index=base, hidden_only=True))
    timed("ar call: width 1, project 1", w1, P, la)
    timed("width 4, no look-ahead, causal, project 3 at once", fwd(False, False, [slice(0, 3)]), P, la)
    timed("width 4, look-ahead, causal, project 3 at once", fwd(True, False, [slice(0, 3)]), P, la)
    timed("width 4, look-ahead, call mask, project 3 at once", fwd(True, True, [slice(0, 3)]), P, la)
    timed("width 4, look-ahead, call mask, project 2 then 1 (shipped)", fwd(True, True, [slice(0, 2), slice(2, 3)]), P, la)
    timed("width 4, look-ahead, call mask, project 4 at once", fwd(True, True, [slice(0, 4)]), P, la)
if "samp" in which:
    key = jax.random.key(0)
    logits = jax.random.normal(key, (1, 3, V)) * 3
    init = lambda *a: (logits, jnp.zeros((), jnp.int32))
    timed("ar sampling: probabilities + sample on 1 row", lambda i, c: (c[0] + 1e-3, (c[1] + sample(jax.random.fold_in(key, i), probabilities(c[0][:, 0], PAPER))[0]) % 7))
    def pass_sampling(i, c):
        k = jax.random.fold_in(key, i)
        p = probabilities(c[0][:, :2], PAPER)
        drafts, q = draft_candidates(k, c[0][:, 2:], tree, PAPER)
        a, path, nxt, acc = verify(k, tree, drafts, q=q, p=p)
        return c[0] + 1e-3, (c[1] + nxt[0] + a[0]) % 7
    timed("L=1 1 call sampling: p (2 rows), drafts+q (1 row), verify", pass_sampling)
