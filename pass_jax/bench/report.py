"""A report as Markdown tables and PNG plots."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import outputs
from .rows import cost_key, row_iteration
from .settings import PASS

PLOT_FILES = ("speedup_vs_lookahead.png", "acceptance_by_position.png", "tokens_per_iteration.png")


def _fmt(value, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    header = ("| domain | method | setting | tok/s median [min, max] | × ar | × HF greedy | tok/call | "
              "mean accepted | compile/warm-up s | peak host MB |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r['domain']} | {r['method']} | {r.get('setting', '–')} | "
            f"{r['tokens_per_s']:.1f} [{r['tokens_per_s_min']:.1f}, {r['tokens_per_s_max']:.1f}] | "
            f"{_fmt(r['ratio_vs_ar'])} | {_fmt(r['ratio_vs_transformers_greedy'])} | {_fmt(r['tokens_per_call'])} | "
            f"{_fmt(r['mean_accepted'])} | {_fmt(r['compile_s'], 1)} | {_fmt(r['peak_host_mb'], 0)} |")
    return "\n".join(lines)


def call_cost_table(report: dict[str, Any]) -> str:
    """Per PaSS row: its calls' shapes, their cost in ar steps, acceptance, predicted and measured ratio."""
    costs = report["call_costs"]
    lines = [f"decode call cost (batch {costs['batch_size']}, {costs['context']} cached tokens): width 1 = "
             f"{costs['ms']['1']:.1f} ms; by width (/projected positions): "
             + ", ".join(f"{k} {v:.2f}x" for k, v in costs["relative"].items()),
             "", "| domain | setting | calls (width/projected) | iteration cost (ar steps) | tok/call | "
             "acceptance by depth | predicted × ar | measured × ar |", "|---|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        if r.get("predicted_ratio_vs_ar") is not None:
            shapes = row_iteration(r).call_shapes()
            acceptance = " ".join(f"{a:.2f}" for a in r["position_acceptance"])
            lines.append(f"| {r['domain']} | {r['setting']} | {' + '.join(cost_key(s) for s in shapes)} | "
                         f"{r['iteration_cost_vs_ar_step']:.2f} | {r['tokens_per_call']:.2f} | {acceptance} | "
                         f"{r['predicted_ratio_vs_ar']:.2f} | {_fmt(r['ratio_vs_ar'])} |")
    return "\n".join(lines)


def write_plots(report: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """PNG figures: speed-up vs L (one line per domain), acceptance per position, tokens per iteration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [r for r in report["runs"] if r["method"] == PASS and not r.get("auto")
            and all(k == 1 for k in r["draft_tree"]) and not r.get("context")
            and not r.get("recycle")]  # chains: a line per domain and calls
    domains = list(dict.fromkeys(r["domain"] for r in rows))
    paths = [out_dir / name for name in PLOT_FILES]

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for domain in domains:
        for calls in sorted({r["calls"] for r in rows}):
            mine = [r for r in rows if r["domain"] == domain and r["calls"] == calls]
            ax.plot([r["num_lookahead"] for r in mine], [r["ratio_vs_ar"] or 0.0 for r in mine], "o-",
                    label=f"{domain}, {calls} call{'s' if calls == 2 else ''}")
    ax.axhline(1.0, color="gray", linestyle="--", linewidth=1, label="autoregressive")
    ax.set(xlabel="look-ahead steps L", ylabel="speed-up over autoregressive (tokens/s)",
           title="PaSS speed-up")
    ax.legend()
    _save(fig, paths[0])

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for r in rows:
        positions = range(1, len(r["position_acceptance"]) + 1)
        ax.plot(positions, r["position_acceptance"], "o-", label=f"{r['domain']} {r['setting']}")
    ax.set(xlabel="look-ahead position i", ylabel="acceptance rate", ylim=(0, 1), title="Draft acceptance")
    ax.legend(fontsize="small")
    _save(fig, paths[1])

    fig, axes = plt.subplots(1, max(len(domains), 1), figsize=(5 * max(len(domains), 1), 3.5), squeeze=False)
    for ax, domain in zip(axes[0], domains):
        mine = [r for r in rows if r["domain"] == domain]
        width = 0.8 / len(mine)
        for k, r in enumerate(mine):
            hist = r["tokens_per_iteration_hist"]
            total = sum(hist.values()) or 1
            ax.bar([int(t) + (k - (len(mine) - 1) / 2) * width for t in hist], [c / total for c in hist.values()],
                   width=width, label=r["setting"])
        ax.set(xlabel="tokens committed per iteration", ylabel="fraction of iterations", title=domain)
        ax.legend(fontsize="small")
    _save(fig, paths[2])
    return paths


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with outputs.atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
