"""Time the cached-prefix training step against the masked many-anchor one, same settings.

    python -m pass_jax.train.step_speed --config smollm2_135m_wiki --steps 3 \\
        --setting L=8,G=24,B=2 --setting L=1,G=32,B=2 --json runs/step_speed.json

For each setting (L look-ahead steps, G anchors per sequence, B sequences of data.seq_len tokens)
and each prefix (cached, masked) it compiles `pass_jax.train.loop.make_train_step` once (timed apart), then
runs --steps steps on real batches and reports the median wall and CPU seconds per step, anchors
and target tokens (anchors x L) per second. On a shared machine the CPU seconds are the stable
figure; the load average is printed beside them.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import numpy as np


def _setting(text: str) -> dict[str, int]:
    keys = {"L": "num_lookahead", "G": "anchors_per_seq", "B": "batch_size"}
    out = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        out[keys[name]] = int(value)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="smollm2_135m_wiki")
    parser.add_argument("--setting", action="append", type=_setting, required=True, help="L=..,G=..,B=..")
    parser.add_argument("--prefix", action="append", choices=("cached", "masked"))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--json")
    parser.add_argument("overrides", nargs="*", help="config KEY=VALUE overrides (train.kind=deep, ...)")
    args = parser.parse_args(argv)

    import jax

    from pass_jax.sharding import make_mesh
    from .loop import init_state, load_base_model, load_split, make_train_step
    from .run_config import load_run_config

    config = load_run_config(args.config, args.overrides)
    mesh = make_mesh(config.mesh)
    model = load_base_model(config.model, mesh)
    data = load_split(config.data, model.tokenizer, "test")
    results = []
    for setting in args.setting:
        for prefix in args.prefix or ("cached", "masked"):
            t = dataclasses.replace(config.train, prefix=prefix, **setting)
            step = make_train_step(model.config, t)
            state = init_state(model, t, mesh)
            batches = [rows for _, rows in data.batches(t.batch_size, num_steps=args.steps + 1)]
            tick = time.perf_counter()
            state, metrics = step(model.params, state, batches[0])
            jax.block_until_ready(metrics)
            compile_s = time.perf_counter() - tick
            wall, cpu = [], []
            for rows in batches[1:]:
                w, c = time.perf_counter(), time.process_time()
                state, metrics = step(model.params, state, rows)
                jax.block_until_ready(metrics)
                wall.append(time.perf_counter() - w)
                cpu.append(time.process_time() - c)
            anchors = t.batch_size * t.anchors_per_seq
            row = {"prefix": prefix, "num_lookahead": t.num_lookahead, "anchors_per_seq": t.anchors_per_seq,
                   "batch_size": t.batch_size, "seq_len": data.seq_len, "kind": t.kind, "loss": t.loss,
                   "first_step_s": round(compile_s, 1), "step_s": round(float(np.median(wall)), 3),
                   "step_cpu_s": round(float(np.median(cpu)), 3),
                   "anchors_per_s": round(anchors / float(np.median(wall)), 2),
                   "anchors_per_cpu_s": round(anchors / float(np.median(cpu)), 2),
                   "target_tokens_per_cpu_s": round(anchors * t.num_lookahead / float(np.median(cpu)), 1),
                   "load_average": [round(x, 2) for x in os.getloadavg()]}
            print(json.dumps(row), flush=True)
            results.append(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": args.config, "overrides": args.overrides, "steps": args.steps, "results": results},
                      f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
