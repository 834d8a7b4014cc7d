"""`grpo ablate`: arms × seeds through the runner; table and plot from the runs' evaluations."""

import json

import pytest
import yaml

from grpo.schema import ConfigError
from pipelines.ablation import deep_merge, load_ablation, mean_std, run_ablation

ARITH = {"max_value": 9, "ops": "+"}


def ablation_recipe(model_dir, out) -> dict:
    eval_stage = {"name": "eval", "kind": "eval", "init": "stages.rl", "samples_per_prompt": 2}
    return {
        "name": "tiny-ablation",
        "output_dir": str(out),
        "seeds": [0, 1],
        "base": {
            "name": "base",
            "model": str(model_dir),
            "data": {
                "train": {"source": "synthetic:arithmetic", "size": 20, "language": "mixed", "options": ARITH},
                "eval": {"source": "synthetic:arithmetic", "size": 3, "seed": 1, "language": "mixed", "options": ARITH},
            },
            "template": {"kind": "chat", "system": "Think, then answer."},
            "rewards": {"accuracy": 1.0, "format": 0.5, "language_consistency": 0.0},  # weight 0: measured only
            "grpo": {"steps": 2, "prompts_per_step": 2, "group_size": 4, "max_new_tokens": 10, "learning_rate": 1e-3, "progress": False},
            "stages": [{"name": "rl", "kind": "grpo", "init": "base"}, eval_stage],
        },
        "arms": {
            "zero": {},
            "cold": {
                "rewards": {"language_consistency": 0.5},
                "stages": [
                    {"name": "cold", "kind": "sft", "init": "base",
                     "data": {"source": "synthetic:arithmetic", "size": 8, "options": {**ARITH, "worked": True}},
                     "sft": {"max_steps": 2, "batch_size": 4, "learning_rate": 1e-3, "max_length": 200, "progress": False}},
                    {"name": "rl", "kind": "grpo", "init": "stages.cold"},
                    eval_stage,
                ],
            },
        },
    }


def test_deep_merge_merges_mappings_and_replaces_lists():
    base = {"a": {"x": 1, "y": 2}, "l": [1, 2], "k": 1}
    assert deep_merge(base, {"a": {"y": 3}, "l": [9]}) == {"a": {"x": 1, "y": 3}, "l": [9], "k": 1}
    assert base == {"a": {"x": 1, "y": 2}, "l": [1, 2], "k": 1}  # not modified


def test_mean_std():
    assert mean_std([1.0, 3.0]) == (2.0, pytest.approx(2**0.5))
    assert mean_std([5.0]) == (5.0, 0.0) and mean_std([None]) == (None, None)


def test_ablation_runs_arms_and_seeds(tiny_model_dir, tmp_path):
    path = tmp_path / "ablation.yaml"
    path.write_text(yaml.safe_dump(ablation_recipe(tiny_model_dir, tmp_path / "out")))
    report = run_ablation(path, progress=False)
    text = report.read_text()
    assert "| zero |" in text and "| cold |" in text and "pass@1" in text and "language consistency" in text
    for arm in ("zero", "cold"):
        for seed in (0, 1):
            manifest = json.loads((tmp_path / "out" / arm / f"seed-{seed}" / "manifest.json").read_text())
            assert all(s["status"] == "complete" for s in manifest["stages"])
            assert manifest["recipe"] == f"tiny-ablation-{arm}-seed{seed}"
    data = json.loads((tmp_path / "out" / "ablation.json").read_text())
    assert set(data) == {"zero", "cold"} and set(data["zero"]["seeds"]) == {"0", "1"}
    mean, _ = data["cold"]["pass@1"]
    assert mean == pytest.approx(sum(s["pass@1"] for s in data["cold"]["seeds"].values()) / 2)
    assert (tmp_path / "out" / "ablation.png").stat().st_size > 10_000
    # Seeds differ: seed 1's RL samples are not a copy of seed 0's.
    samples = [[json.loads(l)["completion"] for l in open(tmp_path / "out" / "zero" / f"seed-{s}" / "rl" / "completions.jsonl")] for s in (0, 1)]
    assert samples[0] != samples[1]


def test_ablation_errors_name_the_arm(tiny_model_dir, tmp_path):
    recipe = ablation_recipe(tiny_model_dir, tmp_path / "out")
    recipe["arms"]["cold"]["stages"][1]["init"] = "stages.colt"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(ConfigError, match=r"arms\.cold: stages\[1\]\.init: refers to stage 'colt', which does not exist"):
        load_ablation(path)
    recipe = ablation_recipe(tiny_model_dir, tmp_path / "out")
    recipe["arms"]["zero"] = {"stages": [{"name": "rl", "kind": "grpo"}]}
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(ConfigError, match="arms.zero: needs an eval stage"):
        load_ablation(path)


ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
SHIPPED = sorted(  # the ablation recipes (arms:) among the lab's recipes
    str(p.relative_to(ROOT)) for p in (ROOT / "recipes" / "lab").glob("*.yaml") if "arms" in yaml.safe_load(p.read_text())
)
SHIPPED += ["recipes/r1_seeds.yaml", "recipes/ablation_gsm8k.yaml"]


@pytest.mark.parametrize("path", SHIPPED)
def test_shipped_ablation_recipes_load(path):
    ablation, runs = load_ablation(ROOT / path)
    assert len(runs) == len(ablation.arms) * len(ablation.seeds)


def test_lc_reward_arms_differ_only_in_the_reward():
    from pipelines.runner import plan_stages

    _, runs = load_ablation(ROOT / "recipes" / "lab" / "lc_reward.yaml")
    with_lc = next(r for r in runs if r.arm == "with_lc" and r.seed == 0).recipe
    without = next(r for r in runs if r.arm == "without_lc" and r.seed == 0).recipe
    assert with_lc.rewards["language_consistency"] == 0.5 and without.rewards["language_consistency"] == 0.0
    assert with_lc.stages == without.stages and with_lc.grpo == without.grpo and with_lc.model == without.model
    assert [s.config for s in plan_stages(with_lc)][0] == [s.config for s in plan_stages(without)][0]  # one cold start


def test_objectives_arms_choose_the_objective():
    from grpo.schema import to_dict

    ablation, runs = load_ablation(ROOT / "recipes" / "lab" / "objectives.yaml")
    chosen = {r.arm: (r.recipe.grpo.policy_loss, r.recipe.grpo.loss_aggregation, r.recipe.grpo.num_iterations) for r in runs}
    assert chosen == {"grpo": ("clip", "grpo", 2), "dr_grpo": ("clip", "dr_grpo", 2), "gspo": ("gspo", "grpo", 2), "cispo": ("cispo", "dapo", 2)}
    base = {k: v for k, v in to_dict(runs[0].recipe.grpo).items()}
    for run in runs:  # everything else the same
        other = to_dict(run.recipe.grpo)
        assert {k for k in base if base[k] != other[k]} <= {"policy_loss", "loss_aggregation", "advantage_estimator", "epsilon_low", "epsilon_high"}
