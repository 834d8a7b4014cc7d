"""report.md and curves.png for a staged run: one table of stages, the evaluations, RL curves."""

from __future__ import annotations

from pathlib import Path

from grpo.io import atomic_write_text, read_jsonl

RL_PANELS = [
    ("reward", "reward"),
    ("KL to reference", "kl"),
    ("completion length (tokens)", "completions/mean_length"),
    ("language consistency", "rewards/language_consistency/mean"),
]


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def _headline(metrics: dict, limit: int = 6) -> str:
    keys = [k for k in metrics if not isinstance(metrics[k], (dict, list)) and k != "model"]
    return ", ".join(f"{k}={_fmt(metrics[k])}" for k in keys[:limit])


def write_report(run_dir: Path, manifest: dict) -> Path:
    """Write report.md (and curves.png when RL stages have metrics) into ``run_dir``."""
    run_dir = Path(run_dir)
    lines = [f"# Run report: {manifest.get('recipe', run_dir.name)}", ""]
    lines += ["| # | stage | kind | status | wall time | headline |", "|---|---|---|---|---|---|"]
    for i, entry in enumerate(manifest["stages"]):
        wall = entry.get("wall_time_s")
        lines.append(
            f"| {i} | {entry['name']} | {entry['kind']} | {entry.get('status', 'pending')} | "
            f"{'' if wall is None else f'{wall:.0f} s'} | {_headline(entry.get('metrics') or {})} |"
        )
    evals = [e for e in manifest["stages"] if e["kind"] == "eval" and e.get("status") == "complete"]
    for entry in evals:
        md = run_dir / entry["name"] / "eval.md"
        if md.exists():
            lines += ["", md.read_text(encoding="utf-8").strip()]
    rl = [(e["name"], read_jsonl(run_dir / e["name"] / "metrics.jsonl")) for e in manifest["stages"] if e["kind"] in ("grpo", "distill")]
    rl = [(name, rows) for name, rows in rl if rows and "reward" in rows[0]]  # (an off-policy distill stage's are SFT metrics)
    if rl:
        plot_rl_stages(rl, run_dir / "curves.png")
        lines += ["", "## RL curves", "", "![RL curves](curves.png)"]
    lines.append("")
    return atomic_write_text(run_dir / "report.md", "\n".join(lines))


def plot_rl_stages(stages: list[tuple[str, list[dict]]], path: Path) -> Path:
    """Reward, KL, length and language consistency across RL stages, one colour per stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from grpo.plots import save_figure, smooth

    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    offset = 0
    for name, rows in stages:
        for ax, (title, key) in zip(axes.flat, RL_PANELS):
            pts = [(offset + r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            if pts:
                xs, ys = zip(*pts)
                line = ax.plot(xs, ys, alpha=0.3, linewidth=1)[0]
                ax.plot(xs, smooth(list(ys), max(1, len(ys) // 10)), color=line.get_color(), linewidth=2, label=name)
            ax.set_title(title)
        offset += rows[-1]["step"]
    for ax in axes.flat:
        ax.set_xlabel("step (stages back to back)")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    return save_figure(fig, path)
