"""Issue 23: where a decode iteration's time goes, per compiled XLA op. Each setting's `decode_steps`
(N iterations from one prefill of a 200-token held-out-like prompt, the shipped code parameters, paper
sampling) runs under `jax.profiler`; the XLA:CPU thunk events of the run are summed per op name and
per kind (the model's matrix products, the vocabulary projection, everything else), in ms per
iteration. The op names are the compiled HLO's; `--hlo DIR` writes each setting's HLO text there to
look them up. Usage:

    .venv/bin/python docs/bench/loop_profile.py 30 "ar;L=1, 1 call;L=1, 1 call, context 2" [--hlo DIR]
"""
import collections
import glob
import gzip
import json
import sys
import tempfile

import jax
import numpy as np

from _steps import compiled_loop
from pass_jax.iteration import Iteration
from pass_jax.loading import load_model
from pass_jax.sampling import PAPER

N = int(sys.argv[1])
labels = sys.argv[2].split(";")
hlo_dir = sys.argv[sys.argv.index("--hlo") + 1] if "--hlo" in sys.argv else None
model = load_model("smollm2-135m")
cfg = model.config
prompt = [[(7 * i + 3) % cfg.vocab_size for i in range(200)]]
SKIP = ("Pjit", "Execute", "Allocate", "Handle", "Parse", "$", "Thunk", "while", "call", "conditional")


def profile(iteration: Iteration):
    g, prefill, steps, args, lengths = compiled_loop(model, iteration, PAPER, prompt, 4 * N + 8)
    if hlo_dir:
        with open(f"{hlo_dir}/{iteration.label().replace(' ', '_').replace(',', '')}.hlo.txt", "w") as f:
            f.write(steps.as_text())
    state = prefill(*args)
    jax.block_until_ready(steps(model.params, g.lookahead, state, lengths, np.int32(N)))  # warm
    state = prefill(*args)
    jax.block_until_ready(state)
    trace = tempfile.mkdtemp()
    jax.profiler.start_trace(trace, create_perfetto_trace=True)
    state = steps(model.params, g.lookahead, state, lengths, np.int32(N))
    jax.block_until_ready(state.lengths)
    jax.profiler.stop_trace()
    events = json.load(gzip.open(glob.glob(f"{trace}/**/perfetto_trace.json.gz", recursive=True)[0]))
    events = events["traceEvents"] if isinstance(events, dict) else events
    ops = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and not e["name"].startswith(SKIP):
            ops[e["name"]] += e.get("dur", 0) / 1000 / N  # µs -> ms per iteration
    tokens_per_iteration = (int(state.stats.new_tokens[0]) - 1) / N
    return ops, tokens_per_iteration


for label in labels:
    ops, tpi = profile(Iteration.parse(label))
    total = sum(ops.values())
    print(f"\n{label}: {total:.1f} ms of XLA ops per iteration, {tpi:.2f} tokens per iteration; top ops:")
    for name, ms in ops.most_common(15):
        print(f"  {ms:7.2f} ms  {name}")
    print(f"  {total - sum(ms for _, ms in ops.most_common(15)):7.2f} ms  the {max(len(ops) - 15, 0)} others")
