"""DAPO dynamic sampling: equal-reward groups are replaced by refilled prompts, within a bound."""

import pytest

from grpo.config import GRPOConfig
from grpo.models import load_model_and_tokenizer
from grpo.scoring import RewardTerm
from grpo.trainer import GRPOTrainer


def constant_or_varied(prompts, completions, *, const, **_):
    """1.0 for every completion of a 'const' row (a zero-std group); otherwise a value that differs
    between different texts (the random tiny model never repeats a completion within a group)."""
    return [1.0 if c_row else (sum(map(ord, c)) % 97) / 97 for c, c_row in zip(completions, const)]


def trainer_for(model_dir, out, const_rows: int, total_rows: int = 12, **cfg):
    model, tok = load_model_and_tokenizer(model_dir)
    rows = [{"prompt": f"<|user|>\n{i}?</s>\n<|assistant|>\n", "const": i < const_rows} for i in range(total_rows)]
    config = GRPOConfig(steps=1, prompts_per_step=4, group_size=4, max_new_tokens=10, learning_rate=1e-3, beta=0.0,
                        progress=False, dynamic_sampling=True, **cfg)
    return GRPOTrainer(model, tok, [RewardTerm("r", constant_or_varied)], rows, config, out, seed=0)


def test_refill_replaces_zero_std_groups(tiny_model_dir, tmp_path):
    trainer = trainer_for(tiny_model_dir, tmp_path, const_rows=6)  # half the prompts give equal rewards
    metrics, _ = trainer.step(1)
    assert metrics["dynamic_sampling/rounds"] >= 1
    assert metrics["dynamic_sampling/refill_prompts"] == 4 * metrics["dynamic_sampling/rounds"]
    assert metrics["dynamic_sampling/informative_groups"] == 1.0
    assert metrics["frac_reward_zero_std"] == 0.0  # no zero-std group reached the loss
    assert metrics["completions/mean_length"] > 0


def test_no_refill_when_every_group_is_informative(tiny_model_dir, tmp_path):
    metrics, _ = trainer_for(tiny_model_dir, tmp_path, const_rows=0).step(1)
    assert metrics["dynamic_sampling/rounds"] == 0 and metrics["dynamic_sampling/refill_prompts"] == 0
    assert metrics["frac_reward_zero_std"] == 0.0


@pytest.mark.parametrize("max_rounds", [0, 2])
def test_refill_stops_at_the_bound_and_keeps_the_batch_size(tiny_model_dir, tmp_path, max_rounds, monkeypatch):
    trainer = trainer_for(tiny_model_dir, tmp_path, const_rows=12, dynamic_sampling_max_rounds=max_rounds)
    seen = []
    real = trainer._rollout_and_score
    monkeypatch.setattr(trainer, "_rollout_and_score", lambda rows, seed, *rest: seen.append(len(rows)) or real(rows, seed, *rest))
    metrics, _ = trainer.step(1)
    assert seen == [4] * (1 + max_rounds)  # the first draw and at most max_rounds refills
    assert metrics["dynamic_sampling/rounds"] == max_rounds
    assert metrics["dynamic_sampling/informative_groups"] == 0.0
    assert metrics["frac_reward_zero_std"] == 1.0 and metrics["loss"] == 0.0  # all advantages zero
    assert metrics["reward"] == 1.0


def test_dynamic_sampling_is_deterministic(tiny_model_dir, tmp_path):
    a, _ = trainer_for(tiny_model_dir, tmp_path / "a", const_rows=6).step(1)
    b, _ = trainer_for(tiny_model_dir, tmp_path / "b", const_rows=6).step(1)
    drop = ("step_time", "tokens_per_second", "timing/rollout", "timing/rewards", "timing/train")
    assert {k: v for k, v in a.items() if k not in drop} == {k: v for k, v in b.items() if k not in drop}
