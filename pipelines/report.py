"""report.md for a staged run: what each stage did to the model (eval_after table and evals.png),
the table of stages, the evaluations, and the RL curves (curves.png)."""

from __future__ import annotations

import json
from pathlib import Path

from grpo.io import atomic_write_text, read_jsonl

#: The columns of the per-stage table: (label, eval.json key).
STAGE_EVAL_COLUMNS = [
    ("pass@1", "pass@1"),
    ("maj@k", "maj@k"),
    ("format rate", "format_rate"),
    ("language consistency", "language_consistency"),
    ("length", "mean_length"),
]

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
    lines += stage_evaluations_table(run_dir, manifest)
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


def _evaluation_rows(run_dir: Path, manifest: dict) -> list[tuple[str, dict | None]]:
    """(target, eval.json or None while pending) for each eval_after evaluation, in pipeline order."""
    rows = []
    for entry in manifest.get("evaluations", []):
        path = run_dir / entry["dir"] / "eval.json"
        done = entry.get("status") == "complete" and path.exists()
        rows.append((entry["target"], json.loads(path.read_text()) if done else None))
    return rows


def stage_evaluations_table(run_dir: Path, manifest: dict) -> list[str]:
    """The report's opening: the eval set's figures for the base and the model after each stage
    (markdown lines, and evals.png once two are complete); no lines when eval_after is empty."""
    rows = _evaluation_rows(run_dir, manifest)
    if not rows:
        return []
    first = next((summary for _, summary in rows if summary), None)
    k = first.get("samples_per_prompt") if first else None
    where = f" ({first['num_prompts']} prompts × {k} samples)" if first else ""
    labels = [f"maj@{k}" if key == "maj@k" and isinstance(k, int) else label for label, key in STAGE_EVAL_COLUMNS]
    lines = [f"## What each stage did: the eval set{where} after every stage", ""]
    lines += ["| model after | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for target, summary in rows:
        if summary is None:
            cells = ["(pending)"] + [""] * (len(labels) - 1)
        else:
            cells = [_metric(summary.get(key), key) for _, key in STAGE_EVAL_COLUMNS]
        lines.append(f"| {target} | " + " | ".join(cells) + " |")
    lines.append("")
    complete = [(t, s) for t, s in rows if s]
    if len(complete) >= 2:
        plot_stage_evaluations(complete, run_dir / "evals.png")
        lines += ["![after every stage](evals.png)", ""]
    return lines


def _metric(value, key: str) -> str:
    if not isinstance(value, (int, float)):
        return "-"
    return f"{value:.1f}" if key.startswith("mean_length") else f"{value:.3f}"


def plot_stage_evaluations(rows: list[tuple[str, dict]], path: Path) -> Path:
    """One panel per figure of the per-stage table, the models in pipeline order along x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from grpo.plots import save_figure

    fig, axes = plt.subplots(1, len(STAGE_EVAL_COLUMNS), figsize=(3.6 * len(STAGE_EVAL_COLUMNS), 3.6))
    xs = list(range(len(rows)))
    for ax, (label, key) in zip(axes, STAGE_EVAL_COLUMNS):
        ys = [summary.get(key) for _, summary in rows]
        pts = [(x, y) for x, y in zip(xs, ys) if isinstance(y, (int, float))]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", linewidth=2)
            for x, y in pts:
                ax.annotate(_metric(y, key), (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
        ax.set_xticks(xs)
        ax.set_xticklabels([t for t, _ in rows], rotation=30, ha="right", fontsize=8)
        ax.set_title(label)
        ax.grid(alpha=0.3)
        if not key.startswith("mean_length"):
            ax.set_ylim(-0.05, 1.1)
    fig.suptitle("the eval set after every stage")
    return save_figure(fig, path)


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
