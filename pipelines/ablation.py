"""``grpo ablate``: arms × seeds through the staged runner, one table and one picture.

An ablation recipe names a shared base recipe and a few *arms*, each an overlay on the base
(mappings merge key by key, lists such as ``stages`` are replaced whole)::

    name: r1_zero_vs_r1
    base: recipes/lab/base.yaml          # a recipe file, or the recipe mapping inline
    seeds: [0, 1, 2]
    arms:
      r1_zero: {stages: [...grpo from base..., eval]}
      r1:      {rewards: {language_consistency: 0.5}, stages: [...cold start, grpo, eval]}

Every (arm, seed) is a complete staged run in ``<output_dir>/<arm>/seed-<s>/`` (so reruns skip
finished runs and resume interrupted ones). Each arm must end with an ``eval`` stage; all arms
should evaluate the same held-out data. The result is ``ablation.md`` (per arm, mean ± std over
seeds of pass@1, maj@k, format rate, language consistency, length of correct and wrong answers,
the policy's entropy and KL to the reference over the last RL steps, wall time),
``ablation.json`` and ``ablation.png`` (reward, accuracy, format, language consistency, length,
entropy and KL over RL steps: one line per arm, the seeds' range shaded).
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from grpo.io import atomic_write_json, atomic_write_text, read_jsonl
from grpo.schema import ConfigError, from_dict
from pipelines.paths import PathResolver, resolve_recipe_paths
from pipelines.recipe import Recipe, read_mapping, read_recipe_dict

TABLE_METRICS = [
    ("pass@1", "pass@1"),
    ("maj@k", "maj@k"),
    ("format rate", "format_rate"),
    ("language consistency", "language_consistency"),
    ("single-language rate", "language_consistency_rate"),
    ("length (correct)", "mean_length_correct"),
    ("length (wrong)", "mean_length_wrong"),
    ("entropy (RL end)", "rl_entropy"),
    ("KL (RL end)", "rl_kl"),
]
#: The training figures of the table: their mean over the last RL_END_STEPS steps of the last RL stage.
RL_END_STEPS = 5
RL_END_METRICS = {"rl_entropy": "entropy", "rl_kl": "kl"}
CURVES = [
    ("reward (each arm's own mix)", "reward"),
    ("accuracy", "rewards/accuracy/mean"),
    ("format", "rewards/format/mean"),
    ("language consistency", "rewards/language_consistency/mean"),
    ("completion length (tokens)", "completions/mean_length"),
    ("entropy", "entropy"),
    ("KL to reference", "kl"),
]


@dataclass
class AblationRecipe:
    name: str
    base: str | dict[str, Any]  # a recipe file (relative to this file's folder) or an inline recipe mapping
    arms: dict[str, dict[str, Any]]  # arm name -> overlay on the base
    seeds: list[int] = field(default_factory=lambda: [0])
    output_dir: str | None = None  # default runs/<name>
    parallel: int = 1  # runs at once, each in its own process (1: in this process, one after another)
    # stages whose per-step metrics are the curves of ablation.png; default: every grpo stage. E.g.
    # [kd, rl_only] plots the students of a distillation ablation, not the teacher's RL before them.
    curve_stages: list[str] | None = None

    def __post_init__(self):
        if not self.arms:
            raise ValueError("arms: at least one arm is needed")
        if not self.seeds:
            raise ValueError("seeds: at least one seed is needed")
        if self.parallel < 1:
            raise ValueError(f"parallel: must be ≥ 1, got {self.parallel}")


def deep_merge(base: dict, overlay: dict) -> dict:
    """``overlay`` on ``base``: mappings merge recursively, anything else (lists too) replaces."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass
class ArmRun:
    arm: str
    seed: int
    recipe: Recipe
    run_dir: Path


def load_ablation(path: str | Path, overrides: list[str] = ()) -> tuple[AblationRecipe, list[ArmRun]]:
    """Read and validate an ablation recipe; every (arm, seed) recipe is validated and planned."""
    from pipelines.runner import plan_stages

    path = Path(path)
    data, overridden = read_mapping(path, overrides)
    try:
        ablation = from_dict(AblationRecipe, data)
        # Paths written here (base:, and in the inline base and the arms) are relative to this
        # file's folder; those given with --set to the current directory (pipelines/paths.py).
        def under(prefix: str) -> list[str]:  # the --set keys inside one part, relative to it
            return [k.removeprefix(prefix) for k in overridden if k.startswith(prefix)]

        here = os.path.abspath(path.parent)
        base_file = None
        if isinstance(ablation.base, str):
            base_file = PathResolver(path.parent, overridden).path(ablation.base, "base", True)
        else:
            ablation.base = resolve_recipe_paths(copy.deepcopy(ablation.base), path.parent, under("base."))
        arms = {arm: PathResolver(path.parent, under(f"arms.{arm}.")).recipe(copy.deepcopy(o)) for arm, o in ablation.arms.items()}
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    base = read_recipe_dict(base_file) if base_file is not None else ablation.base
    out = Path(ablation.output_dir or f"runs/{ablation.name}")
    runs = []
    for arm, overlay in arms.items():
        for seed in ablation.seeds:
            merged = deep_merge(base, overlay)
            # The arms' modules are looked for beside this file too.
            merged["code_dirs"] = list(dict.fromkeys([here, *(overlay.get("code_dirs") or []), *(base.get("code_dirs") or [])]))
            merged.update({"seed": seed, "name": f"{ablation.name}-{arm}-seed{seed}", "output_dir": str(out / arm / f"seed-{seed}")})
            try:
                recipe = from_dict(Recipe, merged)
                plan = plan_stages(recipe)
            except ConfigError as exc:
                raise ConfigError(f"{path}: arms.{arm}: {exc}") from None
            if not any(s.kind == "eval" for s in plan):
                raise ConfigError(f"{path}: arms.{arm}: needs an eval stage (the arms are compared on its results)")
            runs.append(ArmRun(arm, seed, recipe, Path(merged["output_dir"])))
    return ablation, runs


def run_ablation(path: str | Path, overrides: list[str] = (), progress: bool = True) -> Path:
    """Run every (arm, seed) not yet complete, then write ablation.md/json/png; returns the .md path."""
    from pipelines.runner import Runner

    ablation, runs = load_ablation(path, overrides)
    out = Path(ablation.output_dir or f"runs/{ablation.name}")
    out.mkdir(parents=True, exist_ok=True)
    if ablation.parallel == 1:
        for run in runs:
            print(f"== {run.arm} seed {run.seed} → {run.run_dir}")
            Runner(run.recipe, run.run_dir, progress=progress).run()
    else:
        _run_in_processes(runs, out, ablation.parallel)
    return write_ablation(ablation, runs, out)


def _run_in_processes(runs: list[ArmRun], out: Path, parallel: int) -> None:
    """Each run as `python -m pipelines.cli run <recipe>` in its own process, ``parallel`` at a time."""
    from grpo.schema import to_dict

    recipes_dir = out / "recipes"
    recipes_dir.mkdir(exist_ok=True)
    pending = []
    for run in runs:
        file = recipes_dir / f"{run.arm}-seed{run.seed}.yaml"
        atomic_write_text(file, yaml.safe_dump(to_dict(run.recipe), sort_keys=False, allow_unicode=True))
        pending.append((run, file))
    # Split the cores between processes so they do not fight over threads.
    threads = max(1, (os.cpu_count() or 1) // parallel)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    running: list[tuple[ArmRun, subprocess.Popen, Any]] = []
    failures = []
    while pending or running:
        while pending and len(running) < parallel:
            run, file = pending.pop(0)
            run.run_dir.mkdir(parents=True, exist_ok=True)
            log = open(run.run_dir / "run.log", "a")
            proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "run", str(file)], stdout=log, stderr=subprocess.STDOUT, env=env)
            print(f"== {run.arm} seed {run.seed}: started (log {run.run_dir / 'run.log'})")
            running.append((run, proc, log))
        time.sleep(0.5)
        for item in list(running):
            run, proc, log = item
            if proc.poll() is not None:
                log.close()
                running.remove(item)
                print(f"== {run.arm} seed {run.seed}: {'done' if proc.returncode == 0 else f'failed ({proc.returncode})'}")
                if proc.returncode != 0:
                    failures.append(f"{run.arm} seed {run.seed} (see {run.run_dir / 'run.log'})")
    if failures:
        raise RuntimeError("ablation runs failed: " + "; ".join(failures))


# --- results -----------------------------------------------------------------------------------


def _last_eval(run_dir: Path) -> dict:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    evals = [s for s in manifest["stages"] if s["kind"] == "eval" and s.get("status") == "complete"]
    if not evals:
        raise RuntimeError(f"{run_dir}: no completed eval stage")
    summary = json.loads((run_dir / evals[-1]["name"] / "eval.json").read_text())
    summary["wall_time_s"] = sum(s.get("wall_time_s") or 0 for s in manifest["stages"])
    rl = [s for s in manifest["stages"] if s["kind"] == "grpo" and s.get("status") == "complete"]
    last = read_jsonl(run_dir / rl[-1]["name"] / "metrics.jsonl")[-RL_END_STEPS:] if rl else []
    for key, metric in RL_END_METRICS.items():
        summary[key] = mean_std([r.get(metric) for r in last])[0]
    return summary


def _rl_curve(run_dir: Path, key: str, stages: list[str] | None = None) -> list[float | None]:
    """The key over all RL steps of a run, grpo stages (or the named ``stages``) back to back."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    values = []
    for stage in manifest["stages"]:
        if (stage["name"] in stages) if stages is not None else stage["kind"] == "grpo":
            values += [r.get(key) for r in read_jsonl(run_dir / stage["name"] / "metrics.jsonl")]
    return values


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    vals = [v for v in values if isinstance(v, (int, float)) and not math.isnan(v)]
    if not vals:
        return None, None
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return mean, std


def _stage_evals(run_dir: Path) -> dict[str, dict]:
    """The run's eval_after results: model (base or stage) -> eval.json, in pipeline order."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    out = {}
    for entry in manifest.get("evaluations", []):
        path = run_dir / entry["dir"] / "eval.json"
        if entry.get("status") == "complete" and path.exists():
            out[entry["target"]] = json.loads(path.read_text())
    return out


def summarize_arms(runs: list[ArmRun]) -> dict[str, dict]:
    """Per arm: each table metric's mean and std over seeds, and the per-seed values; under
    ``after_stage``, the same for the eval_after figures of each model of the pipeline."""
    from pipelines.report import STAGE_EVAL_COLUMNS

    arms: dict[str, dict] = {}
    stage_evals: dict[str, dict[int, dict]] = {}
    for run in runs:
        arms.setdefault(run.arm, {"seeds": {}})["seeds"][run.seed] = _last_eval(run.run_dir)
        stage_evals.setdefault(run.arm, {})[run.seed] = _stage_evals(run.run_dir)
    for arm, info in arms.items():
        for _, key in TABLE_METRICS + [("wall time", "wall_time_s")]:
            info[key] = mean_std([s.get(key) for s in info["seeds"].values()])
        targets = list(dict.fromkeys(t for per_seed in stage_evals[arm].values() for t in per_seed))
        info["after_stage"] = {
            t: {key: mean_std([per_seed.get(t, {}).get(key) for per_seed in stage_evals[arm].values()]) for _, key in STAGE_EVAL_COLUMNS}
            for t in targets
        }
    return arms


def _cell(pair, digits=3) -> str:
    mean, std = pair
    if mean is None:
        return "-"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def write_ablation(ablation: AblationRecipe, runs: list[ArmRun], out: Path) -> Path:
    arms = summarize_arms(runs)
    seeds = ", ".join(map(str, ablation.seeds))
    lines = [
        f"# Ablation: {ablation.name}", "",
        f"Arms × seeds ({seeds}); mean ± std over seeds on the same held-out evaluation. Entropy and KL: the "
        f"policy's mean per-token entropy and KL to the reference over the last {RL_END_STEPS} steps of the last RL stage.", "",
    ]
    header = ["arm"] + [label for label, _ in TABLE_METRICS] + ["wall time (s)"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arm, info in arms.items():
        cells = [_cell(info[key], 1 if key.startswith("mean_length") else 4 if key == "rl_kl" else 3) for _, key in TABLE_METRICS]
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {_cell(info['wall_time_s'], 0)} |")
    lines += ["", "![curves](ablation.png)", ""]
    lines += _after_stage_table(arms)
    plot_ablation(runs, out / "ablation.png", ablation.curve_stages)
    atomic_write_json(out / "ablation.json", {arm: {k: v for k, v in info.items()} for arm, info in arms.items()})
    return atomic_write_text(out / "ablation.md", "\n".join(lines))


def _after_stage_table(arms: dict[str, dict]) -> list[str]:
    """The eval set after every stage of each arm (eval_after), mean ± std over seeds: what each
    stage changed, and its seed-to-seed noise."""
    from pipelines.report import STAGE_EVAL_COLUMNS

    if not any(info["after_stage"] for info in arms.values()):
        return []
    lines = ["## After every stage", "", "| arm | model after | " + " | ".join(label for label, _ in STAGE_EVAL_COLUMNS) + " |"]
    lines.append("|---|---|" + "---|" * len(STAGE_EVAL_COLUMNS))
    for arm, info in arms.items():
        for target, figures in info["after_stage"].items():
            cells = [_cell(figures[key], 1 if key.startswith("mean_length") else 3) for _, key in STAGE_EVAL_COLUMNS]
            lines.append(f"| {arm} | {target} | " + " | ".join(cells) + " |")
    return lines + [""]


def plot_ablation(runs: list[ArmRun], path: Path, stages: list[str] | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from grpo.plots import save_figure, smooth

    arms = list(dict.fromkeys(r.arm for r in runs))
    cols = 4
    rows = math.ceil(len(CURVES) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows))
    for ax in axes.flat[len(CURVES):]:
        ax.axis("off")
    for ax, (title, key) in zip(axes.flat, CURVES):
        for arm in arms:
            curves = [_rl_curve(r.run_dir, key, stages) for r in runs if r.arm == arm]
            curves = [[v for v in c if v is not None] for c in curves]
            curves = [c for c in curves if c]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            window = max(1, n // 10)
            smoothed = [smooth(c[:n], window) for c in curves]
            mean = [sum(c[i] for c in smoothed) / len(smoothed) for i in range(n)]
            lo = [min(c[i] for c in smoothed) for i in range(n)]
            hi = [max(c[i] for c in smoothed) for i in range(n)]
            xs = list(range(1, n + 1))
            color = f"C{arms.index(arm)}"  # an arm keeps its colour in every panel
            ax.plot(xs, mean, linewidth=2, color=color, label=f"{arm} ({len(curves)} seeds)")
            ax.fill_between(xs, lo, hi, color=color, alpha=0.2)
        ax.set_title(title)
        ax.set_xlabel("RL step (stages back to back)")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    return save_figure(fig, path)
