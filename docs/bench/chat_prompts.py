"""How the bundled SmolLM2-135M-Instruct answers short factual prompts: raw text, its chat template
with the template's own system prompt, and with pass-jax's default system prompt for it.

A reply counts as right when it contains the expected answer (a regular expression, case-insensitive)
within `--max-new-tokens`. Greedy decoding, plus `--seeds` seeds of the paper's sampling (top-k 10,
temperature 0.8). This is what chose `generate.BUNDLED_SYSTEM_PROMPT`. Usage:

    .venv/bin/python docs/bench/chat_prompts.py --seeds 4
"""
from __future__ import annotations

import argparse
import re

from pass_jax.generate import BUNDLED_SYSTEM_PROMPT, Generator
from pass_jax.loading import load_model
from pass_jax.sampling import GREEDY, PAPER

QUESTIONS = [("The capital of France is", "paris"), ("The capital of Japan is", "tokyo"), ("What is 2+2?", "4"),
             ("The largest planet in the solar system is", "jupiter"), ("Who wrote Romeo and Juliet?", "shakespeare"),
             ("The chemical symbol for water is", "h2o"),
             ("What is the boiling point of water in Celsius?", "100"),
             ("The first president of the United States was", "washington"),
             ("What color is the sky on a clear day?", "blue"), ("The currency of Japan is", "yen"),
             ("The capital of Italy is", "rome"), ("How many legs does a spider have?", "eight|8")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()
    model = load_model("smollm2-135m")
    # What SmolLM2's template writes when a conversation has no system message.
    template_system = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    styles = {"raw text": dict(chat=False),
              "chat, the template's system prompt": dict(chat=True, system=template_system),
              f"chat, system {BUNDLED_SYSTEM_PROMPT!r}": dict(chat=True, system=BUNDLED_SYSTEM_PROMPT)}
    prompts = [q for q, _ in QUESTIONS]
    print(f"| prompt style | greedy right | top-k 10, T 0.8 right ({args.seeds} seeds) |")
    print("|---|---|---|")
    for name, style in styles.items():
        right = []
        for sampling, seeds in ((GREEDY, [0]), (PAPER, range(args.seeds))):
            generator = Generator(model, mode="ar", max_new_tokens=args.max_new_tokens, sampling=sampling,
                                  batch_size=4, **style)
            hits = 0
            for seed in seeds:
                results, _ = generator.generate(prompts, seed=seed)
                hits += sum(bool(re.search(answer, r.text.lower())) for (_, answer), r in zip(QUESTIONS, results))
            right.append(f"{hits}/{len(prompts) * len(seeds)}")
        print(f"| {name} | {right[0]} | {right[1]} |")


if __name__ == "__main__":
    main()
