"""Plot training runs from their metrics.jsonl.

One run: loss (train and eval), per-position draft accuracy, and [LA]_1's exact acceptance against
the blind-drafter ceilings (when the run logged them). Several runs: their [LA]_1 acceptance
against the ceilings, side by side.

    python -m pass_jax.train.report runs/smollm2_135m_wiki --out docs/training_text.png
    python -m pass_jax.train.report runs/sweep/text-* --out docs/sweep_text.png
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from pass_jax.errors import PassJaxError


def parse_record(line: str) -> tuple[str, dict | None]:
    """(line, its record), or (line, None) for a line that is no complete metrics record: a write
    cut short by a kill (only the last line can be one)."""
    try:
        record = json.loads(line)
    except ValueError:
        return line, None
    return line, record if isinstance(record, dict) and isinstance(record.get("step"), int) else None


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise PassJaxError(f"{path} not found: give a run directory written by `pass-jax train`")
    # A running or killed run's last line may be cut short: it is no record yet.
    return [record for _, record in map(parse_record, path.read_text().splitlines()) if record is not None]


def _acceptance_panel(ax, runs: dict[str, list[dict]]) -> None:
    """[LA]_1 acceptance of each run over training, and the ceilings of the eval anchors."""
    ceilings = {}
    for label, records in runs.items():
        evals = [r for r in records if r.get("split") == "eval" and "accept1" in r]
        ax.plot([r["step"] for r in evals], [r["accept1"] for r in evals], "o-", label=label)
        ceilings.update(evals[-1]["ceiling1"] if evals else {})
    for (kind, value), style in zip(sorted(ceilings.items()), (":", "--")):
        ax.axhline(value, color="k", linestyle=style, label=f"ceiling ({kind}) {value:.3f}")
    ax.set(xlabel="step", ylabel="P([LA]_1 draft accepted)", ylim=(0, 1),
           title="held-out [LA]_1 acceptance (top-k 10, T 0.8)")
    ax.legend(fontsize=7)


def plot(records: list[dict], out: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if r.get("split") == "train"]
    evals = [r for r in records if r.get("split") == "eval"]
    fig, (ax_loss, ax_acc, ax_accept) = plt.subplots(1, 3, figsize=(16, 4))
    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label="train", alpha=0.6)
    ax_loss.plot([r["step"] for r in evals], [r["loss"] for r in evals], "o-", label="eval (held-out)")
    ax_loss.set(xlabel="step", ylabel="the run's objective", title="loss")
    ax_loss.legend()
    for i in range(len(evals[0]["acc"]) if evals else 0):
        ax_acc.plot([r["step"] for r in evals], [r["acc"][i] for r in evals], "o-", label=f"[LA]_{i + 1}")
    ax_acc.set(xlabel="step", ylabel="top-1 draft accuracy", title="eval accuracy per look-ahead position")
    ax_acc.legend(ncol=2, fontsize=8)
    _acceptance_panel(ax_accept, {title: records})
    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def plot_runs(runs: dict[str, list[dict]], out: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    _acceptance_panel(ax, runs)
    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    if len(args.run_dirs) == 1:
        plot(read_metrics(args.run_dirs[0]), args.out, args.title or args.run_dirs[0].name)
    else:
        plot_runs({d.name: read_metrics(d) for d in args.run_dirs}, args.out, args.title or "runs")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
