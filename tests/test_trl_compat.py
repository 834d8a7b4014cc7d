"""TRL's GRPOConfig names in a recipe (grpo/trl_compat.py): every field of TRL 1.16's GRPOConfig
is accepted (our key of the same name and meaning), read as ours, or refused with our key named."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from grpo.config import GRPOConfig
from grpo.schema import ConfigError, from_dict
from grpo.trl_compat import TRL_KEYS, _same_value

ROOT = Path(__file__).resolve().parents[1]


def trl_fields():
    import trl

    assert trl.__version__.split(".")[:2] == ["1", "16"], f"the table was written for TRL 1.16, this is {trl.__version__}"
    return dataclasses.fields(trl.GRPOConfig)


def trl_default(f):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise AssertionError(f"{f.name} has no default")


def other_value(value):
    """A value that asks for something else than TRL's default."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "-other"
    return 1  # None, {}, []


def names_a_real_thing(ours: str) -> bool:
    """Our key (a recipe path through the dataclasses), a `grpo train` flag, or an environment variable we read."""
    if ours.startswith("--"):
        from pipelines.cli import build_parser

        train = build_parser()._subparsers._group_actions[0].choices["train"]
        return any(ours in action.option_strings for action in train._actions)
    if ours.isupper():
        return any(ours in p.read_text() for p in (ROOT / "grpo").rglob("*.py") if p.name != "trl_compat.py")
    from pipelines.recipe import Recipe

    node = Recipe
    for part in ours.split("."):
        hints = typing.get_type_hints(node)
        if part not in hints:
            return False
        tp = hints[part]
        options = typing.get_args(tp) or (tp,)
        node = next((o for o in options if dataclasses.is_dataclass(o)), tp)
    return True


def test_the_table_covers_trl_exactly():
    fields = {f.name for f in trl_fields()}
    assert len(fields) == 191
    assert sorted(fields - set(TRL_KEYS)) == [] and sorted(set(TRL_KEYS) - fields) == []
    ours = {f.name for f in dataclasses.fields(GRPOConfig)}
    for name, entry in TRL_KEYS.items():
        assert entry.kind in ("same", "alias", "refuse", "ignore"), name
        if entry.kind == "same":
            assert name in ours, f"{name}: marked same, but GRPOConfig has no such key"
        if entry.kind == "alias":
            assert entry.ours.startswith("grpo.") and entry.ours.removeprefix("grpo.") in ours, name
        if entry.kind == "refuse":
            assert entry.why, name
        if entry.ours is not None:
            assert names_a_real_thing(entry.ours), f"{name}: names {entry.ours!r}, which is not a key, flag or variable of ours"
        if entry.kind == "refuse" and entry.ours is not None and not entry.ours.startswith("--") and not entry.ours.isupper():
            assert entry.ours.split(".")[-1] in entry.why or entry.ours in entry.why, f"{name}: its message does not name {entry.ours}"


def test_each_trl_field_is_accepted_mapped_or_refused_naming_ours(capsys):
    default = GRPOConfig()
    refused, mapped, same, dropped = [], 0, 0, 0
    for f in trl_fields():
        entry, value = TRL_KEYS[f.name], trl_default(f)
        noop = any(_same_value(value, v) for v in entry.noop)
        try:
            cfg = from_dict(GRPOConfig, {f.name: value}, "grpo")
        except ConfigError as exc:
            message = str(exc)
            assert entry.kind == "refuse" and not noop, f"{f.name}={value!r} refused: {message}"
            assert message.startswith(f"grpo.{f.name}: ") and "\n" not in message
            assert entry.ours is None or entry.ours in message or entry.ours.split(".")[-1] in message, message
            refused.append(f.name)
            continue
        if entry.kind in ("ignore",) or noop:
            assert cfg == default, f"{f.name}={value!r} changed the config"
            dropped += 1
        elif entry.kind == "same":
            expected = entry.convert(value) if entry.convert else value
            assert value is None or getattr(cfg, f.name) == expected, f.name
            same += 1
        elif entry.kind == "alias":
            expected = entry.convert(value) if entry.convert else value
            assert getattr(cfg, entry.ours.removeprefix("grpo.")) == expected, f.name
            mapped += 1
        else:
            pytest.fail(f"{f.name}={value!r}: a refused key was accepted")
        # A value that asks for something else than "off" is refused wherever only "off" was accepted.
        if entry.kind == "refuse" and noop:
            with pytest.raises(ConfigError, match=rf"^grpo\.{f.name}: TRL's setting"):
                from_dict(GRPOConfig, {f.name: other_value(value)}, "grpo")
    notes = capsys.readouterr().err
    assert "note: grpo.num_generations is TRL's name: read as grpo.group_size: 8" in notes
    assert "note: grpo.dataloader_num_workers: TRL setting ignored here" in notes
    assert len(refused) + mapped + same + dropped == 191
    # TRL's defaults that mean something else here are refused, never silently taken: these.
    assert sorted(refused) == ["num_train_epochs", "per_device_train_batch_size", "seed", "use_bias_correction_kl"]


@pytest.mark.parametrize(
    "key, value, expect",
    [
        ("loss_type", "bnpo", ("loss_aggregation", "bnpo")),
        ("scale_rewards", False, ("advantage_estimator", "dr_grpo")),
        ("scale_rewards", "group", ("advantage_estimator", "grpo")),
        ("lr_scheduler_type", "constant_with_warmup", ("lr_scheduler", "constant")),
        ("use_vllm", True, ("rollout_engine", "vllm")),
        ("log_completions", True, ("log_completions", 4)),
        ("disable_tqdm", True, ("progress", False)),
        ("save_total_limit", 3, ("keep_checkpoints", 3)),
        ("max_steps", 20, ("steps", 20)),
        ("loss_type", "cispo", ("policy_loss", "cispo")),
        ("loss_type", "sapo", ("policy_loss", "sapo")),
        ("importance_sampling_level", "sequence", ("policy_loss", "gspo")),
        ("multi_objective_aggregation", "normalize_then_sum", ("advantage_estimator", "gdpo")),
        ("sapo_temperature_neg", 2.0, ("sapo_temperature_neg", 2.0)),
        ("entropy_coef", 0.01, ("entropy_coef", 0.01)),
        ("vllm_importance_sampling_correction", False, ("rollout_correction", "none")),
        ("vllm_importance_sampling_mode", "token_truncate", ("rollout_correction", "tis")),
        ("vllm_importance_sampling_mode", "sequence_mask", ("rollout_correction", "mis")),
        ("vllm_importance_sampling_clip_max", 3.0, ("rollout_correction_cap", 3.0)),
    ],
)
def test_values_are_translated(key, value, expect):
    cfg = from_dict(GRPOConfig, {key: value}, "grpo")
    assert getattr(cfg, expect[0]) == expect[1]


@pytest.mark.parametrize(
    "section, message",
    [
        ({"loss_type": "luspo"}, "grpo.loss_type: 'luspo': not available here; grpo.loss_aggregation takes grpo, bnpo, dr_grpo or dapo, grpo.policy_loss"),
        ({"lr_scheduler_type": "polynomial"}, "grpo.lr_scheduler_type: 'polynomial': not available here; grpo.lr_scheduler takes"),
        ({"save_steps": 0.1}, "grpo.save_steps: 0.1 is a ratio of the run in TRL; give save_steps as a number of steps"),
        ({"num_generations": 4, "group_size": 4}, "grpo.num_generations: TRL's name for grpo.group_size, which is also given; keep group_size"),
        ({"report_to": "wandb"}, "grpo.report_to: TRL's setting; experiment trackers are the recipe's top-level report_to"),
        ({"loss_type": "cispo", "importance_sampling_level": "sequence"},
         "grpo.importance_sampling_level: sets grpo.policy_loss to 'gspo', another of TRL's keys set it to 'cispo'"),
        ({"vllm_importance_sampling_mode": "token_mask"}, "grpo.vllm_importance_sampling_mode: 'token_mask': not available here; grpo.rollout_correction takes tis"),
        ({"vllm_importance_sampling_correction": False, "vllm_importance_sampling_mode": "token_truncate"},
         "grpo.vllm_importance_sampling_mode: sets grpo.rollout_correction to 'tis', another of TRL's keys set it to 'none'"),
        ({"bf16": True}, "grpo.bf16: TRL's setting; the numerics are the recipe's top-level precision"),
    ],
)
def test_what_we_do_not_have_is_refused_naming_ours(section, message):
    with pytest.raises(ConfigError) as info:
        from_dict(GRPOConfig, section, "grpo")
    assert message in str(info.value)


def test_trl_policy_losses_take_trls_aggregation_and_cispo_bound(capsys):
    # TRL aggregates cispo by the token mean (dapo) and sapo by the sequence mean (grpo); TRL's
    # epsilon_high for cispo is the weight bound itself, ours bounds at 1 + epsilon_high.
    cispo = from_dict(GRPOConfig, {"loss_type": "cispo", "epsilon_high": 5.0}, "grpo")
    assert (cispo.policy_loss, cispo.loss_aggregation, cispo.epsilon_high) == ("cispo", "dapo", 4.0)
    assert "grpo.epsilon_high: TRL's bound of cispo's weights; read as grpo.epsilon_high: 4.0" in capsys.readouterr().err
    sapo = from_dict(GRPOConfig, {"loss_type": "sapo", "epsilon_high": 0.28}, "grpo")
    assert (sapo.policy_loss, sapo.loss_aggregation, sapo.epsilon_high) == ("sapo", "grpo", 0.28)


def test_a_stage_grpo_section_takes_trl_names_too(tmp_path):
    from pipelines.recipe import Recipe
    from pipelines.runner import plan_stages
    from pipelines.stages.grpo import stage_grpo_config

    recipe = from_dict(Recipe, {"name": "s", "data": {"train": "synthetic:arithmetic", "eval": "synthetic:arithmetic"},
                                "stages": [{"name": "rl", "kind": "grpo", "grpo": {"num_generations": 4, "reward_weights": [1.0, 0.5]}},
                                           {"name": "ev", "kind": "eval", "init": "stages.rl"}]})
    plan_stages(recipe)
    assert stage_grpo_config(recipe, recipe.stages[0]["grpo"], "stages[0].grpo").group_size == 4
    assert recipe.stages[0]["rewards"] == {"accuracy": 1.0, "format": 0.5}


def test_a_value_can_set_other_or_several_keys_of_ours(monkeypatch, capsys):
    # How an entry points one TRL value at another key of ours (e.g. loss_type: cispo at a policy-loss key).
    from grpo.trl_compat import Targets, TrlKey

    both = Targets({"loss_aggregation": "dapo", "mask_truncated_completions": True})
    monkeypatch.setitem(TRL_KEYS, "loss_type", TrlKey("alias", "grpo.loss_aggregation", "", lambda v: both if v == "dapo_masked" else v))
    cfg = from_dict(GRPOConfig, {"loss_type": "dapo_masked"}, "grpo")
    assert (cfg.loss_aggregation, cfg.mask_truncated_completions) == ("dapo", True)
    assert "read as grpo.loss_aggregation: 'dapo', grpo.mask_truncated_completions: True" in capsys.readouterr().err
