"""Training curves from a run's log.csv: one PNG, three panels (matplotlib, Agg backend).

    plot_curves("runs/tiny/log.csv", "runs/tiny/curves.png")
"""
from __future__ import annotations

import csv
import os
from pathlib import Path


def read_log(path: str | os.PathLike) -> list[dict[str, float]]:
    rows = []
    with open(path, encoding="utf-8", newline="") as f:
        for r in csv.DictReader(f):
            rows.append({k: float(v) for k, v in r.items() if v not in ("", None)})
    return rows


def _series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    pts = [(r["step"], r[key]) for r in rows if key in r and "step" in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_curves(log_csv: str | os.PathLike, out_png: str | os.PathLike) -> Path:
    """Train loss (total, MLM, next turn), eval MLM loss and accuracy, next-turn accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_log(log_csv)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ax = axes[0]
    for key, style in (("loss", "-"), ("mlm_loss", "--"), ("next_turn_loss", ":")):
        x, y = _series(rows, key)
        if x:
            ax.plot(x, y, style, label=f"train {key}")
    ax.set_title("training loss")
    ax = axes[1]
    x, y = _series(rows, "eval_mlm_loss")
    if x:
        ax.plot(x, y, "o-", label="eval MLM loss")
        ax.set_ylabel("loss")
        acc = ax.twinx()
        xa, ya = _series(rows, "eval_mlm_acc")
        acc.plot(xa, ya, "s--", color="tab:orange", label="eval MLM accuracy")
        acc.set_ylabel("accuracy")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = acc.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, loc="center right", fontsize="small")
    ax.set_title("held-out MLM")
    ax = axes[2]
    x, y = _series(rows, "eval_next_turn_acc")
    if x:
        ax.plot(x, y, "o-", color="tab:green", label="eval next-turn accuracy")
        ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_title("held-out next-turn accuracy")
    for ax in axes:
        ax.set_xlabel("step")
        if ax is not axes[1] and ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize="small")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out_png = Path(out_png)
    tmp = out_png.with_name(f".{out_png.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, out_png)
    return out_png
