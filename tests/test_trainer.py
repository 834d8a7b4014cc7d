"""The GRPO trainer on tiny random-init models: it learns, resumes exactly, and its passes add up."""

import json
import math

import pytest
import torch

from grpo.config import GRPOConfig, LoraSettings
from grpo.io import read_jsonl
from grpo.models import load_model_and_tokenizer
from grpo.scoring import RewardTerm
from grpo.trainer import TIMING_KEYS, GRPOTrainer, PromptSampler


def digit_share(prompts, completions, **_):
    """Share of completion characters that are digits: learnable from scratch in a few dozen steps."""
    return [sum(ch.isdigit() for ch in c) / max(1, len(c)) for c in completions]


def make_rows(tokenizer, n=24):
    return [{"prompt": tokenizer.apply_chat_template([{"role": "user", "content": f"{i}+{i}?"}], tokenize=False, add_generation_prompt=True), "solution": str(2 * i)} for i in range(n)]


def make_trainer(model_dir, out, **overrides):
    model, tok = load_model_and_tokenizer(model_dir)
    cfg = dict(steps=6, prompts_per_step=2, group_size=4, max_new_tokens=12, learning_rate=3e-3, beta=0.04, save_every=2, progress=False)
    cfg.update(overrides)
    return GRPOTrainer(model, tok, [RewardTerm("digits", digit_share, 1.0)], make_rows(tok), GRPOConfig(**cfg), out, seed=0)


def comparable(rows):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def test_prompt_sampler_is_a_permutation_per_epoch_and_seeded():
    s = PromptSampler(num_rows=6, batch_size=4, seed=3)
    order = s.batch(1) + s.batch(2) + s.batch(3)  # 12 draws = two epochs
    assert sorted(order[:6]) == list(range(6)) and sorted(order[6:]) == list(range(6))
    assert PromptSampler(6, 4, seed=3).batch(2) == s.batch(2)
    assert PromptSampler(6, 4, seed=4).batch(1) != s.batch(1)


def test_reward_rises_under_grpo(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path, steps=30, prompts_per_step=4, group_size=8, save_every=100)
    result = trainer.train()
    rewards = [m["reward"] for m in result.metrics]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 0.15, (first, last)
    assert result.metrics[-1]["kl"] > 0  # the policy moved away from the reference


def test_run_directory_contents_and_metric_names(tiny_model_dir, tmp_path):
    result = make_trainer(tiny_model_dir, tmp_path, steps=4, keep_checkpoints=1).train()
    metrics = read_jsonl(tmp_path / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    for key in ("reward", "reward_std", "rewards/digits/mean", "kl", "loss", "clip_ratio/region_mean", "completions/mean_length",
                "completions/max_length", "completions/clipped_ratio", "frac_reward_zero_std", "tokens_per_second", "step_time", "entropy", "grad_norm"):
        assert key in metrics[0], key
    assert all(0 <= m["frac_reward_zero_std"] <= 1 and m["completions/max_length"] <= 12 for m in metrics)
    samples = read_jsonl(tmp_path / "completions.jsonl")
    assert {s["step"] for s in samples} == {1, 2, 3, 4} and {"prompt", "completion", "rewards", "advantage"} <= set(samples[0])
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert ckpts == ["step-000004"]  # keep_checkpoints=1 pruned step-000002
    assert {"state", "rng.pt", "trainer_state.json"} <= {p.name for p in (tmp_path / "checkpoints/step-000004").iterdir()}
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    final, _ = load_model_and_tokenizer(result.final_dir)
    trained = dict(result and final.named_parameters())
    for name, p in make_trainer(tiny_model_dir, tmp_path / "other").model.named_parameters():
        if name == "model.embed_tokens.weight":
            assert not torch.equal(p, trained[name])  # the final model is the trained one, not the init


def test_same_seed_same_run(tiny_model_dir, tmp_path):
    a = make_trainer(tiny_model_dir, tmp_path / "a", steps=3).train().metrics
    b = make_trainer(tiny_model_dir, tmp_path / "b", steps=3).train().metrics
    assert comparable(a) == comparable(b)


def test_resume_reproduces_an_uninterrupted_run(tiny_model_dir, tmp_path, monkeypatch):
    full = make_trainer(tiny_model_dir, tmp_path / "full").train()

    # Interrupted run: dies at the start of step 6, after step 5's metrics were written but
    # before its checkpoint (checkpoints at steps 2 and 4).
    interrupted = make_trainer(tiny_model_dir, tmp_path / "cut")
    real_step = GRPOTrainer.step

    def dying_step(self, step):
        if step == 6:
            raise KeyboardInterrupt("killed")
        return real_step(self, step)

    monkeypatch.setattr(GRPOTrainer, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        interrupted.train()
    monkeypatch.setattr(GRPOTrainer, "step", real_step)
    assert [m["step"] for m in read_jsonl(tmp_path / "cut/metrics.jsonl")] == [1, 2, 3, 4, 5]

    with pytest.raises(FileExistsError, match="already holds checkpoints"):
        make_trainer(tiny_model_dir, tmp_path / "cut").train()
    resumed = make_trainer(tiny_model_dir, tmp_path / "cut")
    result = resumed.train(resume=True)
    assert comparable(read_jsonl(tmp_path / "cut/metrics.jsonl")) == comparable(full.metrics)
    assert comparable(result.metrics) == comparable(full.metrics)
    a, b = dict(full.final_dir and load_model_and_tokenizer(full.final_dir)[0].named_parameters()), dict(load_model_and_tokenizer(result.final_dir)[0].named_parameters())
    assert all(torch.equal(a[k], b[k]) for k in a)


#: Completion lengths the rollouts are cut to in the accumulation test (a random tiny model never
#: ends a completion by itself): short and long rows in every micro-batch of 2.
CUT_LENGTHS = [40, 3, 25, 9, 2, 33, 14, 40]


def _one_step_grads(model_dir, out, **overrides):
    trainer = make_trainer(model_dir, out, steps=1, **overrides)
    rollouts = []
    real_generate = trainer.engine.generate

    def cut(*args, **kwargs):
        rollout = real_generate(*args, **kwargs)
        for i, n in enumerate(CUT_LENGTHS):  # as if row i had ended after n tokens
            rollout.completion_mask[i, n:] = 0
            rollout.truncated[i] = n == rollout.completion_ids.shape[1]
        rollouts.append(rollout)
        return rollout

    trainer.engine.generate = cut
    metrics, _ = trainer.step(1)  # with μ = 1 the .grad fields keep the step's (accumulated) gradient
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return grads, metrics["grad_norm"], rollouts[0].lengths


@pytest.mark.parametrize(
    "settings",
    [
        {"loss_aggregation": "grpo"},
        {"loss_aggregation": "dapo"},
        {"loss_aggregation": "dr_grpo"},
        {"loss_aggregation": "grpo", "policy_loss": "gspo"},
        {"loss_aggregation": "dapo", "policy_loss": "cispo"},
        {"loss_aggregation": "grpo", "policy_loss": "sapo", "entropy_coef": 0.01},
    ],
    ids=["grpo", "dapo", "dr_grpo", "gspo", "cispo", "sapo+entropy"],
)
def test_gradient_accumulation_gives_the_same_gradient(tiny_model_dir, tmp_path, settings):
    # No gradient clipping: clipping rescales a too-large gradient to norm 1, which would hide a
    # micro-batch normalisation that is off by a constant factor. Completions of different
    # lengths, so that per-sequence and per-token normalisations differ.
    kw = dict(max_grad_norm=None, max_new_tokens=40, **settings)
    one, norm_one, lengths = _one_step_grads(tiny_model_dir, tmp_path / "one", **kw)
    four, norm_four, _ = _one_step_grads(tiny_model_dir, tmp_path / "four", gradient_accumulation_steps=4, **kw)
    assert len(set(lengths.tolist())) > 2, lengths  # the premise: lengths differ within the batch
    assert norm_four == pytest.approx(norm_one, rel=1e-4) and norm_one > 1e-3  # a real gradient, the same size
    assert one.keys() == four.keys() and len(one) > 5
    for k in one:
        assert torch.allclose(one[k], four[k], atol=1e-6, rtol=1e-4), k


def test_entropy_bonus_reaches_the_gradient(tiny_model_dir, tmp_path):
    plain, _, _ = _one_step_grads(tiny_model_dir, tmp_path / "plain", max_grad_norm=None)
    bonus, _, _ = _one_step_grads(tiny_model_dir, tmp_path / "bonus", max_grad_norm=None, entropy_coef=0.5)
    moved = max((plain[k] - bonus[k]).abs().max().item() for k in plain)
    assert moved > 1e-4  # the entropy's own gradient was added (a detached entropy would add nothing)


def test_gdpo_gets_each_reward_functions_values(tiny_model_dir, tmp_path, monkeypatch):
    import grpo.trainer as trainer_module

    calls = []
    real = trainer_module.compute_advantages
    monkeypatch.setattr(trainer_module, "compute_advantages", lambda *a, **k: calls.append(a) or real(*a, **k))
    model, tok = load_model_and_tokenizer(tiny_model_dir)
    chars = lambda prompts, completions, **_: [float(len(c)) for c in completions]  # noqa: E731
    terms = [RewardTerm("digits", digit_share, 1.0), RewardTerm("chars", chars, 0.5)]
    cfg = GRPOConfig(steps=1, prompts_per_step=2, group_size=4, max_new_tokens=12, advantage_estimator="gdpo", beta=0.0, progress=False)
    GRPOTrainer(model, tok, terms, make_rows(tok), cfg, tmp_path, seed=0).step(1)
    rewards, group_size, estimator, _, per_reward, weights = calls[0]
    assert estimator == "gdpo" and group_size == 4 and per_reward.shape == (8, 2) and weights.tolist() == [1.0, 0.5]
    assert torch.allclose(rewards, per_reward[:, 0] + 0.5 * per_reward[:, 1])  # the table the total was summed from


def test_multiple_iterations_clip_and_log(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path, steps=1, num_iterations=4, learning_rate=5e-2)
    metrics, _ = trainer.step(1)
    # μ = 4 passes with a large learning rate: later passes are off-policy and get clipped.
    assert metrics["clip_ratio/region_mean"] > 0


def test_beta_zero_loads_no_reference(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path, beta=0.0)
    metrics, _ = trainer.step(1)
    assert trainer.ref_model is None and "kl" not in metrics


def test_lora_uses_the_adapter_free_base_as_reference(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path, steps=3, lora=LoraSettings(r=4, alpha=8), learning_rate=5e-2)
    assert trainer.ref_model is None  # no second copy: disable_adapter() is the reference
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    result = trainer.train()
    assert result.metrics[0]["kl"] == 0.0  # LoRA B starts at zero: policy == reference
    assert result.metrics[-1]["kl"] > 0
    merged, _ = load_model_and_tokenizer(result.final_dir)  # merged into a plain model directory
    assert not any("lora" in n for n, _ in merged.named_parameters())


@pytest.mark.parametrize("mask_truncated", [False, True])
def test_truncated_completions_can_be_masked(tiny_model_dir, tmp_path, monkeypatch, mask_truncated):
    import grpo.trainer as trainer_module

    masks, rollouts = [], []
    real_loss = trainer_module.policy_loss
    monkeypatch.setattr(trainer_module, "policy_loss", lambda logp, old, adv, mask, **kw: masks.append(mask) or real_loss(logp, old, adv, mask, **kw))
    trainer = make_trainer(tiny_model_dir, tmp_path, steps=1, group_size=8, max_new_tokens=60, mask_truncated_completions=mask_truncated)
    real_generate = trainer.engine.generate
    trainer.engine.generate = lambda *a, **k: rollouts.append(real_generate(*a, **k)) or rollouts[-1]
    trainer.step(1)
    rollout, mask = rollouts[0], torch.cat(masks)
    assert 0 < rollout.truncated.sum() < len(rollout.truncated)  # both kinds present (seeded)
    assert torch.equal(mask[~rollout.truncated], rollout.completion_mask[~rollout.truncated])
    expected = torch.zeros_like(mask[rollout.truncated]) if mask_truncated else rollout.completion_mask[rollout.truncated]
    assert torch.equal(mask[rollout.truncated], expected)
