"""kill -9 in the middle of things: the rerun resumes from the last complete state and ends where
an uninterrupted run ends, and no half-written file is ever read as complete.

Real subprocesses (``python -m pipelines.cli``), real SIGKILL. To land the kill inside a write,
the writers have a test hook: with ``GRPO_TEST_PAUSE_IN=<point>[:<name>]`` the write stops after
its files are written and fsynced, before the rename, prints ``GRPO_TEST_PAUSED <point> <temp
path>`` and sleeps (grpo/io.py ``_pause_point``; inert unless the variable is set).
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from bad_inputs import Ctx, base_recipe, skip_plots
from grpo.io import read_jsonl
from grpo.trainer import TIMING_KEYS
from pipelines.cli import main

ROOT = Path(__file__).resolve().parents[1]
STEPS = 4


def strip(rows):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def train_recipe(ctx: Ctx, out: Path) -> str:
    recipe = base_recipe(ctx)
    recipe["output_dir"] = str(out)
    recipe["grpo"].update(steps=STEPS, max_new_tokens=8, learning_rate=1e-3, save_every=2)
    return ctx.write(f"{out.name}.yaml", yaml.safe_dump(recipe))


def start(args: list[str], pause_in: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("GRPO_TEST_PAUSE_IN", None)
    if pause_in:
        env["GRPO_TEST_PAUSE_IN"] = pause_in
    return subprocess.Popen([sys.executable, "-m", "pipelines.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)


def wait_for_pause(proc: subprocess.Popen, point: str, timeout: float = 240) -> Path:
    """Read the child's stdout until its pause marker; the temp path it is writing."""
    timer = threading.Timer(timeout, proc.kill)  # a child that never pauses must not hang the test
    timer.start()
    try:
        for line in proc.stdout:
            if line.startswith(f"GRPO_TEST_PAUSED {point} "):
                return Path(line.split(" ", 2)[2].strip())
    finally:
        timer.cancel()
    pytest.fail(f"the run ended (exit {proc.wait()}) without pausing in {point}")


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tmp_path_factory):
    """The uninterrupted run the resumed ones must equal (in-process, no curves)."""
    ctx = Ctx(tmp_path_factory.mktemp("reference"), tiny_model_dir)
    out = ctx.tmp / "run"
    with pytest.MonkeyPatch.context() as mp:
        skip_plots(mp)
        assert main(["train", train_recipe(ctx, out)]) == 0
    return out


def assert_same_run(run: Path, reference: Path) -> None:
    from safetensors.torch import load_file

    assert strip(read_jsonl(run / "metrics.jsonl")) == strip(read_jsonl(reference / "metrics.jsonl"))
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == list(range(1, STEPS + 1))
    a, b = load_file(run / "final" / "model.safetensors"), load_file(reference / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_kill_during_checkpoint_write_resumes_from_the_last_complete_one(tiny_model_dir, tmp_path, reference, monkeypatch):
    ctx = Ctx(tmp_path, tiny_model_dir)
    run = tmp_path / "run"
    recipe = train_recipe(ctx, run)
    proc = start(["train", recipe], pause_in="checkpoint_write:step-000004")
    partial = wait_for_pause(proc, "checkpoint_write")
    kill(proc)

    ckpts = run / "checkpoints"
    assert partial == ckpts / ".step-000004.tmp"
    # Step 4's checkpoint was fully written and fsynced, but never renamed: it does not count.
    assert {"state", "rng.pt", "trainer_state.json"} <= {p.name for p in partial.iterdir()}
    assert sorted(p.name for p in ckpts.iterdir()) == [".step-000004.tmp", "step-000002"]
    assert len(read_jsonl(run / "metrics.jsonl")) == 4  # step 4 ran; its checkpoint did not land

    skip_plots(monkeypatch)
    assert main(["train", recipe, "--resume"]) == 0
    assert_same_run(run, reference)
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-000002", "step-000004"]  # the stale temp dir is gone


def test_kill_during_an_rl_step_resumes_from_the_last_checkpoint(tiny_model_dir, tmp_path, reference, monkeypatch):
    ctx = Ctx(tmp_path, tiny_model_dir)
    run = tmp_path / "run"
    recipe = train_recipe(ctx, run)
    proc = start(["train", recipe])
    deadline = time.time() + 240
    # Step 3's metrics line is written just before step 4, the last one, starts (no checkpoint at odd steps).
    while len(read_jsonl(run / "metrics.jsonl")) < 3:
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.02)
    kill(proc)
    done = len(read_jsonl(run / "metrics.jsonl"))
    assert done in (3, 4), done  # killed inside step 4 (or, on a stalled machine, in its checkpoint)
    assert not (run / "final").exists()
    assert (run / "checkpoints" / "step-000002" / "trainer_state.json").exists()

    skip_plots(monkeypatch)
    assert main(["train", recipe]) == 2  # a killed run is never silently overwritten
    assert main(["train", recipe, "--resume"]) == 0
    assert_same_run(run, reference)


def rs_recipe(ctx: Ctx, out: Path) -> str:
    recipe = base_recipe(ctx)
    recipe["output_dir"] = str(out)
    recipe["grpo"]["max_new_tokens"] = 12
    recipe["stages"] = [
        {"name": "rejection_sampling", "kind": "rejection_sampling", "samples_per_prompt": 2, "max_prompts": 6,
         "keep": {"format": 0.0}, "drop_truncated": False, "max_per_prompt": 1},
        {"name": "sft_rs", "kind": "sft", "data": "stages.rejection_sampling", "sft": {"max_steps": 1, "batch_size": 2, "progress": False}},
    ]
    return ctx.write(f"{out.name}.yaml", yaml.safe_dump(recipe))


def test_kill_during_rejection_sampling_write_reruns_the_stage(tiny_model_dir, tmp_path, capsys):
    from pipelines.recipe import load_recipe
    from pipelines.runner import Runner

    ctx = Ctx(tmp_path, tiny_model_dir)
    run = tmp_path / "run"
    recipe = rs_recipe(ctx, run)
    proc = start(["run", recipe, "--only", "rejection_sampling"], pause_in="rejection_sampling_write")
    partial = wait_for_pause(proc, "rejection_sampling_write")
    kill(proc)

    work = run / ".rejection_sampling.partial"
    assert partial.parent == work and partial.name.startswith(".data.jsonl.tmp-") and partial.stat().st_size > 0
    assert not (work / "data.jsonl").exists() and not (run / "rejection_sampling").exists()
    manifest = json.loads((run / "manifest.json").read_text())
    assert {s["name"]: s["status"] for s in manifest["stages"]} == {"rejection_sampling": "running", "sft_rs": "pending"}
    # The stage that reads it refuses: its input is not complete.
    assert main(["run", recipe, "--only", "sft_rs"]) == 2
    assert "stage 'rejection_sampling' has not completed" in capsys.readouterr().err

    # The rerun starts the (non-resumable) stage over and leaves exactly an uninterrupted run's data.
    Runner(load_recipe(recipe), progress=False).run(only="rejection_sampling")
    fresh = tmp_path / "fresh"
    Runner(load_recipe(rs_recipe(ctx, fresh)), progress=False).run(only="rejection_sampling")
    for name in ("data.jsonl", "stats.json", "samples.jsonl"):
        assert (run / "rejection_sampling" / name).read_text() == (fresh / "rejection_sampling" / name).read_text(), name
    assert sorted(p.name for p in (run / "rejection_sampling").iterdir()) == ["data.jsonl", "samples.jsonl", "stage.json", "stats.json"]
    assert not work.exists()
