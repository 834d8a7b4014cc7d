"""Precision: what each name means, how `auto` decides, and that bf16-mixed learns where pure bf16 cannot."""

import json

import pytest
import torch

from grpo import precision as P
from grpo.config import GRPOConfig
from grpo.models import load_model_and_tokenizer
from grpo.packed import PackedLinears
from grpo.precision import Precision, bf16_update_loss, requested_precision, resolve_precision
from grpo.scoring import RewardTerm
from grpo.trainer import GRPOTrainer

from test_trainer import digit_share, make_rows

BF16_KERNELS = PackedLinears.supported(torch.nn.Linear(2, 2), torch.bfloat16)


def test_dtype_stands_for_precision_where_it_means_the_same():
    assert requested_precision(None, "float32")[0] == "fp32"
    assert requested_precision(None, "bfloat16")[0] == "bf16"  # pure: what `dtype: bfloat16` always meant
    assert requested_precision(None, "auto")[0] == "checkpoint"
    assert requested_precision("bf16-mixed", "bfloat16") == ("bf16-mixed", "precision: bf16-mixed in the recipe")
    with pytest.raises(ValueError, match="precision: expected one of 'auto', 'fp32', 'bf16-mixed', 'bf16', got 'fp8'"):
        requested_precision("fp8", None)
    mixed = Precision("bf16-mixed", "x")
    assert (mixed.param_dtype, mixed.compute_dtype, mixed.reduce_dtype) == (torch.float32, torch.bfloat16, torch.float32)
    assert mixed.fsdp_mixed_precision().param_dtype == torch.bfloat16 and Precision("fp32", "x").fsdp_mixed_precision() is None


def test_auto_decides_by_device_and_measured_probe(monkeypatch):
    def never(**_):
        raise AssertionError("the probe must not run")

    monkeypatch.setattr(P, "cpu_bf16_flags", lambda: [])
    got = resolve_precision("auto", "cpu", probe=never)
    assert got.name == "fp32" and "no bf16 instructions" in got.reason

    monkeypatch.setattr(P, "cpu_bf16_flags", lambda: ["avx512_bf16"])
    got = resolve_precision("auto", "cpu", probe=lambda: {"decode": 1.7, "train": 3.6, "threads": 1})
    assert got.name == "bf16-mixed" and "decode 1.70×, train 3.60×" in got.reason and got.probe["train"] == 3.6
    got = resolve_precision("auto", "cpu", probe=lambda: {"decode": 0.8, "train": 3.6})
    assert got.name == "fp32" and "not measured faster" in got.reason and "decode 0.80×" in got.reason

    monkeypatch.setenv("WORLD_SIZE", "2")  # ranks must agree: no racing probes
    assert resolve_precision("auto", "cpu", probe=never).name == "fp32"
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setattr(P, "cpu_bf16_flags", lambda: [])
    assert "emulated" in resolve_precision("bf16-mixed", "cpu").reason  # asked for explicitly: honoured, with a note


def test_bf16_update_loss_by_hand():
    w = torch.tensor([0.0, 1e-4, 0.02, 0.5])  # |w|·2^-9 = 0, 1.95e-7, 3.9e-5, 9.8e-4
    assert bf16_update_loss([w], 1e-6) == 0.5  # 0.02 and 0.5 cannot move by 1e-6 in bf16
    assert bf16_update_loss([w], 1e-3) == 0.0
    # the rule agrees with bf16 rounding itself (away from the factor-2 band where |w|·2^-9 ≤ half a spacing < |w|·2^-8)
    for value, lr in ((0.02, 1e-6), (0.02, 1e-4), (0.5, 5e-4), (0.5, 2e-3)):
        x = torch.tensor(value, dtype=torch.bfloat16)
        assert (float(x + lr) == float(x)) == (bf16_update_loss([torch.tensor(value)], lr) > 0)


def _ten_steps(model_dir, tmp_path, name, dtype):
    model, tok = load_model_and_tokenizer(model_dir, dtype=dtype)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = GRPOConfig(steps=10, prompts_per_step=2, group_size=4, max_new_tokens=8, learning_rate=1e-6, beta=0.04,
                     save_every=100, progress=False)
    trainer = GRPOTrainer(model, tok, [RewardTerm("digits", digit_share, 1.0)], make_rows(tok), cfg, tmp_path / name, seed=0,
                          precision=Precision(name, "test"))
    for step in range(1, 11):
        trainer.step(step)
    changed = sum(int((p.detach() != before[n]).sum()) for n, p in trainer.model.named_parameters())
    return trainer, changed / sum(p.numel() for p in trainer.model.parameters())


def test_bf16_mixed_moves_the_weights_where_pure_bf16_rounds_the_updates_away(tiny_model_dir, tmp_path):
    mixed, mixed_changed = _ten_steps(tiny_model_dir, tmp_path, "bf16-mixed", torch.float32)
    assert mixed_changed >= 0.9, mixed_changed
    # float32 master weights and AdamW state, bf16 compute
    assert all(p.dtype == torch.float32 for p in mixed.model.parameters())
    assert {s["exp_avg"].dtype for s in mixed.optimizer.state.values()} == {torch.float32}
    with pytest.warns(UserWarning, match=r"precision: bf16 \(pure\) at learning_rate 1e-06: for \d+% .* round away"):
        pure, pure_changed = _ten_steps(tiny_model_dir, tmp_path, "bf16", torch.bfloat16)
    assert pure_changed < 0.1, pure_changed


def test_bf16_mixed_trains_in_bf16_and_says_so(tiny_model_dir, tmp_path):
    model, tok = load_model_and_tokenizer(tiny_model_dir)
    cfg = GRPOConfig(steps=1, prompts_per_step=2, group_size=4, max_new_tokens=6, beta=0.04, progress=False)
    trainer = GRPOTrainer(model, tok, [RewardTerm("digits", digit_share, 1.0)], make_rows(tok), cfg, tmp_path,
                          precision=Precision("bf16-mixed", "because"))
    seen = []
    q_proj = trainer.model.model.layers[0].self_attn.q_proj
    hook = q_proj.register_forward_hook(lambda m, args, out: seen.append((torch.is_grad_enabled(), out.dtype)))
    trainer.train()
    hook.remove()
    assert (True, torch.bfloat16) in seen  # the policy's training forward multiplies in bf16
    assert trainer.engine.compute_dtype == torch.bfloat16  # and so do its rollouts
    if BF16_KERNELS:
        assert trainer.ref_packed.enabled and trainer.ref_packed.dtype == torch.bfloat16
    info = json.loads((tmp_path / "precision.json").read_text())
    assert info["precision"] == "bf16-mixed" and info["param_dtype"] == "float32" and info["compute_dtype"] == "bfloat16"
    assert info["reason"] == "because" and info["rollout_correction"] == "tis"
    assert trainer.describe_precision().startswith("precision: bf16-mixed (weights float32, compute bfloat16) — because")
    with pytest.raises(ValueError, match="precision: bf16-mixed trains float32 weights, but the model was loaded in bfloat16"):
        GRPOTrainer(model.to(torch.bfloat16), tok, [RewardTerm("digits", digit_share, 1.0)], make_rows(tok), cfg, tmp_path / "x",
                    precision=Precision("bf16-mixed", ""))


@pytest.mark.skipif(not BF16_KERNELS, reason="oneDNN has no bf16 kernels for this CPU")
def test_bf16_packed_weights_multiply_like_bf16_linear():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.Linear(96, 32, bias=False))
    x = torch.randn(5, 64)
    with torch.no_grad():
        expected = model.to(torch.bfloat16)(x.bfloat16()).float()
        model.float()
        with PackedLinears(model, dtype=torch.bfloat16):
            got = model(x)
        plain = model(x)
    assert got.dtype == torch.float32  # float32 in and out: only the products run in bf16
    assert (got - expected).abs().max() < 0.05 * expected.abs().max()
    assert (got - plain).abs().max() > 0  # it did not fall back to float32


def test_sft_goes_through_trls_mixed_precision_switch(tiny_model_dir, tmp_path, capsys):
    from grpo.sft import SFTSettings, sft_config, train_sft
    from grpo.templates import TemplateSpec

    settings = SFTSettings(max_steps=2, batch_size=2, max_length=48, progress=False)
    assert sft_config(settings, tmp_path, 0, Precision("bf16-mixed", "")).bf16 is True
    assert sft_config(settings, tmp_path, 0, Precision("fp32", "")).bf16 is False
    assert sft_config(settings, tmp_path, 0, Precision("bf16", "")).bf16 is False  # pure: the weights themselves are bf16
    from transformers import TrainerCallback

    seen = []

    class Watch(TrainerCallback):  # what dtype the training forward multiplies in
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            q_proj = model.get_decoder().layers[0].self_attn.q_proj
            q_proj.register_forward_hook(lambda m, a, out: seen.append((torch.is_grad_enabled(), m.weight.dtype, out.dtype)))

    rows = [{"prompt": f"{i}+{i}?", "completion": str(2 * i)} for i in range(6)]
    final = train_sft(tiny_model_dir, rows, TemplateSpec(kind="chat"), settings, tmp_path / "sft", precision="bf16-mixed",
                      callbacks=[Watch()])
    assert (True, torch.float32, torch.bfloat16) in seen  # float32 weights, bf16 products: TRL's autocast
    info = json.loads((tmp_path / "sft" / "precision.json").read_text())
    assert info["precision"] == "bf16-mixed" and info["param_dtype"] == "float32"
    assert "precision: bf16-mixed (weights float32, compute bfloat16)" in capsys.readouterr().out
    model, _ = load_model_and_tokenizer(final, dtype="auto")
    assert next(model.parameters()).dtype == torch.float32  # the master weights are what is saved


def test_a_resumed_auto_run_keeps_the_precision_it_started_with(tiny_model_dir, tmp_path, monkeypatch):
    from pipelines.train import load_for_training

    (tmp_path / "precision.json").write_text(json.dumps({"precision": "bf16-mixed", "reason": "auto: measured", "probe": {"train": 3.0}}))
    monkeypatch.setattr(P, "resolve_precision", lambda *a, **k: pytest.fail("a resumed auto run must not decide again"))
    model, _, got = load_for_training(tiny_model_dir, "auto", "float32", "cpu", tmp_path, resume=True)
    assert got.name == "bf16-mixed" and "as this run started" in got.reason and next(model.parameters()).dtype == torch.float32
    monkeypatch.undo()
    assert load_for_training(tiny_model_dir, "fp32", "float32", "cpu", tmp_path, resume=True)[2].name == "fp32"  # explicit wins
