"""Data-parallel GRPO (grpo/distributed.py): two CPU processes (gloo) make the step one process makes.

The two-process runs are real launches, ``grpo train --num-processes 2`` (torchrun underneath)
and ``accelerate launch --config_file configs/accelerate/ddp_cpu.yaml``, compared with a
one-process run of the same recipe: the same completions and rewards, the same metrics, and the
same weights up to float rounding (the ranks sum their gradients in another order than one
process does). The tiny model is made to end its completions early and at random, so the two
ranks hold different numbers of completion tokens, the case that makes ``bnpo`` interesting.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from grpo.config import GRPOConfig
from grpo.distributed import DataParallel, check_data_parallel
from grpo.io import read_jsonl
from grpo.loss import AGGREGATIONS, BatchShape
from grpo.schema import ConfigError
from grpo.trainer import TIMING_KEYS
from pipelines.cli import main

ROOT = Path(__file__).resolve().parents[1]
REWARD_MODULE = '''
def digit_share(prompts, completions, **_):
    return [sum(ch.isdigit() for ch in c) / max(1, len(c)) for c in completions]
'''


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny model whose end-of-sequence token is likely enough that completion lengths vary,
    and a reward module the launched processes import (through PYTHONPATH)."""
    from grpo.tiny import build_char_tokenizer, build_tiny_model

    root = tmp_path_factory.mktemp("ddp")
    tok = build_char_tokenizer()
    model = build_tiny_model(tok, seed=0)
    with torch.no_grad():
        emb = model.model.embed_tokens.weight  # tied to the output layer: this row is eos's logit direction
        emb[tok.eos_token_id] = 2.0 * emb.mean(0) / emb.mean(0).norm()
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    (root / "ddp_rewards.py").write_text(REWARD_MODULE)
    return root


def write_recipe(setup: Path, tmp_path: Path, **grpo) -> str:
    recipe = {
        "name": "ddp",
        "model": str(setup / "model"),
        "seed": 0,
        "output_dir": str(tmp_path / "unused"),
        "data": {"train": {"source": "synthetic:arithmetic", "size": 40, "options": {"max_value": 9, "ops": "+"}}},
        "template": {"kind": "chat", "system": "Be brief."},
        "rewards": {"ddp_rewards:digit_share": 1.0, "length": {"weight": 0.5, "target_tokens": 6}},
        "grpo": {"steps": 2, "prompts_per_step": 4, "group_size": 4, "max_new_tokens": 12, "learning_rate": 1e-3,
                 "save_every": 2, "progress": False, **grpo},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def one_process(recipe: str, out: Path, setup: Path, monkeypatch) -> None:
    import grpo.plots

    monkeypatch.syspath_prepend(str(setup))
    monkeypatch.setattr(grpo.plots, "plot_training_curves", lambda *args, **kwargs: None)  # seconds, and not under test
    assert main(["train", recipe, "--set", f"output_dir={out}"]) == 0


def launch(cmd: list[str], setup: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(setup), str(ROOT)]), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]


def assert_same_run(one: Path, two: Path, init: Path) -> dict:
    """Weights, metrics and logged completions of two runs agree; returns the largest differences."""
    from safetensors.torch import load_file

    a, b, w0 = (load_file(p / "model.safetensors") for p in (one / "final", two / "final", init))
    assert a.keys() == b.keys()
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    update = max((a[k] - w0[k]).abs().max().item() for k in a)
    update_diff = max(((b[k] - w0[k]) - (a[k] - w0[k])).abs().max().item() for k in a)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-5, msg=lambda m: f"{k}: {m}")
    assert update > 1e-4 and update_diff <= 1e-2 * update, (update, update_diff)  # the step itself agrees to 1%

    ma, mb = read_jsonl(one / "metrics.jsonl"), read_jsonl(two / "metrics.jsonl")
    assert [m["step"] for m in mb] == [m["step"] for m in ma] == [1, 2]
    for x, y in zip(ma, mb):
        assert x.keys() == y.keys()
        for key in x.keys() - set(TIMING_KEYS):
            if isinstance(x[key], float):
                assert y[key] == pytest.approx(x[key], rel=1e-4, abs=1e-6), (x["step"], key)
            else:
                assert y[key] == x[key], (x["step"], key)
    assert ma[0]["reward_std"] > 0 and ma[-1]["grad_norm"] > 0  # the rewards differ within groups: a real update

    ca, cb = read_jsonl(one / "completions.jsonl"), read_jsonl(two / "completions.jsonl")
    same = ("step", "prompt", "completion", "reward", "rewards", "length", "truncated")
    assert [{k: r[k] for k in same} for r in cb] == [{k: r[k] for k in same} for r in ca]
    assert [r["advantage"] for r in cb] == pytest.approx([r["advantage"] for r in ca], abs=1e-6)
    assert len({r["length"] for r in ca}) > 1  # completions of different lengths
    print(f"\nmax |Δweight| {diff:.3g}, max |Δupdate| {update_diff:.3g} of max update {update:.3g}")
    return {"weights": diff, "update": update_diff}


def test_two_processes_resume_and_match_one_process_grpo(setup, tmp_path, monkeypatch):
    """`grpo train --num-processes 2 --resume` from the one-process run's step-1 checkpoint: both
    ranks load it, and step 2 (grpo aggregation) ends where the one-process run's step 2 ends."""
    recipe = write_recipe(setup, tmp_path, loss_aggregation="grpo", save_every=1)
    one, two = tmp_path / "one", tmp_path / "two"
    one_process(recipe, one, setup, monkeypatch)
    shutil.copytree(one, two)
    shutil.rmtree(two / "checkpoints" / "step-000002")
    shutil.rmtree(two / "final")
    launch([sys.executable, "-m", "pipelines.cli", "train", recipe, "--set", f"output_dir={two}", "--resume", "--num-processes", "2"], setup)
    assert_same_run(one, two, setup / "model")
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["step-000001", "step-000002"]


def test_accelerate_launch_two_processes_match_one_process_bnpo(setup, tmp_path, monkeypatch):
    """`accelerate launch` with the shipped CPU config, bnpo (a token mean over a micro-batch
    that the two ranks share, with different token counts), two steps from scratch."""
    recipe = write_recipe(setup, tmp_path, loss_aggregation="bnpo")
    one, two = tmp_path / "one", tmp_path / "two"
    one_process(recipe, one, setup, monkeypatch)
    launch([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "configs/accelerate/ddp_cpu.yaml"),
            "-m", "pipelines.cli", "train", recipe, "--set", f"output_dir={two}"], setup)
    assert_same_run(one, two, setup / "model")
    assert not list(two.glob(".*.tmp*"))  # only rank 0 wrote, and it finished every write


class Rank(DataParallel):
    """Rank ``rank`` of ``world_size`` in one process: gather() returns what every rank would give."""

    def __init__(self, rank, world_size, whole_mask):
        super().__init__(rank, world_size)
        self.whole_mask = whole_mask

    def gather(self, values):
        return self.whole_mask.sum(dim=1).tolist()  # the only gather whole_batch_shape makes


@pytest.mark.parametrize("aggregation", sorted(AGGREGATIONS))
@pytest.mark.parametrize("world_size, micro_batches", [(2, 1), (2, 2), (2, 4), (4, 1), (4, 2), (4, 8)])
def test_rank_losses_add_up_to_the_one_process_loss(aggregation, world_size, micro_batches):
    """The trainer's micro-batching, per rank with the whole batch's BatchShape: the ranks' losses
    (and so, the loss being linear in the per-token terms, their summed gradients) add up to the
    one-process loss, for every aggregation and every allowed split."""
    g = torch.Generator().manual_seed(world_size * 100 + micro_batches)
    N, T = 16, 9
    per_token = torch.randn(N, T, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, T + 1, (N,), generator=g)
    mask = (torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)).double()

    def trainer_loss(dist: DataParallel, rows: slice) -> float:
        m = mask[rows]
        n = m.shape[0]
        shape = BatchShape(num_sequences=n, num_tokens=int(m.sum()), num_micro_batches=micro_batches, max_completion_length=T)
        micro = n // micro_batches
        if dist.active:
            shape, micro = dist.whole_batch_shape(shape, m)
        idx = torch.arange(rows.start, rows.stop)
        return sum(AGGREGATIONS[aggregation](per_token[idx[c]], m[c], shape).item() for c in (slice(i, i + micro) for i in range(0, n, micro)))

    single = trainer_loss(DataParallel(), slice(0, N))
    n = N // world_size
    shares = [trainer_loss(Rank(r, world_size, mask), slice(r * n, (r + 1) * n)) for r in range(world_size)]
    assert sum(shares) == pytest.approx(single, rel=1e-12)


def test_configurations_that_cannot_be_split_are_one_line_errors(setup, tmp_path, monkeypatch, capsys):
    recipe = write_recipe(setup, tmp_path)
    monkeypatch.syspath_prepend(str(setup))
    assert main(["train", recipe, "--num-processes", "3"]) == 2  # checked before any process starts
    assert "grpo.prompts_per_step: must be divisible by the number of processes (3)" in capsys.readouterr().err
    assert main(["train", recipe, "--num-processes", "2", "--set", "grpo.dynamic_sampling=true"]) == 2
    assert "dynamic_sampling is not supported with --num-processes > 1 yet" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="grpo.gradient_accumulation_steps: must be a multiple or a divisor"):
        check_data_parallel(GRPOConfig(prompts_per_step=6, group_size=2, gradient_accumulation_steps=3), 2)
    check_data_parallel(GRPOConfig(prompts_per_step=6, group_size=2, gradient_accumulation_steps=3), 1)  # one process: anything goes
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ConfigError, match="DeepSpeed and FSDP are not supported yet"):
        check_data_parallel(GRPOConfig(), 2)


def test_accelerate_config_files_load():
    from accelerate.commands.config.config_args import load_config_from_file

    configs = {p.name: load_config_from_file(str(p)) for p in sorted((ROOT / "configs/accelerate").glob("*.yaml"))}
    assert set(configs) == {"ddp_cpu.yaml", "ddp_multi_gpu.yaml", "deepspeed_zero2.yaml", "deepspeed_zero3.yaml", "fsdp.yaml"}
    assert configs["ddp_cpu.yaml"].num_processes == 2
    assert {str(c.distributed_type).split(".")[-1] for c in configs.values()} == {"MULTI_GPU", "DEEPSPEED", "FSDP"}
    assert configs["deepspeed_zero3.yaml"].deepspeed_config["zero_stage"] == 3
