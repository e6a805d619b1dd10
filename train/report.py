"""Plot a training run: loss (train and eval) and per-position draft accuracy, from metrics.jsonl.

    python -m train.report runs/smollm2_135m_wiki --out docs/training_text.png
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from pass_jax.errors import PassJaxError


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise PassJaxError(f"{path} not found: give a run directory written by `pass-jax train`")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot(records: list[dict], out: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if r.get("split") == "train"]
    evals = [r for r in records if r.get("split") == "eval"]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label="train", alpha=0.6)
    ax_loss.plot([r["step"] for r in evals], [r["loss"] for r in evals], "o-", label="eval (held-out)")
    ax_loss.set(xlabel="step", ylabel="cross-entropy of the look-ahead drafts", title="loss")
    ax_loss.legend()
    for i in range(len(evals[0]["acc"]) if evals else 0):
        ax_acc.plot([r["step"] for r in evals], [r["acc"][i] for r in evals], "o-", label=f"[LA]_{i + 1}")
    ax_acc.set(xlabel="step", ylabel="top-1 draft accuracy", title="eval accuracy per look-ahead position")
    ax_acc.legend(ncol=2, fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    plot(read_metrics(args.run_dir), args.out, args.title or args.run_dir.name)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
