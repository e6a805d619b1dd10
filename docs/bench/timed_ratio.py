"""`-L auto`'s loop check on its own: a setting's speed against ar from its predicted tokens per
iteration (the shipped vectors' acceptance metadata) and the timed real decode loops of both
(`autotune.timed_ratio`), for settings the bench also runs, so the two can be compared. Usage:

    .venv/bin/python docs/bench/timed_ratio.py
"""
from __future__ import annotations

from pass_jax import autotune
from pass_jax import lookahead as lookahead_lib
from pass_jax.generate import resolve_lookahead
from pass_jax.loading import load_model
from pass_jax.sampling import GREEDY, PAPER

CASES = [("text", PAPER, autotune.Setting(2, (1,))), ("code", PAPER, autotune.Setting(2, (2, 1))),
         ("text", PAPER, autotune.Setting(2, (1, 1, 1, 1))), ("code", GREEDY, autotune.Setting(1, (1,)))]


def main() -> None:
    model = load_model("smollm2-135m")
    for domain, sampling, setting in CASES:
        metadata = lookahead_lib.read_metadata(lookahead_lib.resolve_path(domain, model.identity))
        table = autotune.acceptance_table(metadata, sampling.greedy)
        prediction = autotune.predict(setting, table, {shape: 1.0 for shape in setting.call_shapes()})
        vectors, _ = resolve_lookahead(model, domain, setting.num_lookahead)
        ratio = autotune.timed_ratio(model, setting, prediction, vectors, sampling)
        print(f"{domain} {'greedy' if sampling.greedy else 'top-k 10, T 0.8'} {setting.label()}: {ratio:.2f}x ar")


if __name__ == "__main__":
    main()
