"""Distributed GRPO (grpo/distributed.py, grpo/parallel.py): real processes on the CPU (gloo) make
the steps one process makes, under DDP and under FSDP2.

Every multi-process run is a real launch: ``grpo train --num-processes 2`` (torchrun underneath),
two ``grpo train --nnodes 2 --node-rank i`` commands meeting on 127.0.0.1 (two "machines"), and
``accelerate launch`` with a shipped config. Each is compared with a one-process run of the same
recipe: the same completions and rewards, the same metrics, and the same weights up to float
rounding (the ranks sum their gradients in another order than one process does). The tiny model
is made to end its completions early and at random, so the two ranks hold different numbers of
completion tokens: ``bnpo`` (a token mean over a micro-batch the two ranks share) is the case
where a wrong normalisation would show.

    run                                  strategy  weights  from                   checks
    grpo train --num-processes 2         ddp       full     scratch                = 1 process; memory
    2 × grpo train --nnodes 2            fsdp      full     scratch                = 1 process; memory ≈ ddp/2;
                                                                                   rollouts gathered per layer
                                                                                   (the ranks decode in step)
    accelerate launch fsdp_cpu.yaml      fsdp      LoRA     1-process checkpoint   = 1 process: resume with
                                                            (step 1), --resume     N 1 → 2
    grpo train --num-processes 2, kill   ddp       LoRA     scratch                stops; --resume in 1
    -9 one rank in step 2                                                          process = 1 process
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from grpo.config import GRPOConfig
from grpo.distributed import DataParallel, check_data_parallel
from grpo.io import read_jsonl
from grpo.launch import DistributedSettings, Launch
from grpo.loss import AGGREGATIONS, BatchShape
from grpo.schema import ConfigError
from grpo.trainer import TIMING_KEYS
from pipelines.cli import main

ROOT = Path(__file__).resolve().parents[1]
REWARD_MODULE = '''
def digit_share(prompts, completions, **_):
    return [sum(ch.isdigit() for ch in c) / max(1, len(c)) for c in completions]
'''
MEMORY_KEYS = ("memory/params_mib", "memory/grads_mib", "memory/optimizer_mib")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny model whose end-of-sequence token is likely enough that completion lengths vary,
    a reward module the launched processes import (through PYTHONPATH), and the two recipes."""
    from grpo.tiny import build_char_tokenizer, build_tiny_model

    root = tmp_path_factory.mktemp("dist")
    tok = build_char_tokenizer()
    model = build_tiny_model(tok, seed=0)
    with torch.no_grad():
        emb = model.model.embed_tokens.weight  # tied to the output layer: this row is eos's logit direction
        emb[tok.eos_token_id] = 2.0 * emb.mean(0) / emb.mean(0).norm()
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    (root / "ddp_rewards.py").write_text(REWARD_MODULE)
    write_recipe(root, "full")
    write_recipe(root, "lora", lora={"r": 4, "alpha": 8})
    return root


def write_recipe(root: Path, name: str, **grpo) -> str:
    recipe = {
        "name": name,
        "model": str(root / "model"),
        "seed": 0,
        "output_dir": str(root / "unused"),
        "data": {"train": {"source": "synthetic:arithmetic", "size": 40, "options": {"max_value": 9, "ops": "+"}}},
        "template": {"kind": "chat", "system": "Be brief."},
        "rewards": {"ddp_rewards:digit_share": 1.0, "length": {"weight": 0.5, "target_tokens": 6}},
        "grpo": {"steps": 2, "prompts_per_step": 4, "group_size": 4, "max_new_tokens": 12, "learning_rate": 1e-3,
                 "loss_aggregation": "bnpo", "save_every": 1, "progress": False, **grpo},
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def env(setup: Path) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(setup), str(ROOT)]), "OMP_NUM_THREADS": "1"}


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli", *args]


def launch(cmd: list[str], setup: Path, timeout: float = 240) -> None:
    """Run a launch to its end; one that hangs (ranks out of step) is killed with all its processes."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env(setup), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"{' '.join(cmd[:6])} ... did not finish in {timeout:.0f} s")
    assert proc.returncode == 0, err[-4000:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def one_process(setup):
    """The uninterrupted one-process runs of both recipes (in this process, no curves)."""
    import grpo.plots

    runs = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(setup))
        mp.setattr(grpo.plots, "plot_training_curves", lambda *args, **kwargs: None)  # seconds, and not under test
        for name in ("full", "lora"):
            runs[name] = setup / f"one-{name}"
            assert main(["train", str(setup / f"{name}.yaml"), "--set", f"output_dir={runs[name]}"]) == 0
    return runs


def assert_same_run(one: Path, two: Path, init: Path) -> dict:
    """Weights, metrics and logged completions of two runs agree; returns the largest differences."""
    from safetensors.torch import load_file

    a, b, w0 = (load_file(p / "model.safetensors") for p in (one / "final", two / "final", init))
    assert a.keys() == b.keys() == w0.keys()
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
    print(f"\n{two.name}: max |Δweight| {diff:.3g}, max |Δupdate| {update_diff:.3g} of max update {update:.3g}")
    return {"weights": diff, "update": update_diff}


def memory(run: Path) -> dict:
    return {k: read_jsonl(run / "metrics.jsonl")[-1][k] for k in MEMORY_KEYS}


@pytest.fixture(scope="module")
def ddp_run(setup):
    run = setup / "ddp"
    launch(cli("train", str(setup / "full.yaml"), "--set", f"output_dir={run}", "--set", "distributed.strategy=ddp",
               "--num-processes", "2"), setup)
    return run


@pytest.fixture(scope="module")
def fsdp_two_nodes_run(setup):
    """Two "machines" of one process each (rendezvous on 127.0.0.1), FSDP, two steps from scratch,
    with ``rollout_weights: per_layer``: each layer gathered per forward, so the two ranks, whose
    completions end at different steps (step 2 has no truncated one), must decode in step; a rank
    that does not leaves the other's all-gathers unmatched (gloo aborts, or the launch times out)."""
    run = setup / "fsdp-two-nodes"
    port = str(free_port())
    nodes = [
        subprocess.Popen(cli("train", str(setup / "full.yaml"), "--set", f"output_dir={run}", "--set", "distributed.strategy=fsdp",
                             "--set", "distributed.rollout_weights=per_layer", "--nnodes", "2", "--node-rank", str(rank), "--num-processes", "1",
                             "--master-addr", "127.0.0.1", "--master-port", port),
                         cwd=ROOT, env=env(setup), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
        for rank in (0, 1)
    ]
    try:
        errors = [node.communicate(timeout=240)[1] for node in nodes]
    except subprocess.TimeoutExpired:
        for node in nodes:
            os.killpg(node.pid, signal.SIGKILL)
        pytest.fail("the two-node run did not finish in 240 s")
    for node, err in zip(nodes, errors):
        assert node.returncode == 0, err[-4000:]
    return run


@pytest.mark.slow
def test_ddp_two_processes_equal_one_process(setup, one_process, ddp_run):
    assert_same_run(one_process["full"], ddp_run, setup / "model")
    assert sorted(p.name for p in (ddp_run / "checkpoints").iterdir()) == ["step-000001", "step-000002"]
    assert not list(ddp_run.rglob(".*.tmp*"))  # every write finished
    # What DDP holds per rank is the whole model: the measurement counts every weight.
    params = sum(p.numel() * p.element_size() for p in _load(setup / "model").parameters()) / 2**20
    assert memory(ddp_run)["memory/params_mib"] == pytest.approx(params)


@pytest.mark.slow
def test_fsdp_on_two_nodes_equals_one_process(setup, one_process, fsdp_two_nodes_run):
    assert_same_run(one_process["full"], fsdp_two_nodes_run, setup / "model")
    state = yaml.safe_load((fsdp_two_nodes_run / "checkpoints" / "step-000002" / "trainer_state.json").read_text())
    assert (state["world_size"], state["strategy"]) == (2, "fsdp")
    assert sorted(p.name for p in (fsdp_two_nodes_run / "checkpoints" / "step-000002" / "state").iterdir()) == [
        ".metadata", "__0_0.distcp", "__1_0.distcp"]  # each rank wrote its own shards


@pytest.mark.slow
def test_fsdp_holds_half_of_what_ddp_holds_per_rank(ddp_run, fsdp_two_nodes_run):
    """Parameters + gradients + AdamW state per rank (measured from the tensors each rank holds,
    step 2): FSDP over 2 ranks ≈ 1/2 of DDP (a little more: shards are padded to equal size)."""
    ddp, fsdp = memory(ddp_run), memory(fsdp_two_nodes_run)
    print(f"\nper rank MiB  ddp {ddp}  fsdp {fsdp}")
    for key in MEMORY_KEYS:
        assert 0.45 < fsdp[key] / ddp[key] < 0.55, (key, fsdp[key], ddp[key])
    assert ddp["memory/optimizer_mib"] == pytest.approx(2 * ddp["memory/params_mib"])  # AdamW: two moments


@pytest.mark.slow
def test_accelerate_launch_fsdp_config_with_lora_resumes_a_one_process_run(setup, one_process):
    """LoRA under FSDP from accelerate's config, resuming the one-process run's step-1 checkpoint
    (the adapters and their AdamW state resharded from 1 process to 2); rollouts with every layer
    gathered once (the default)."""
    run = setup / "accelerate-fsdp-lora"
    shutil.copytree(one_process["lora"], run)
    shutil.rmtree(run / "checkpoints" / "step-000002")
    shutil.rmtree(run / "final")
    launch([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "configs/accelerate/fsdp_cpu.yaml"),
            "-m", "pipelines.cli", "train", str(setup / "lora.yaml"), "--set", f"output_dir={run}", "--resume"], setup)
    assert_same_run(one_process["lora"], run, setup / "model")
    state = yaml.safe_load((run / "checkpoints" / "step-000002" / "trainer_state.json").read_text())
    assert state["strategy"] == "fsdp"  # from the accelerate config: the recipe says auto
    fsdp_optimizer = memory(run)["memory/optimizer_mib"]
    assert fsdp_optimizer == pytest.approx(memory(one_process["lora"])["memory/optimizer_mib"] / 2)  # only the adapters train


def _load(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path)


def _descendants(pid: int) -> list[int]:
    parents = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                parents[int(p.name)] = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    out, todo = [], [pid]
    while todo:
        children = [c for c, parent in parents.items() if parent == todo[-1]]
        todo.pop()
        out += children
        todo += children
    return out


def _rank_of(pid: int) -> str | None:
    try:
        entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    found = [e.split(b"=", 1)[1].decode() for e in entries if e.startswith(b"RANK=")]
    return found[0] if found else None


@pytest.mark.slow
def test_kill_one_rank_mid_step_stops_the_run_and_resume_with_another_process_count(setup, one_process, monkeypatch, capsys):
    """kill -9 of rank 1 once step 1's checkpoint is in place (so, in step 2): the launch ends
    with an error instead of hanging, step 1's checkpoint is intact, nothing half-written counts;
    ``--resume`` in the same 2 processes, and in ONE process (the checkpoint was written by two,
    under DDP, with LoRA), each end where the uninterrupted one-process run ends."""
    import grpo.plots

    run = setup / "killed"
    proc = subprocess.Popen(cli("train", str(setup / "lora.yaml"), "--set", f"output_dir={run}", "--set", "distributed.strategy=ddp",
                                "--num-processes", "2"), cwd=ROOT, env=env(setup), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 240
    while not (run / "checkpoints" / "step-000001" / "trainer_state.json").exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.01)
    victims = [pid for pid in _descendants(proc.pid) if _rank_of(pid) == "1"]
    assert len(victims) == 1, victims
    os.kill(victims[0], signal.SIGKILL)
    killed = time.time()
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the run hung after one of its ranks was killed")
    assert proc.returncode != 0 and time.time() - killed < 60, (proc.returncode, err[-3000:])  # stopped, promptly
    assert "stopped in one of the 2 processes" in err and "--resume" in err
    assert not (run / "final").exists()
    done = [p.name for p in (run / "checkpoints").iterdir() if not p.name.startswith(".")]
    assert "step-000001" in done and len(read_jsonl(run / "metrics.jsonl")) in (1, 2)

    same = setup / "killed-resumed-in-2"
    shutil.copytree(run, same)
    launch(cli("train", str(setup / "lora.yaml"), "--set", f"output_dir={same}", "--set", "distributed.strategy=ddp",
               "--num-processes", "2", "--resume"), setup)
    assert_same_run(one_process["lora"], same, setup / "model")
    monkeypatch.syspath_prepend(str(setup))
    monkeypatch.setattr(grpo.plots, "plot_training_curves", lambda *args, **kwargs: None)
    assert main(["train", str(setup / "lora.yaml"), "--set", f"output_dir={run}", "--resume"]) == 0
    assert_same_run(one_process["lora"], run, setup / "model")


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


def test_merge_lora_equals_peft_merge_and_unload():
    """The final model of a LoRA run is merged from the gathered state dict (grpo/parallel.py
    merge_lora): the same weights and names as peft's own merge."""
    from peft import LoraConfig, get_peft_model

    from grpo.parallel import lora_scalings, merge_lora
    from grpo.tiny import build_char_tokenizer, build_tiny_model

    torch.manual_seed(0)
    model = get_peft_model(build_tiny_model(build_char_tokenizer(), seed=0),
                           LoraConfig(r=4, lora_alpha=12, target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()  # peft starts B at zero: make the adapters do something
    merged = merge_lora(model.state_dict(), lora_scalings(model))
    reference = model.merge_and_unload().state_dict()
    assert merged.keys() == reference.keys()
    changed = [k for k in merged if not torch.equal(merged[k], build_tiny_model(build_char_tokenizer(), seed=0).state_dict()[k])]
    assert len(changed) == 2 * 3  # two layers × three adapted projections
    for k in merged:
        torch.testing.assert_close(merged[k], reference[k], rtol=1e-6, atol=1e-6)


def test_configurations_that_cannot_be_split_are_one_line_errors(setup, tmp_path, monkeypatch, capsys):
    recipe = str(setup / "full.yaml")
    monkeypatch.syspath_prepend(str(setup))
    assert main(["train", recipe, "--num-processes", "3"]) == 2  # checked before any process starts
    assert "grpo.prompts_per_step: must be divisible by the number of processes (3)" in capsys.readouterr().err
    assert main(["train", recipe, "--num-processes", "2", "--nnodes", "3", "--node-rank", "1", "--master-addr", "h"]) == 2
    assert "grpo.prompts_per_step: must be divisible by the number of processes (6)" in capsys.readouterr().err
    assert main(["train", recipe, "--num-processes", "2", "--set", "grpo.dynamic_sampling=true"]) == 2
    assert "dynamic_sampling is not supported with --num-processes > 1 yet" in capsys.readouterr().err
    assert main(["train", recipe, "--nnodes", "2", "--node-rank", "2", "--master-addr", "h"]) == 2
    assert "--node-rank: must be in [0, 2) for --nnodes 2, got 2" in capsys.readouterr().err
    assert main(["train", recipe, "--nnodes", "2"]) == 2
    assert "--master-addr: several machines need the address of machine 0" in capsys.readouterr().err
    assert main(["train", recipe, "--set", "distributed.strategy=zero3"]) == 2
    assert "distributed.strategy" in capsys.readouterr().err
    staged = yaml.safe_load((setup / "full.yaml").read_text())
    staged["stages"] = [{"name": "rl", "kind": "grpo", "grpo": {"prompts_per_step": 6}}]
    (tmp_path / "staged.yaml").write_text(yaml.safe_dump(staged))
    assert main(["run", str(tmp_path / "staged.yaml"), "--num-processes", "4"]) == 2  # before any stage runs
    assert "stages.rl.grpo.prompts_per_step: must be divisible by the number of processes (4)" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="grpo.gradient_accumulation_steps: must be a multiple or a divisor"):
        check_data_parallel(GRPOConfig(prompts_per_step=6, group_size=2, gradient_accumulation_steps=3), 2)
    check_data_parallel(GRPOConfig(prompts_per_step=6, group_size=2, gradient_accumulation_steps=3), 1)  # one process: anything goes
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ConfigError, match="DeepSpeed is not one of the trainer's engines"):
        check_data_parallel(GRPOConfig(), 2)


def test_launch_commands_are_torchrun_single_or_multi_node():
    single = Launch(2).command(["train", "r.yaml"])
    assert single[1:] == ["-m", "torch.distributed.run", "--nproc-per-node=2", "--standalone", "-m", "pipelines.cli", "train", "r.yaml"]
    multi = Launch(4, nnodes=2, node_rank=1, master_addr="10.0.0.1", master_port=29511).command(["run", "r.yaml"])
    assert multi[3:8] == ["--nproc-per-node=4", "--nnodes=2", "--node-rank=1", "--master-addr=10.0.0.1", "--master-port=29511"]
    assert Launch(4, nnodes=2, master_addr="h").world_size == 8


def _accelerate_env(config: Path) -> dict:
    """What ``accelerate launch --config_file CONFIG`` puts in each process's environment."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    args, _, _ = _validate_launch_command(launch_command_parser().parse_args(["--config_file", str(config), "-m", "pipelines.cli"]))
    return prepare_multi_gpu_env(args)


def test_every_shipped_accelerate_config_maps_onto_the_trainer(monkeypatch):
    """Each file in configs/accelerate/ launches torchrun processes whose environment the trainer
    turns into its settings (ddp or fsdp, offload, resharding, FSDP's compute dtype); no file
    asks for an engine the trainer does not run."""
    from grpo.precision import Precision, requested_precision

    configs = sorted((ROOT / "configs/accelerate").glob("*.yaml"))
    assert [p.name for p in configs] == ["ddp_cpu.yaml", "ddp_multi_gpu.yaml", "fsdp.yaml", "fsdp_cpu.yaml"]
    resolved = {}
    for config in configs:
        environment = _accelerate_env(config)
        resolved[config.name] = DistributedSettings().from_launcher(environment)
        with monkeypatch.context() as mp:
            mp.setattr(os, "environ", environment)
            check_data_parallel(GRPOConfig(prompts_per_step=8), 8, DistributedSettings())  # accepted as shipped
            resolved[config.name].precision = requested_precision(None, "float32")[0]
    assert {k: v.strategy for k, v in resolved.items()} == {"ddp_cpu.yaml": "ddp", "ddp_multi_gpu.yaml": "ddp", "fsdp.yaml": "fsdp", "fsdp_cpu.yaml": "fsdp"}
    assert resolved["fsdp.yaml"].precision == "bf16-mixed"  # mixed_precision: bf16
    assert resolved["fsdp_cpu.yaml"].precision == resolved["ddp_cpu.yaml"].precision == "fp32"
    policy = Precision("bf16-mixed", "").fsdp_mixed_precision()  # what FSDPEngine shards with
    assert (policy.param_dtype, policy.reduce_dtype) == (torch.bfloat16, torch.float32)
    assert Precision("fp32", "").fsdp_mixed_precision() is None
    with monkeypatch.context() as mp:
        mp.setattr(os, "environ", _accelerate_env(ROOT / "configs/accelerate/fsdp.yaml"))
        with pytest.raises(ValueError, match="the recipe says fp32 but the accelerate config says mixed_precision bf16"):
            requested_precision("fp32", "float32")
    assert all(s.reshard_after_forward and not s.cpu_offload for s in resolved.values())
    fsdp = _accelerate_env(ROOT / "configs/accelerate/fsdp.yaml")
    offload = DistributedSettings().from_launcher({**fsdp, "FSDP_OFFLOAD_PARAMS": "true", "FSDP_RESHARD_AFTER_FORWARD": "false"})
    assert (offload.cpu_offload, offload.reshard_after_forward) == (True, False)
    with pytest.raises(ConfigError, match="the recipe says ddp but the accelerate config says FSDP"):
        DistributedSettings(strategy="ddp").from_launcher(fsdp)
    with pytest.raises(ConfigError, match="fsdp_version 1 is not supported"):
        DistributedSettings().from_launcher({**fsdp, "FSDP_VERSION": "1"})


@pytest.mark.slow
def test_grpo_run_in_two_processes_shards_sampling_and_runs_sft(setup, tmp_path):
    """``grpo run --num-processes 2``: the sampling stages sample their halves of the prompts and
    write exactly what one process writes; SFT runs data-parallel in both processes (TRL /
    accelerate) and its files are written once."""
    from pipelines.recipe import load_recipe
    from pipelines.runner import Runner

    recipe = yaml.safe_load((setup / "full.yaml").read_text())
    recipe["stages"] = [
        {"name": "rs", "kind": "rejection_sampling", "samples_per_prompt": 2, "max_prompts": 12, "keep": {"length": 0.0},
         "drop_truncated": False, "max_per_prompt": 1, "sampling": {"batch_prompts": 4}},
        {"name": "sft", "kind": "sft", "data": "stages.rs", "sft": {"max_steps": 2, "batch_size": 2, "progress": False}},
        {"name": "eval", "kind": "eval", "data": {"source": "synthetic:arithmetic", "size": 6}, "samples_per_prompt": 2,
         "sampling": {"batch_prompts": 2}},
    ]
    path = tmp_path / "staged.yaml"
    path.write_text(yaml.safe_dump(recipe))
    one, two = tmp_path / "one", tmp_path / "two"
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(setup))
        Runner(load_recipe(path, [f"output_dir={one}"]), progress=False).run(only="rs")
        Runner(load_recipe(path, [f"output_dir={one}"]), progress=False).run(only="eval")
    launch(cli("run", str(path), "--set", f"output_dir={two}", "--num-processes", "2"), setup)
    for name in ("rs/data.jsonl", "rs/samples.jsonl", "rs/stats.json", "eval/samples.jsonl", "eval/eval.json"):
        assert (two / name).read_text() == (one / name).read_text(), name
    assert [r["step"] for r in read_jsonl(two / "sft" / "metrics.jsonl")] == [1, 2]  # one writer
    assert (two / "sft" / "final" / "model.safetensors").exists()
    manifest = yaml.safe_load((two / "manifest.json").read_text())
    assert [s["status"] for s in manifest["stages"]] == ["complete"] * 3
    # eval_after (every model by default): the eval stage measures the base; the SFT model is
    # evaluated by both processes, its figures written once
    assert [(e["target"], e["dir"], e["status"]) for e in manifest["evaluations"]] == [
        ("base", "eval", "complete"), ("sft", "evals/sft", "complete")]
    assert yaml.safe_load((two / "evals" / "sft" / "eval.json").read_text())["num_samples"] == 12


SHARDED_WEIGHTS_SCRIPT = r'''
import copy, sys, torch, torch.distributed as dist
from peft import LoraConfig, get_peft_model
from grpo.parallel import shard_model
from grpo.rollout_vllm import policy_weights, sharded_policy_weights
from grpo.tiny import build_char_tokenizer, build_tiny_model

dist.init_process_group("gloo", init_method=f"file://{sys.argv[1]}", rank=0, world_size=1)
torch.manual_seed(0)
for lora in (False, True):
    model = build_tiny_model(build_char_tokenizer(), seed=0)
    if lora:
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "o_proj"]))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_()
    plain = {k: v.clone() for k, v in policy_weights(model).items()}
    shard_model(model, reshard_after_forward=True)
    streamed = dict(sharded_policy_weights(model))
    assert streamed.keys() == plain.keys(), sorted(set(streamed) ^ set(plain))
    assert all(torch.allclose(streamed[k], plain[k], atol=1e-6) for k in plain), "values differ"
    print("ok", lora, len(plain))
'''


def test_fsdp_policy_is_streamed_to_vllm_under_the_plain_names_lora_merged(tmp_path):
    """What an FSDP rank hands vLLM, one gathered tensor at a time (grpo/rollout_vllm.py
    sharded_policy_weights), is what the unsharded policy hands it: names and values, LoRA merged.
    (vLLM itself is not needed: this is the weight stream.)"""
    done = subprocess.run([sys.executable, "-c", SHARDED_WEIGHTS_SCRIPT, str(tmp_path / "store")], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["ok", "False", "21", "ok", "True", "21"]


def test_a_rank_that_is_done_decodes_on_in_step_with_the_others(setup):
    """The shared-prefix engine under ``step_sync`` (FSDP ``per_layer`` rollouts): after its own
    completions are done it keeps running forwards (one dummy row) for as long as another rank
    decodes, one per step, and its completions are exactly those it samples alone."""
    from grpo.models import load_model_and_tokenizer
    from grpo.rollout import SamplingParams, SharedPrefixEngine

    model, tok = load_model_and_tokenizer(str(setup / "model"))
    engine = SharedPrefixEngine(model, tok)
    params = SamplingParams(group_size=4, max_new_tokens=40, temperature=1.0)
    from grpo.templates import TemplateSpec, render_prompts

    prompts = render_prompts([{"prompt": "1+2="}, {"prompt": "3+4="}], TemplateSpec(kind="chat", system="Be brief."), tok)
    seeds = [4, 104]  # (completions of 2 to 24 tokens)
    alone = engine.generate(prompts, params, seeds=seeds)
    steps = alone.completion_ids.shape[1]
    assert steps + 5 < params.max_new_tokens  # this rank finishes early
    forwards, calls = [], []
    hook = model.register_forward_hook(lambda *args: forwards.append(1))

    def other_rank_decodes_5_steps_longer(mine: bool) -> bool:
        calls.append(mine)
        return mine or len(calls) < steps + 5

    engine.step_sync = other_rank_decodes_5_steps_longer
    try:
        in_step = engine.generate(prompts, params, seeds=seeds)
    finally:
        hook.remove()
    assert len(calls) == steps + 5 and len(forwards) == steps + 5  # the prefill, then one forward per further step
    assert calls[:steps - 1] == [True] * (steps - 1) and not any(calls[steps:])
    assert in_step.texts == alone.texts
    assert torch.equal(in_step.completion_ids, alone.completion_ids) and torch.equal(in_step.completion_mask, alone.completion_mask)
