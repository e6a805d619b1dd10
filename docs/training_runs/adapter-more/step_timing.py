# Times the jitted adapter train step (B 2, G 125, L 2, kl) of SmolLM2-135M on random tokens, per target source:
#   taskset -c 0 .venv/bin/python docs/training_runs/adapter-more/step_timing.py data self
import time, sys, dataclasses, jax, jax.numpy as jnp, numpy as np
from pass_jax.loading import load_model
from pass_jax import lookahead as lookahead_lib
from pass_jax.train import loop
m = load_model("smollm2-135m")
cfg, params = m.config, m.params
tokens = jnp.asarray(np.random.default_rng(0).integers(0, 49000, (2, 128)), jnp.int32)
base = loop.TrainSection(num_lookahead=2, kind="adapter", adapter_rank=8, batch_size=2, anchors_per_seq=125,
                         loss="kl", init="pass_jax/lookahead_weights/smollm2-135m-code.npz")
for targets in sys.argv[1:]:
    t = dataclasses.replace(base, targets=targets)
    la = lookahead_lib.prepare(lookahead_lib.as_kind(lookahead_lib.load(t.init, cfg), "adapter", 30, 8, key=jax.random.key(0)), cfg, 2, "x")
    la = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), la)
    opt = loop.make_optimizer(t)
    step = loop.make_train_step(cfg, t)
    state = {"step": jnp.zeros((), jnp.int32), "lookahead": la, "opt_state": opt.init(la)}
    state, _ = step(params, state, tokens); jax.block_until_ready(state)
    for _ in range(2):
        t0 = time.perf_counter(); c0 = time.process_time()
        state, mt = step(params, state, tokens); jax.block_until_ready(state)
        print(targets, f"wall {time.perf_counter()-t0:.2f} cpu {time.process_time()-c0:.2f}", flush=True)
