"""Throughput over a data set: file-order batches (`Generator.generate`) against length-sorted batches
whose finished rows are refilled between chunks (`Generator.results`, what `generate --output` runs).

Prompts of mixed length (a question after 0-60 words of context) and mixed answer length (questions
that ask for one word up to several sentences; answers end at the chat template's end of turn or at
`--max-new-tokens`), decoded by the bundled SmolLM2-135M-Instruct in its chat template with the
paper's sampling (top-k 10, temperature 0.8). For each mode and batch size the two schedules run back
to back in one process, on the same prompts, on the same warm generator (compilation is timed apart by
`Generator.compile_s` and left out). Reported: committed tokens/s, and the fraction of row-steps of
the decode loop whose row held a prompt still decoding (`Generator.occupancy`). Usage:

    .venv/bin/python docs/bench/batch_throughput.py --prompts 256 --max-new-tokens 48 --batch-sizes 1,8,32

Configurations run batch size by batch size (in the order given), both modes at each, so a run cut
short still holds both modes at the sizes it reached; each finished configuration's two rows are
printed and, with `--json FILE`, appended to FILE as they finish.
"""
from __future__ import annotations

import argparse
import json
import random
import time

from pass_jax.generate import Generator, Occupancy
from pass_jax.iteration import Iteration
from pass_jax.loading import load_model
from pass_jax.sampling import PAPER

QUESTIONS = ["Name one colour.", "What is 2+2?", "Is the sun a star? Answer yes or no.", "Name three fruits.",
             "What is the capital of France?", "Describe a cat in two sentences.",
             "Explain what a computer is in three sentences.", "Write a short poem about the sea.",
             "List five animals that live in the ocean.", "Why is the sky blue?",
             "Give me a recipe for a simple salad.", "Tell me a short story about a dragon."]
WORDS = ("the river town market old bridge stone winter people built small boats across water near a hill "
         "with trees and the road went north past fields where farmers grew wheat and kept sheep").split()


def prompts(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        context = " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 60)))
        question = rng.choice(QUESTIONS)
        out.append(f"{context.capitalize()}. {question}" if context else question)
    return out


def timed(generator: Generator, run) -> dict:
    generator.occupancy = Occupancy()
    compile_before, start = generator.compile_s, time.perf_counter()
    tokens = run()
    wall = time.perf_counter() - start - (generator.compile_s - compile_before)
    return {"new_tokens": tokens, "decode_s": round(wall, 2), "tokens_per_s": round(tokens / wall, 2),
            "useful_row_fraction": round(generator.occupancy.fraction, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--modes", default="ar,pass")
    parser.add_argument("--json", help="append each configuration's rows to this JSON-lines file as it finishes")
    args = parser.parse_args()
    model = load_model("smollm2-135m")
    data = prompts(args.prompts)
    rows = []
    print("| mode | batch | schedule | tokens | decode s | tokens/s | useful row-steps | sorted+refilled / file order |")
    print("|---|---|---|---|---|---|---|---|")
    for batch in (int(size) for size in args.batch_sizes.split(",")):  # in the order given
        for mode in args.modes.split(","):
            iteration = Iteration.from_options(mode, None)
            generator = Generator(model, iteration, max_new_tokens=args.max_new_tokens, sampling=PAPER,
                                  batch_size=batch, chat=True)
            results = {
                "file order": timed(generator, lambda: generator.generate(data, seed=0)[1]["new_tokens"]),
                "sorted + refilled": timed(generator, lambda: sum(r.stats["new_tokens"]
                                                                  for r in generator.results(data, seed=0))),
            }
            ratio = results["sorted + refilled"]["tokens_per_s"] / results["file order"]["tokens_per_s"]
            for schedule, r in results.items():
                print(f"| {mode} | {batch} | {schedule} | {r['new_tokens']} | {r['decode_s']} | {r['tokens_per_s']} | "
                      f"{r['useful_row_fraction']:.0%} | {ratio:.2f} |", flush=True)
                rows.append({"mode": mode, "batch": batch, "schedule": schedule, **r,
                             "compile_s": round(generator.compile_s, 1)})
                if args.json:
                    with open(args.json, "a") as out:
                        out.write(json.dumps({"prompts": args.prompts, "max_new_tokens": args.max_new_tokens,
                                              **rows[-1]}) + "\n")
    print(json.dumps({"prompts": args.prompts, "max_new_tokens": args.max_new_tokens, "rows": rows}))


if __name__ == "__main__":
    main()
