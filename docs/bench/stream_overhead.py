"""What streaming costs: tokens/s of one prompt streamed (the decode loop read back about every
`--interval` seconds, its new text written and flushed; 0: after every loop iteration) against the
same run unstreamed, in one process, rounds interleaved.
Each round runs every setting once, in an order rotated from round to round; the overhead is the
median over rounds of a round's streamed tokens/s over its unstreamed tokens/s, so a load that
drifts between rounds cancels.

Both runs share one compilation (a chunk only caps the loop's iteration count, as data) and give the
same tokens. The settings are `pass-jax generate`'s defaults (one call per iteration, draft tree 4,2,
chat template) with greedy decoding. Usage:

    .venv/bin/python docs/bench/stream_overhead.py --interval 0.2 --rounds 12
"""
from __future__ import annotations

import argparse
import importlib
import os
import statistics

from pass_jax.generate import Generator
from pass_jax.loading import load_model
from pass_jax.sampling import GREEDY

# The module (pass_jax.generate, the attribute, is the one-call function).
generate_lib = importlib.import_module("pass_jax.generate")
PROMPT = "Write a short story about a robot who learns to paint."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interval", type=float, action="append", required=True,
                        help="seconds between reads (generate.CHUNK_INTERVAL_S; 0: every iteration)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()
    generator = Generator(load_model("smollm2-135m"), mode="pass", calls=1, num_lookahead=2, draft_tree=(4, 2),
                          max_new_tokens=args.max_new_tokens, sampling=GREEDY, chat="auto")
    sink = open(os.devnull, "w")

    def show(_, piece):  # what the CLI does with a piece
        sink.write(piece)
        sink.flush()

    def run(interval: float | None):
        if interval is not None:
            generate_lib.CHUNK_INTERVAL_S = interval
        results, summary = generator.generate([PROMPT], stream=None if interval is None else show)
        return results[0].tokens, summary["tokens_per_s"]

    reference, _ = run(None)  # compiles
    speeds: dict = {interval: [] for interval in [None, *args.interval]}
    settings = list(speeds)
    for round_index in range(args.rounds):
        shift = round_index % len(settings)  # rotate the order, so no setting always runs first
        for interval in settings[shift:] + settings[:shift]:
            tokens, speed = run(interval)
            assert tokens == reference
            speeds[interval].append(speed)
    base = speeds[None]
    print(f"{len(reference)} tokens, medians of {args.rounds} interleaved rounds")
    print("| read interval | tokens/s | vs unstreamed (median of per-round ratios) |")
    print("|---|---|---|")
    print(f"| unstreamed | {statistics.median(base):.1f} | |")
    for interval in args.interval:
        ratio = statistics.median(s / b for s, b in zip(speeds[interval], base))
        name = f"{interval} s" if interval else "every iteration"
        print(f"| {name} | {statistics.median(speeds[interval]):.1f} | {100 * (ratio - 1):+.1f}% |")


if __name__ == "__main__":
    main()
