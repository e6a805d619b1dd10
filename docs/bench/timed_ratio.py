"""`-L auto`'s loop check on its own: a setting's tokens/s against ar's from the timed real decode
loops of both (`autotune.timed_ratios`) on the domain's first held-out bench prompt, for settings the
bench also runs, so the two can be compared. Usage:

    .venv/bin/python docs/bench/timed_ratio.py
"""
from __future__ import annotations

from pass_jax import autotune
from pass_jax.bench import corpus_prompts
from pass_jax.generate import resolve_lookahead
from pass_jax.iteration import Iteration
from pass_jax.loading import load_model
from pass_jax.sampling import GREEDY, PAPER

CASES = [("text", PAPER, Iteration(2, (1,))), ("code", PAPER, Iteration(2, (2, 1))),
         ("text", PAPER, Iteration(2, (1, 1, 1, 1))), ("code", GREEDY, Iteration(1, (1,)))]


def main() -> None:
    model = load_model("smollm2-135m")
    for domain, sampling, iteration in CASES:
        prompt = corpus_prompts(model.tokenizer, domain, 1, 64)[0]
        ratio = autotune.timed_ratios(model, [iteration], resolve_lookahead(model, domain), sampling,
                                     prompt_ids=list(model.tokenizer(prompt)["input_ids"]))[0]
        print(f"{domain} {'greedy' if sampling.greedy else 'top-k 10, T 0.8'} {iteration.label()}: {ratio:.2f}x ar")


if __name__ == "__main__":
    main()
