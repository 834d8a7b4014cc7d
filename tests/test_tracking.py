"""Experiment trackers for real: TensorBoard, wandb (offline), trackio (local), MLflow (sqlite).

Each library writes its own files; the tests read them back with that library's own reader
(TensorBoard's EventAccumulator, trackio's SQLite storage, MLflow's client) or, for wandb, whose
reader lives in its Go service, by parsing its offline run file (a LevelDB-style log of the
protobuf records of wandb's own `wandb_internal_pb2`).
"""

import json
import os
import struct
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

# trackio reads its directory once, when it is imported.
os.environ.setdefault("TRACKIO_DIR", tempfile.mkdtemp(prefix="trackio-test-"))

from grpo.io import read_jsonl  # noqa: E402
from grpo.schema import ConfigError  # noqa: E402
from pipelines.cli import main  # noqa: E402
from pipelines.recipe import load_recipe  # noqa: E402

ARITH = {"max_value": 9, "ops": "+"}


def recipe(model_dir, out, **extra) -> dict:
    return {
        "name": "tracked",
        "model": str(model_dir),
        "output_dir": str(out),
        "data": {"train": {"source": "synthetic:arithmetic", "size": 16, "options": ARITH},
                 "eval": {"source": "synthetic:arithmetic", "size": 2, "seed": 1, "options": ARITH}},
        "rewards": {"accuracy": 1.0, "language_consistency": 0.5},  # the tiny model's rewards vary: not all zeros
        "grpo": {"steps": 3, "prompts_per_step": 2, "group_size": 2, "max_new_tokens": 6, "learning_rate": 1e-3,
                 "save_every": 10, "progress": False, "log_completions": 2},
        "tracking": {"completions_every": 2},
        **extra,
    }


def write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def wandb_records(run_dir: Path) -> list:
    """Every protobuf record of the run's offline ``.wandb`` file: a 7-byte header (':W&B',
    magic, version), then 32 KiB blocks of records, each with a 7-byte header (crc32, length,
    type: 1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            break
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def wandb_history(run_dir: Path) -> list[dict]:
    rows = []
    for record in wandb_records(run_dir):
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
    return rows


@pytest.mark.slow
def test_grpo_train_reports_every_step_to_four_trackers(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    path = write(tmp_path / "r.yaml", recipe(tiny_model_dir, out, report_to=["tensorboard", "wandb", "trackio", "mlflow"]))
    assert main(["train", str(path)]) == 0
    metrics = read_jsonl(out / "metrics.jsonl")
    rewards = [m["reward"] for m in metrics]
    assert any(r != 0 for r in rewards)
    assert [m["step"] for m in metrics] == [1, 2, 3]

    # TensorBoard, read back with TensorBoard's own reader: the reward at every step
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    scalars = events.Scalars("reward")
    assert [e.step for e in scalars] == [1, 2, 3]
    assert [e.value for e in scalars] == pytest.approx(rewards)
    assert [e.value for e in events.Scalars("kl")] == pytest.approx([m["kl"] for m in metrics])
    assert "rewards/accuracy/mean" in events.Tags()["scalars"]
    texts = events.Tags()["tensors"]
    assert "config/text_summary" in texts and "completions/text_summary" in texts
    (table,) = events.Tensors("completions/text_summary")  # every 2 steps: step 2 only
    assert table.step == 2 and "| step | prompt | completion |" in table.tensor_proto.string_val[0].decode()
    config_text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"name": "tracked"' in config_text and '"report_to"' in config_text

    # wandb, offline: files in the run directory; every step's reward and the config
    history = wandb_history(out)
    logged = [h for h in history if "reward" in h]
    assert [h["_step"] for h in logged] == [1, 2, 3] and [h["reward"] for h in logged] == pytest.approx(rewards)
    # the completions table (every 2 steps: step 2), a table file beside the run's history
    assert [(h["_step"], h["completions/nrows"]) for h in history if h.get("completions/_type") == "table-file"] == [(2, 2)]
    (run_record,) = [r.run for r in wandb_records(out) if r.WhichOneof("record_type") == "run"]
    config = {item.key: json.loads(item.value_json) for item in run_record.config.update}
    assert config["name"] == "tracked" and config["grpo"]["steps"] == 3 and config["report_to"][0] == "tensorboard"

    # trackio, local: its SQLite store
    from trackio.sqlite_storage import SQLiteStorage

    (run_name,) = [r for r in SQLiteStorage.get_runs("tracked") if r.startswith("tracked-")][-1:]
    logs = SQLiteStorage.get_logs("tracked", run_name)
    assert [r["step"] for r in logs if "reward" in r] == [1, 2, 3]
    assert [r["reward"] for r in logs if "reward" in r] == pytest.approx(rewards)
    assert SQLiteStorage.get_run_config("tracked", run_name)["grpo"]["steps"] == 3

    # MLflow, its sqlite database in the run directory
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("tracked").experiment_id])
    history = sorted(client.get_metric_history(run.info.run_id, "reward"), key=lambda m: m.step)
    assert [m.step for m in history] == [1, 2, 3] and [m.value for m in history] == pytest.approx(rewards)
    assert run.info.status == "FINISHED"


@pytest.mark.slow
def test_staged_run_logs_each_stage_under_its_name_in_one_tracker_run(tiny_model_dir, tmp_path):
    out = tmp_path / "staged"
    data = recipe(tiny_model_dir, out, report_to=["tensorboard"])
    data["grpo"]["steps"] = 2
    data["stages"] = [
        {"name": "cold_start", "kind": "sft", "init": "base", "report_to": ["tensorboard", "wandb"],
         "data": {"source": "synthetic:arithmetic", "size": 8, "options": {**ARITH, "worked": True}},
         "sft": {"max_steps": 2, "batch_size": 4, "learning_rate": 1e-3, "max_length": 128, "progress": False}},
        {"name": "reasoning_rl", "kind": "grpo", "init": "stages.cold_start"},
        {"name": "eval", "kind": "eval", "init": "stages.reasoning_rl", "samples_per_prompt": 2, "sampling": {"max_new_tokens": 6}},
        {"name": "quiet_eval", "kind": "eval", "init": "stages.reasoning_rl", "samples_per_prompt": 1, "report_to": []},
    ]
    assert main(["run", str(write(tmp_path / "s.yaml", data))]) == 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1  # one tracker run for the recipe run
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    tags = events.Tags()["scalars"]
    rl = read_jsonl(out / "reasoning_rl" / "metrics.jsonl")
    assert [e.step for e in events.Scalars("reasoning_rl/reward")] == [m["step"] for m in rl] == [1, 2]
    assert [e.value for e in events.Scalars("reasoning_rl/reward")] == pytest.approx([m["reward"] for m in rl])
    sft = read_jsonl(out / "cold_start" / "metrics.jsonl")
    assert [e.step for e in events.Scalars("cold_start/loss")] == [m["step"] for m in sft] == [1, 2]
    assert [e.value for e in events.Scalars("cold_start/loss")] == pytest.approx([m["loss"] for m in sft])
    assert not any(t.startswith("quiet_eval/") for t in tags)  # report_to: [] silences a stage
    summary = json.loads((out / "eval" / "eval.json").read_text())
    assert events.Scalars("eval/summary/pass@1")[0].value == pytest.approx(summary["pass@1"])
    # wandb got only the stage that asked for it, on that stage's own step axis
    history = wandb_history(out)
    assert [h["cold_start/step"] for h in history if "cold_start/loss" in h] == [m["step"] for m in sft]
    assert not any(k.startswith("reasoning_rl/") for h in history for k in h)


def test_report_to_errors_are_one_line(tiny_model_dir, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"report_to: unknown tracker 'tensorbord'; did you mean 'tensorboard'\?"):
        load_recipe(write(tmp_path / "a.yaml", recipe(tiny_model_dir, tmp_path / "a", report_to=["tensorbord"])))
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if wandb were not installed
    with pytest.raises(ConfigError, match=r"report_to: wandb needs the Python package 'wandb': pip install '\.\[trackers\]'"):
        load_recipe(write(tmp_path / "b.yaml", recipe(tiny_model_dir, tmp_path / "b", report_to=["wandb"])))
    staged = recipe(tiny_model_dir, tmp_path / "c", stages=[{"name": "rl", "kind": "grpo", "report_to": ["wandb"]}])
    with pytest.raises(ConfigError, match=r"stages\[0\]\.report_to: wandb needs .*\.\[trackers\]"):
        load_recipe(write(tmp_path / "c.yaml", staged))
    with pytest.raises(ConfigError, match=r"tracking\.completions_every: must be ≥ 0"):
        load_recipe(write(tmp_path / "d.yaml", {**recipe(tiny_model_dir, tmp_path / "d"), "tracking": {"completions_every": -1}}))
