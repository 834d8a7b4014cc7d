"""Distillation: the per-token reverse-KL advantage (math, gradient, trainer) and the distill stage
(off-policy to a student with another tokenizer, on-policy with a teacher, the vocabulary check)."""

import copy
import json

import pytest
import torch
import yaml

from grpo.config import GRPOConfig
from grpo.distill import Teacher, VocabularyMismatch, check_same_vocabulary, reverse_kl_advantages
from grpo.io import read_jsonl
from grpo.loss import policy_loss
from grpo.scoring import RewardTerm
from grpo.tiny import build_char_tokenizer, build_tiny_model
from grpo.trainer import GRPOTrainer
from pipelines.cli import main


def test_reverse_kl_advantages_hand_computed():
    student = torch.tensor([[-1.0, -2.0], [-0.5, -3.0]])
    teacher = torch.tensor([[-1.5, -1.0], [-0.5, -2.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    rule = torch.tensor([1.0, -1.0])
    # r = s − t = [[0.5, −1], [0, (−1)]]; masked mean r̄ = (0.5 − 1 + 0) / 3 = −1/6
    no_baseline = reverse_kl_advantages(student, teacher, mask, rule, kl_weight=1.0, reward_weight=0.5, baseline=False)
    assert no_baseline.flatten().tolist() == pytest.approx([-0.5 + 0.5, 1.0 + 0.5, 0.0 - 0.5, 0.0])
    with_baseline = reverse_kl_advantages(student, teacher, mask, kl_weight=2.0)
    assert with_baseline.flatten().tolist() == pytest.approx([-2 * (0.5 + 1 / 6), -2 * (-1 + 1 / 6), -2 * (0 + 1 / 6), 0.0])


def test_policy_loss_takes_per_token_advantages():
    logp = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, _ = policy_loss(logp, None, torch.tensor([[1.0, -2.0, 5.0]]), mask)
    assert loss.item() == pytest.approx(-(1.0 - 2.0) / 2)  # ρ = 1: −mean over the masked tokens of A
    loss.backward()
    assert logp.grad.tolist() == [[-0.5, 1.0, 0.0]]


def test_sampled_reverse_kl_advantage_gives_the_reverse_kl_gradient():
    """E over y ~ π_s of ∇[−A(y)·log π_s(y)] with A = −(log π_s(y) − log π_T(y) − r̄) is
    ∇ KL(π_s ‖ π_T): checked against the exact gradient of one context's 6-token distribution."""
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(6, generator=gen, requires_grad=True)
    t = torch.randn(6, generator=gen) * 2
    exact = torch.autograd.grad((torch.softmax(z, 0) * (torch.log_softmax(z, 0) - torch.log_softmax(t, 0))).sum(), z)[0]
    y = torch.multinomial(torch.softmax(z, 0).detach(), 200_000, replacement=True, generator=gen)
    logp = torch.log_softmax(z, 0)[y].unsqueeze(1)  # 200k one-token completions of the same context
    teacher_logp = torch.log_softmax(t, 0)[y].unsqueeze(1)
    mask = torch.ones_like(logp)
    loss, _ = policy_loss(logp, None, reverse_kl_advantages(logp, teacher_logp, mask), mask, aggregation="grpo")
    sampled = torch.autograd.grad(loss, z)[0]
    assert torch.nn.functional.cosine_similarity(sampled, exact, dim=0).item() > 0.999
    assert sampled.norm().item() == pytest.approx(exact.norm().item(), rel=0.05)


def _eos_teacher(student, tokenizer, bias: float = 6.0):
    """The student with a bias towards ending: the same network plus +bias on the eos logit."""
    teacher = copy.deepcopy(student)
    head = torch.nn.Linear(student.lm_head.in_features, len(tokenizer), bias=True)
    with torch.no_grad():
        head.weight.copy_(student.lm_head.weight)
        head.bias.zero_()
        head.bias[tokenizer.eos_token_id] = bias
    teacher.lm_head = head
    return teacher


def test_on_policy_distillation_moves_the_student_to_its_teacher(tmp_path):
    tokenizer = build_char_tokenizer()
    student = build_tiny_model(tokenizer, seed=1)
    teacher = _eos_teacher(student, tokenizer)
    rows = [{"prompt": f"{a}+{b}="} for a in range(5) for b in range(5)]
    zero = RewardTerm("zero", lambda prompts, completions, **kwargs: [0.0] * len(completions))
    config = GRPOConfig(steps=30, prompts_per_step=2, group_size=4, max_new_tokens=8, learning_rate=1e-2, beta=0.0, progress=False, save_every=100)
    metrics = GRPOTrainer(student, tokenizer, [zero], rows, config, tmp_path, teacher=Teacher(teacher, tokenizer)).train().metrics
    kl = [m["distill/reverse_kl"] for m in metrics]
    length = [m["completions/mean_length"] for m in metrics]
    # the teacher ends after one token more often than not; the student learns to, from its own samples
    assert sum(kl[:5]) / 5 > 0.8 and sum(kl[-5:]) / 5 < 0.4
    assert sum(length[:5]) / 5 == pytest.approx(8, abs=0.5) and sum(length[-5:]) / 5 < 4


def test_vocabulary_check():
    student = build_char_tokenizer()
    check_same_vocabulary(student, build_char_tokenizer(), teacher_vocab_size=len(student))
    with pytest.raises(VocabularyMismatch, match=r"share the student's vocabulary .* use mode: off_policy"):
        check_same_vocabulary(build_char_tokenizer(extra_chars="Æ"), student)
    with pytest.raises(VocabularyMismatch, match="output layer has 10 logits"):
        check_same_vocabulary(student, build_char_tokenizer(), teacher_vocab_size=10)


ARITH = {"max_value": 9, "ops": "+"}


@pytest.mark.slow
def test_distill_stage_off_policy_other_tokenizer_and_on_policy(tiny_model_dir, tmp_path, capsys):
    from grpo.tiny import save_tiny

    other_tokenizer = save_tiny(tmp_path / "other", extra_chars="ÆØÅ", hidden_size=32, num_layers=1, seed=3)
    same_tokenizer = save_tiny(tmp_path / "small", hidden_size=32, num_layers=1, seed=4)
    out = tmp_path / "run"
    recipe = {
        "name": "distill", "model": tiny_model_dir, "output_dir": str(out),
        "data": {"train": {"source": "synthetic:arithmetic", "size": 16, "options": ARITH},
                 "eval": {"source": "synthetic:arithmetic", "size": 2, "seed": 1, "options": ARITH}},
        "rewards": {"accuracy": 1.0, "language_consistency": 0.5},
        "grpo": {"steps": 2, "prompts_per_step": 2, "group_size": 2, "max_new_tokens": 6, "learning_rate": 1e-3,
                 "save_every": 10, "progress": False, "beta": 0.0},
        "stages": [
            {"name": "kd", "kind": "distill", "mode": "on_policy", "init": same_tokenizer, "teacher": tiny_model_dir},
            {"name": "sft_distill", "kind": "distill", "init": other_tokenizer, "teacher": "stages.kd", "keep": {}, "drop_truncated": False,
             "samples_per_prompt": 2, "max_prompts": 4, "sampling": {"max_new_tokens": 12},
             "sft": {"max_steps": 4, "batch_size": 4, "learning_rate": 3e-3, "max_length": 128, "progress": False}},
            {"name": "eval", "kind": "eval", "init": "stages.sft_distill", "samples_per_prompt": 2},
        ],
    }
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    # a student of another vocabulary cannot be taught on-policy: one line, before training
    recipe_bad = copy.deepcopy(recipe)
    recipe_bad["output_dir"] = str(tmp_path / "bad")
    recipe_bad["stages"] = [{"name": "kd", "kind": "distill", "mode": "on_policy", "init": other_tokenizer, "teacher": tiny_model_dir}]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(recipe_bad))
    assert main(["run", str(tmp_path / "bad.yaml")]) == 2
    assert "teacher: on-policy distillation needs the teacher to share the student's vocabulary" in capsys.readouterr().err

    assert main(["run", str(path)]) == 0
    # off-policy: the teacher's samples are the SFT data of a student with another tokenizer
    data = read_jsonl(out / "sft_distill" / "data.jsonl")
    samples = read_jsonl(out / "sft_distill" / "samples.jsonl")
    assert len(data) == 4 and {d["completion"] for d in data} <= {s["completion"] for s in samples}
    losses = [r["loss"] for r in read_jsonl(out / "sft_distill" / "metrics.jsonl")]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert json.loads((out / "sft_distill" / "final" / "config.json").read_text())["vocab_size"] > 0
    # the on-policy student of the first stage is the off-policy teacher (a stage reference)
    manifest = json.loads((out / "manifest.json").read_text())
    sft_distill = next(s for s in manifest["stages"] if s["name"] == "sft_distill")
    assert sft_distill["inputs"]["teacher"] == str(out / "kd" / "final")
    metrics = read_jsonl(out / "kd" / "metrics.jsonl")
    assert len(metrics) == 2 and all(isinstance(m["distill/reverse_kl"], float) for m in metrics)
    assert (out / "eval" / "eval.json").exists()


def test_distill_stage_validation(tiny_model_dir, tmp_path):
    from grpo.schema import ConfigError
    from pipelines.recipe import load_recipe

    base = {"name": "d", "model": tiny_model_dir, "data": {"train": "synthetic:arithmetic"}}
    cases = [
        ({"name": "kd", "kind": "distill", "mode": "on_policy", "teacher": "stages.nope"}, r"stages\[0\]\.teacher: refers to stage 'nope', which does not exist"),
        ({"name": "kd", "kind": "distill", "mode": "on_policy", "teacher": "x", "sft": {"epochs": 2}}, r"stages\[0\]\.sft: only used with mode: off_policy"),
        ({"name": "kd", "kind": "distill", "teacher": "x", "kl_weight": 2.0}, r"stages\[0\]\.kl_weight: only used with mode: on_policy"),
        ({"name": "kd", "kind": "distill", "teacher": "x", "keep": {"acuracy": 1.0}}, r"stages\[0\]\.keep\.acuracy: not one of this stage's rewards"),
        ({"name": "kd", "kind": "distill", "mode": "on_policy", "teacher": "x", "kl_weight": 0.0}, r"kl_weight: kl_weight and reward_weight must be ≥ 0, not both 0"),
        ({"name": "kd", "kind": "distill", "mode": "offpolicy", "teacher": "x"}, r"stages\[0\]\.mode: expected one of 'off_policy', 'on_policy'"),
    ]
    for stage, message in cases:
        path = tmp_path / "r.yaml"
        path.write_text(yaml.safe_dump({**base, "stages": [stage]}))
        with pytest.raises(ConfigError, match=message):
            load_recipe(path)
