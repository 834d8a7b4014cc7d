"""`grpo run`: the staged R1 recipe end to end on a tiny model, plan validation, kill and resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from grpo.io import read_jsonl
from grpo.schema import ConfigError
from pipelines.cli import main
from pipelines.recipe import load_recipe
from pipelines.runner import Runner, dry_run, plan_stages

ARITH = {"max_value": 9, "ops": "+"}


def tiny_recipe(model_dir, out, **grpo) -> dict:
    return {
        "name": "tiny-r1",
        "model": str(model_dir),
        "seed": 0,
        "output_dir": str(out),
        "data": {
            "train": {"source": "synthetic:arithmetic", "size": 40, "language": "mixed", "options": ARITH},
            "eval": {"source": "synthetic:arithmetic", "size": 4, "seed": 1, "language": "mixed", "options": ARITH},
        },
        "template": {"kind": "chat", "system": "Think in <think>, answer in <answer>."},
        "rewards": {"accuracy": 1.0, "format": 0.5, "language_consistency": 0.5},
        "grpo": {"steps": 3, "prompts_per_step": 2, "group_size": 4, "max_new_tokens": 12, "learning_rate": 1e-3, "save_every": 1, "progress": False, **grpo},
        "stages": [
            {"name": "cold_start", "kind": "sft", "init": "base",
             "data": {"source": "synthetic:arithmetic", "size": 16, "language": "mixed", "options": {**ARITH, "worked": True}},
             "sft": {"max_steps": 3, "batch_size": 8, "learning_rate": 1e-3, "max_length": 256, "progress": False}},
            {"name": "reasoning_rl", "kind": "grpo", "init": "stages.cold_start"},
            # A tiny random model is never right: keep on format ≥ 0 so the hand-off has rows.
            {"name": "rejection_sampling", "kind": "rejection_sampling", "init": "stages.reasoning_rl",
             "samples_per_prompt": 2, "max_prompts": 6, "keep": {"format": 0.0}, "drop_truncated": False, "max_per_prompt": 1},
            {"name": "sft_rs", "kind": "sft", "init": "base", "data": "stages.rejection_sampling",
             "sft": {"max_steps": 2, "batch_size": 4, "learning_rate": 1e-3, "max_length": 256, "progress": False}},
            {"name": "final_rl", "kind": "grpo", "init": "stages.sft_rs", "grpo": {"steps": 2}},
            {"name": "eval", "kind": "eval", "init": "stages.final_rl", "samples_per_prompt": 2},
        ],
    }


def write(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True))
    return path


def test_r1_recipe_end_to_end(tiny_model_dir, tmp_path, capsys):
    run = tmp_path / "run"
    recipe_path = write(tmp_path / "r1.yaml", tiny_recipe(tiny_model_dir, run))
    assert main(["run", str(recipe_path)]) == 0
    manifest = json.loads((run / "manifest.json").read_text())
    names = [s["name"] for s in manifest["stages"]]
    assert names == ["cold_start", "reasoning_rl", "rejection_sampling", "sft_rs", "final_rl", "eval"]
    for entry in manifest["stages"]:
        assert entry["status"] == "complete" and entry["wall_time_s"] > 0 and len(entry["config_hash"]) == 16, entry
        assert (run / entry["name"] / "stage.json").exists()
    by = {s["name"]: s for s in manifest["stages"]}
    # Hand-offs are the right files.
    assert by["reasoning_rl"]["inputs"]["model"] == str(run / "cold_start" / "final")
    assert by["sft_rs"]["inputs"] == {"model": str(tiny_model_dir), "data": str(run / "rejection_sampling" / "data.jsonl")}
    assert by["final_rl"]["inputs"]["model"] == str(run / "sft_rs" / "final")
    assert by["eval"]["inputs"]["model"] == str(run / "final_rl" / "final")
    for stage in ("cold_start", "reasoning_rl", "sft_rs", "final_rl"):
        assert (run / stage / "final" / "config.json").exists()
    assert len(read_jsonl(run / "reasoning_rl" / "metrics.jsonl")) == 3 and len(read_jsonl(run / "final_rl" / "metrics.jsonl")) == 2
    rs_rows = read_jsonl(run / "rejection_sampling" / "data.jsonl")
    stats = json.loads((run / "rejection_sampling" / "stats.json").read_text())
    assert len(rs_rows) == stats["kept"] == by["rejection_sampling"]["metrics"]["kept"] and 0 < len(rs_rows) <= 6
    assert {"prompt", "completion"} <= set(rs_rows[0])
    evaluation = json.loads((run / "eval" / "eval.json").read_text())
    assert evaluation["num_prompts"] == 4 and evaluation["samples_per_prompt"] == 2 and 0 <= evaluation["pass@1"] <= 1
    report = (run / "report.md").read_text()
    assert "| 5 | eval | eval | complete |" in report and "pass@1" in report
    assert (run / "curves.png").stat().st_size > 10_000 and (run / "recipe.resolved.yaml").exists()
    assert not list(run.glob(".*.partial"))

    # eval_after (default: all): the base and every model-producing stage on the eval set, with the
    # eval stage's settings; final_rl's model is the eval stage's own, so it is not evaluated twice.
    evaluated = ["base", "cold_start", "reasoning_rl", "sft_rs", "final_rl"]
    assert [e["target"] for e in manifest["evaluations"]] == evaluated
    assert all(e["status"] == "complete" for e in manifest["evaluations"])
    assert sorted(p.name for p in (run / "evals").iterdir()) == sorted(evaluated[:-1])
    assert manifest["evaluations"][-1]["dir"] == "eval"
    after_rl = json.loads((run / "evals" / "reasoning_rl" / "eval.json").read_text())
    assert after_rl["model"] == str(run / "reasoning_rl" / "final") and after_rl["samples_per_prompt"] == 2
    assert json.loads((run / "evals" / "base" / "eval.json").read_text())["model"] == str(tiny_model_dir)
    # report.md opens with the table, one row per model, the figures from those eval.json files.
    lines = report.splitlines()
    assert lines[2].startswith("## What each stage did: the eval set (4 prompts × 2 samples)")
    assert lines[4] == "| model after | pass@1 | maj@2 | format rate | language consistency | length |"
    assert [line.split(" | ")[0].lstrip("| ") for line in lines[6:11]] == evaluated
    assert lines[8] == (f"| reasoning_rl | {after_rl['pass@1']:.3f} | {after_rl['maj@k']:.3f} | {after_rl['format_rate']:.3f} | "
                        f"{after_rl['language_consistency']:.3f} | {after_rl['mean_length']:.1f} |")
    assert (run / "evals.png").stat().st_size > 10_000 and "![after every stage](evals.png)" in report

    # Run again: every stage is complete with the same configuration, so nothing is redone.
    before = {n: (run / n / "stage.json").stat().st_mtime_ns for n in names + [f"evals/{t}" for t in evaluated[:-1]]}
    capsys.readouterr()
    assert main(["run", str(recipe_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("skipped") == 6 and "eval_after" not in out
    assert before == {n: (run / n / "stage.json").stat().st_mtime_ns for n in before}

    # Change final_rl's config: it and eval rerun, earlier stages are kept; the old result is kept aside.
    assert main(["run", str(recipe_path), "--set", "stages.4.grpo.steps=1"]) == 0
    after = json.loads((run / "manifest.json").read_text())
    assert [s["name"] for s in after["stages"] if s.get("resumed") is not None and s["finished"] != by[s["name"]]["finished"]] == ["final_rl", "eval"]
    assert len(list((run / "superseded").iterdir())) == 2
    assert before["cold_start"] == (run / "cold_start" / "stage.json").stat().st_mtime_ns
    assert before["evals/sft_rs"] == (run / "evals" / "sft_rs" / "stage.json").stat().st_mtime_ns


def test_eval_after_chooses_the_models(tiny_model_dir, tmp_path):
    recipe = tiny_recipe(tiny_model_dir, tmp_path / "run")
    recipe["stages"] = recipe["stages"][:2]  # cold start, reasoning RL: no eval stage of its own
    recipe["eval_after"] = ["reasoning_rl", "base"]
    manifest = Runner(load_recipe(write(tmp_path / "r.yaml", recipe)), progress=False).run()
    assert [(e["target"], e["dir"], e["status"]) for e in manifest["evaluations"]] == [
        ("base", "evals/base", "complete"), ("reasoning_rl", "evals/reasoning_rl", "complete")]  # pipeline order
    summary = json.loads((tmp_path / "run" / "evals" / "reasoning_rl" / "eval.json").read_text())
    assert summary["num_prompts"] == 4 and summary["samples_per_prompt"] == 4  # no eval stage: EvalConfig defaults, data.eval
    assert "| reasoning_rl |" in (tmp_path / "run" / "report.md").read_text()
    # eval_after: [] turns it off; the report has no such table.
    recipe.update(eval_after=[], output_dir=str(tmp_path / "off"), stages=recipe["stages"][:1])
    manifest = Runner(load_recipe(write(tmp_path / "off.yaml", recipe)), progress=False).run()
    assert manifest["evaluations"] == [] and not (tmp_path / "off" / "evals").exists()
    assert "What each stage did" not in (tmp_path / "off" / "report.md").read_text()


@pytest.mark.parametrize(
    "eval_after, edit, message",
    [
        (["reasoning_lr"], None, "eval_after[0]: no stage 'reasoning_lr'; did you mean 'reasoning_rl'?"),
        (["base", "rejection_sampling"], None, "eval_after[1]: stage 'rejection_sampling' (rejection_sampling) produces no model to evaluate"),
        (["base"], lambda r: r["data"].pop("eval") and r["stages"].pop(), "eval_after: needs an eval set (data.eval, or an eval stage with data)"),
    ],
)
def test_eval_after_errors(tiny_model_dir, tmp_path, eval_after, edit, message):
    def change(recipe):
        recipe["eval_after"] = eval_after
        if edit:
            edit(recipe)
    assert message in _plan_error(tiny_model_dir, tmp_path, change)


def _plan_error(model_dir, tmp_path, edit) -> str:
    recipe = tiny_recipe(model_dir, tmp_path / "run")
    edit(recipe)
    with pytest.raises(ConfigError) as info:
        plan_stages(load_recipe(write(tmp_path / "bad.yaml", recipe)))
    return str(info.value)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda r: r["stages"][1].update(init="stages.cold_strat"), "stages[1].init: refers to stage 'cold_strat', which does not exist; did you mean 'stages.cold_start'?"),
        (lambda r: r["stages"].append({"name": "late", "kind": "grpo"}) or r["stages"][1].update(init="stages.late"),
         "stages[1].init: refers to stage 'late', which runs later (stage 6)"),
        (lambda r: r["stages"][0].update(init="stages.cold_start"), "stages[0].init: stage 'cold_start' refers to itself"),
        (lambda r: r["stages"][3].update(data="stages.reasoning_rl"), "stages[3].data: stage 'reasoning_rl' (grpo) produces no data; it produces: model"),
        (lambda r: r["stages"].append({"name": "more_rl", "kind": "grpo", "init": "stages.eval"}), "stages[6].init: stage 'eval' (eval) produces no model"),
        (lambda r: r["stages"][1].update(kind="gpro"), "stages[1].kind: unknown stage kind 'gpro'; did you mean 'grpo'?"),
        (lambda r: r["stages"][2].update(name="cold_start"), "stages[2].name: stage name 'cold_start' is used twice"),
        (lambda r: r["stages"][4].update(grpo={"group_sise": 4}), "stages[4].grpo.group_sise: unknown key; did you mean 'group_size'?"),
        (lambda r: r["stages"][2].update(keep={"acuracy": 1.0}), "stages[2].keep.acuracy: not one of this stage's rewards"),
        (lambda r: r["stages"][2].update(samples_per_promt=3), "stages[2].samples_per_promt: unknown key; did you mean 'samples_per_prompt'?"),
        (lambda r: r["stages"][0].pop("kind"), "stages[0].kind: required key is missing"),
    ],
)
def test_plan_errors(tiny_model_dir, tmp_path, edit, message):
    assert message in _plan_error(tiny_model_dir, tmp_path, edit)


def test_cycle_is_named(tiny_model_dir, tmp_path):
    def edit(r):
        r["stages"][1]["init"] = "stages.sft_rs"  # reasoning_rl ← sft_rs ← rejection_sampling ← reasoning_rl
    text = _plan_error(tiny_model_dir, tmp_path, edit)
    assert "cycle: reasoning_rl → sft_rs → rejection_sampling → reasoning_rl" in text


def test_dry_run_checks_without_training(tiny_model_dir, tmp_path):
    recipe = load_recipe(write(tmp_path / "r.yaml", tiny_recipe(tiny_model_dir, tmp_path / "run")))
    text = dry_run(recipe)
    assert "reasoning_rl" in text and "stages.cold_start" in text and "data.train: synthetic:arithmetic (40 rows)" in text
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written
    recipe.stages[0]["data"] = {"source": str(tmp_path / "missing.jsonl")}
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        dry_run(recipe)


@pytest.mark.parametrize("path", ["recipes/r1.yaml", "recipes/r1_zero.yaml", "recipes/code_r1_zero.yaml", "recipes/gpu/r1_zero_qwen.yaml", "recipes/gpu/r1_qwen.yaml"])
def test_shipped_recipes_validate(path, tmp_path):
    root = Path(__file__).resolve().parents[1]
    overrides = []
    if path.endswith("r1_qwen.yaml"):
        cold = tmp_path / "cold.jsonl"
        cold.write_text(json.dumps({"prompt": "1+1?", "completion": "<think>1+1=2</think><answer>2</answer>"}) + "\n")
        overrides = [f"stages.0.data.source={cold}"]
    recipe = load_recipe(root / path, overrides)
    plan = plan_stages(recipe)
    assert plan and all(len(s.config_hash) == 16 for s in plan)
    text = dry_run(recipe, run_dir=tmp_path / "never")
    assert "checks:" in text
    if "gpu" in path:  # hub data cannot be reached here: reported, not silently passed
        assert "openai/gsm8k NOT CHECKED" in text


def test_kill_during_rl_then_rerun_resumes(tiny_model_dir, tmp_path):
    """kill -9 in the middle of reasoning_rl; the rerun skips cold_start and resumes RL."""
    run = tmp_path / "run"
    recipe = tiny_recipe(tiny_model_dir, run, steps=8, max_new_tokens=40)  # slow enough to be caught mid-run
    recipe["stages"] = recipe["stages"][:2] + [{"name": "eval", "kind": "eval", "init": "stages.reasoning_rl", "samples_per_prompt": 2}]
    path = write(tmp_path / "r.yaml", recipe)
    cmd = [sys.executable, "-m", "pipelines.cli", "run", str(path)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    ckpts = run / ".reasoning_rl.partial" / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and not (ckpts.exists() and any(p.name == "step-000003" for p in ckpts.iterdir())):
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    manifest = json.loads((run / "manifest.json").read_text())
    status = {s["name"]: s["status"] for s in manifest["stages"]}
    assert status == {"cold_start": "complete", "reasoning_rl": "running", "eval": "pending"}
    cold_mtime = (run / "cold_start" / "stage.json").stat().st_mtime_ns
    lines_before = len(read_jsonl(run / ".reasoning_rl.partial" / "metrics.jsonl"))
    assert 3 <= lines_before < 8

    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    manifest = json.loads((run / "manifest.json").read_text())
    by = {s["name"]: s for s in manifest["stages"]}
    assert all(s["status"] == "complete" for s in by.values())
    assert by["reasoning_rl"]["resumed"] is True
    assert (run / "cold_start" / "stage.json").stat().st_mtime_ns == cold_mtime  # not redone
    steps = [m["step"] for m in read_jsonl(run / "reasoning_rl" / "metrics.jsonl")]
    assert steps == list(range(1, 9))

    # The resumed RL metrics equal an uninterrupted run's (timing aside).
    fresh = tiny_recipe(tiny_model_dir, tmp_path / "fresh", steps=8, max_new_tokens=40)
    fresh["stages"] = fresh["stages"][:2]
    Runner(load_recipe(write(tmp_path / "f.yaml", fresh)), progress=False).run()
    from grpo.trainer import TIMING_KEYS

    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]  # noqa: E731
    assert strip(read_jsonl(run / "reasoning_rl" / "metrics.jsonl")) == strip(read_jsonl(tmp_path / "fresh" / "reasoning_rl" / "metrics.jsonl"))


def test_config_hash_covers_what_the_recipe_asks_not_the_defaults(tiny_model_dir, tmp_path):
    """Writing a setting at its default (what a toolkit upgrade adding a setting amounts to)
    keeps every stage's hash, so completed stages are not redone; a real change does not."""
    from grpo.schema import from_dict
    from pipelines.recipe import Recipe

    def hashes(**grpo):
        return {s.name: s.config_hash for s in plan_stages(from_dict(Recipe, tiny_recipe(tiny_model_dir, tmp_path, **grpo)))}

    from grpo.config import GRPOConfig
    from pipelines.runner import _explicit

    defaults = _explicit(GRPOConfig())
    assert "share_prompt" not in defaults and "steps" not in defaults  # a setting at its default is not hashed...
    assert _explicit(GRPOConfig(steps=5)) == {**defaults, "steps": 5}  # ...a chosen one is
    base = hashes()
    assert hashes(share_prompt=True, rollout_engine="shared_prefix", kl_estimator="k3") == base
    changed = hashes(temperature=0.7)  # every stage may read the recipe's grpo defaults: all re-plan
    assert all(changed[name] != base[name] for name in base)
