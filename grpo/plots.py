"""PNG curves of a run's metrics.jsonl (matplotlib, headless)."""

from __future__ import annotations

import os
from pathlib import Path


def _series(rows: list[dict], key: str):
    xs, ys = [], []
    for r in rows:
        v = r.get(key)
        if isinstance(v, (int, float)):
            xs.append(r["step"])
            ys.append(v)
    return xs, ys


def smooth(ys: list[float], window: int) -> list[float]:
    """Trailing moving average (window ≥ 1), so noisy per-step rewards show their trend."""
    out, acc = [], 0.0
    for i, y in enumerate(ys):
        acc += y
        if i >= window:
            acc -= ys[i - window]
        out.append(acc / min(i + 1, window))
    return out


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Lay out, write atomically as PNG (temp name, then rename) and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    path = Path(path)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def plot_training_curves(rows: list[dict], path: str | os.PathLike, title: str = "") -> Path:
    """Reward (total and per function), KL, completion length and loss against step; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    window = max(1, len(rows) // 10)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    panels = [
        ("reward", ["reward"] + sorted({k for r in rows for k in r if k.startswith("rewards/") and k.endswith("/mean")})),
        ("KL to reference", ["kl"]),
        ("completion length (tokens)", ["completions/mean_length", "completions/max_length"]),
        ("loss", ["loss"]),
    ]
    for ax, (label, keys) in zip(axes.flat, panels):
        for key in keys:
            xs, ys = _series(rows, key)
            if not xs:
                continue
            line = ax.plot(xs, ys, alpha=0.3, linewidth=1)[0]
            ax.plot(xs, smooth(ys, window), color=line.get_color(), linewidth=2, label=key)
        ax.set_title(label)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)
