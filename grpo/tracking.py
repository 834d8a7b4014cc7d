"""Experiment trackers: TensorBoard, trackio, Weights & Biases and MLflow behind one small interface.

A recipe asks for them as TRL does, ``report_to: [tensorboard, wandb]`` (default: none). Each
library has one adapter class, registered by name (:func:`register_tracker`); the trainer knows
none of them: it calls one hook after each step (``GRPOTrainer(on_step=...)``), and
:class:`TrackerLogger` turns that call into

* every numeric metric of the step's ``metrics.jsonl`` line, at its step,
* every ``completions_every`` steps, a table of that step's sampled completions (prompt,
  completion, each reward, reward, advantage),

under a namespace (``<stage>/reward``) when the run is a stage of a staged recipe. A staged run
opens one tracker run per recipe run and logs each stage under its name; the resolved recipe is
the run's config. Everything is offline by default: TensorBoard event files and the MLflow
database in the run directory, wandb in ``mode=offline`` (its files under the run directory;
``wandb sync`` uploads them later), trackio in its local store (``$TRACKIO_DIR``, default
``~/.cache/huggingface/trackio``; ``trackio show`` opens it).

The libraries are optional: ``pip install '.[trackers]'``. Naming one that is not installed is a
one-line error that names the extra, raised before anything is trained.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grpo.registry import registrar

__all__ = [
    "TRACKERS", "TrackingSettings", "Tracker", "TrackerLogger", "register_tracker", "check_trackers", "open_trackers",
    "numeric_metrics", "completion_table", "trainer_callback",
]

EXTRA = "trackers"  # pip install '.[trackers]'


@dataclass
class TrackingSettings:
    """The ``tracking:`` section of a recipe (used when ``report_to`` names a tracker)."""

    project: str | None = None  # tracker project / experiment name; default: the recipe's name
    completions_every: int = 10  # log a table of the step's sampled completions every N steps (0: never)
    wandb_mode: str = "offline"  # wandb: offline (files in the run directory; `wandb sync` later) | online | disabled
    mlflow_tracking_uri: str | None = None  # default: sqlite:///<run dir>/mlflow.db

    def __post_init__(self):
        if self.completions_every < 0:
            raise ValueError(f"completions_every: must be ≥ 0 (0: never), got {self.completions_every}")
        if self.wandb_mode not in ("offline", "online", "disabled"):
            raise ValueError(f"wandb_mode: expected 'offline', 'online' or 'disabled', got {self.wandb_mode!r}")


class Tracker:
    """One run of one tracking library. Subclasses set ``modules`` (what must be importable)."""

    name: str = ""
    modules: tuple[str, ...] = ()

    def __init__(self, run_dir: Path, run_name: str, project: str, config: dict, settings: TrackingSettings):
        raise NotImplementedError  # pragma: no cover - interface

    def log_metrics(self, metrics: dict[str, float], step: int, namespace: str = "") -> None:
        raise NotImplementedError  # pragma: no cover - interface

    def log_table(self, name: str, rows: list[dict], step: int, namespace: str = "") -> None:
        raise NotImplementedError  # pragma: no cover - interface

    def finish(self) -> None:
        raise NotImplementedError  # pragma: no cover - interface


TRACKERS: dict[str, type[Tracker]] = {}


#: ``@register_tracker(name)`` on a :class:`Tracker` subclass (``report_to: [name]``); sets its ``name``.
register_tracker = registrar(TRACKERS, name_attr="name")


def _key(namespace: str, key: str) -> str:
    return f"{namespace}/{key}" if namespace else key


def check_trackers(names: list[str], where: str = "report_to") -> None:
    """Every name is registered and its library importable; else a one-line ``ValueError``."""
    from grpo.schema import nearest

    for name in names:
        if name not in TRACKERS:
            hint = nearest(name, TRACKERS)
            extra = f"did you mean {hint!r}? " if hint else ""
            raise ValueError(f"{where}: unknown tracker {name!r}; {extra}known: {', '.join(sorted(TRACKERS))}")
        for module in TRACKERS[name].modules:
            if importlib.util.find_spec(module.split(".")[0]) is None or _missing(module):
                raise ValueError(f"{where}: {name} needs the Python package '{module.split('.')[0]}': pip install '.[{EXTRA}]'")


def _missing(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return True
    return False


def numeric_metrics(metrics: dict) -> dict[str, float]:
    """The finite numbers of a metrics line (``step`` and non-numbers left out; bools as 0/1)."""
    out = {}
    for key, value in metrics.items():
        if key == "step" or isinstance(value, (dict, list, str)) or value is None:
            continue
        if isinstance(value, (bool, int, float)) and math.isfinite(float(value)):
            out[key] = float(value)
    return out


def completion_table(samples: list[dict]) -> list[dict]:
    """Rows of a completions table: step, prompt, completion, one column per reward, reward, advantage."""
    rows = []
    for s in samples:
        row = {"step": s.get("step"), "prompt": s.get("prompt"), "completion": s.get("completion")}
        row.update({f"reward/{k}": v for k, v in (s.get("rewards") or {}).items()})
        row.update({"reward": s.get("reward"), "advantage": s.get("advantage")})
        rows.append(row)
    return rows


class TrackerLogger:
    """What the trainer's hook and the runner talk to: a set of open trackers and a namespace.

    ``on_step(step, metrics, samples)`` is the trainer hook (:class:`grpo.trainer.GRPOTrainer`'s
    ``on_step``); ``log_metrics`` serves other trainers (SFT) and ``log_summary`` a stage's
    headline figures (logged at the stage's last step)."""

    def __init__(self, trackers: list[Tracker], namespace: str = "", completions_every: int = 10):
        self.trackers, self.namespace, self.completions_every = trackers, namespace, completions_every
        self.last_step = 0

    def scoped(self, namespace: str, names: list[str] | None = None) -> "TrackerLogger":
        """The same runs under another namespace, restricted to the trackers ``names`` (None: all)."""
        chosen = [t for t in self.trackers if names is None or t.name in names]
        return TrackerLogger(chosen, namespace, self.completions_every)

    def on_step(self, step: int, metrics: dict, samples: list[dict]) -> None:
        self.log_metrics(metrics, step)
        if self.completions_every and samples and step % self.completions_every == 0:
            table = completion_table(samples)
            for tracker in self.trackers:
                tracker.log_table("completions", table, step, self.namespace)

    def log_metrics(self, metrics: dict, step: int) -> None:
        values = numeric_metrics(metrics)
        self.last_step = max(self.last_step, step)
        if values:
            for tracker in self.trackers:
                tracker.log_metrics(values, step, self.namespace)

    def log_summary(self, metrics: dict) -> None:
        """Headline figures (an evaluation's pass@1 ...) under ``<namespace>/summary/``."""
        values = {f"summary/{k}": v for k, v in numeric_metrics(metrics).items()}
        if values:
            for tracker in self.trackers:
                tracker.log_metrics(values, max(self.last_step, 1), self.namespace)

    def finish(self) -> None:
        for tracker in self.trackers:
            tracker.finish()


def open_trackers(names: list[str], run_dir: str | Path, run_name: str, config: dict,
                  settings: TrackingSettings | None = None, project: str | None = None) -> TrackerLogger:
    """One run of each named tracker (in ``names`` order, duplicates once) for the run in ``run_dir``."""
    settings = settings or TrackingSettings()
    names = list(dict.fromkeys(names))
    check_trackers(names)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    opened: list[Tracker] = []
    try:
        for name in names:
            opened.append(TRACKERS[name](run_dir, run_name, settings.project or project or run_name, config, settings))
    except BaseException:
        for tracker in opened:
            tracker.finish()
        raise
    return TrackerLogger(opened, "", settings.completions_every)


def trainer_callback(logger: TrackerLogger):
    """A ``transformers.TrainerCallback`` that sends each logged step of a Hugging Face / TRL
    trainer (the SFT stage) to ``logger``."""
    from transformers import TrainerCallback

    class ToTrackers(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and state.is_world_process_zero:
                logger.log_metrics(logs, state.global_step)

    return ToTrackers()


def _markdown_table(rows: list[dict]) -> str:
    if not rows:
        return ""
    columns = list(dict.fromkeys(k for r in rows for k in r))

    def cell(v):
        text = "" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))
        return text.replace("|", "\\|").replace("\n", "<br>")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


# --- the adapters ------------------------------------------------------------------------------


@register_tracker("tensorboard")
class TensorBoardTracker(Tracker):
    """Event files in ``<run dir>/tensorboard`` (``tensorboard --logdir <run dir>/tensorboard``);
    the recipe and each completions table as text."""

    modules = ("tensorboard",)

    def __init__(self, run_dir, run_name, project, config, settings):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2, ensure_ascii=False, default=str) + "\n```", 0)
        self.writer.flush()

    def log_metrics(self, metrics, step, namespace=""):
        for key, value in metrics.items():
            self.writer.add_scalar(_key(namespace, key), value, step)
        self.writer.flush()  # a killed run keeps every step it logged

    def log_table(self, name, rows, step, namespace=""):
        self.writer.add_text(_key(namespace, name), _markdown_table(rows), step)
        self.writer.flush()

    def finish(self):
        self.writer.close()


@register_tracker("wandb")
class WandbTracker(Tracker):
    """A wandb run, offline by default (``<run dir>/wandb/offline-run-*``; upload with ``wandb sync``).
    Each namespace gets its own step axis (``<stage>/step``), so stages may each count from 1."""

    modules = ("wandb",)

    def __init__(self, run_dir, run_name, project, config, settings):
        import wandb

        self.wandb = wandb
        self.run = wandb.init(
            project=project, name=run_name, dir=str(run_dir), mode=settings.wandb_mode, config=config,
            settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
        )
        self.namespaces: set[str] = set()

    def _log(self, values: dict, step: int, namespace: str):
        if not namespace:
            self.run.log(values, step=step)
            return
        if namespace not in self.namespaces:
            self.run.define_metric(f"{namespace}/step")
            self.run.define_metric(f"{namespace}/*", step_metric=f"{namespace}/step")
            self.namespaces.add(namespace)
        self.run.log({**{_key(namespace, k): v for k, v in values.items()}, f"{namespace}/step": step})

    def log_metrics(self, metrics, step, namespace=""):
        self._log(metrics, step, namespace)

    def log_table(self, name, rows, step, namespace=""):
        columns = list(dict.fromkeys(k for r in rows for k in r))
        table = self.wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])
        self._log({name: table}, step, namespace)

    def finish(self):
        self.run.finish()


@register_tracker("trackio")
class TrackioTracker(Tracker):
    """A trackio run in its local store (``$TRACKIO_DIR``; ``trackio show --project <project>``)."""

    modules = ("trackio",)

    def __init__(self, run_dir, run_name, project, config, settings):
        import trackio

        self.trackio = trackio
        self.run = trackio.init(project=project, name=f"{run_name}-{time.strftime('%Y%m%d-%H%M%S')}", config=config,
                                embed=False, auto_log_cpu=False, auto_log_gpu=False)

    def log_metrics(self, metrics, step, namespace=""):
        self.run.log({_key(namespace, k): v for k, v in metrics.items()}, step=step)

    def log_table(self, name, rows, step, namespace=""):
        columns = list(dict.fromkeys(k for r in rows for k in r))
        table = self.trackio.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])
        self.run.log({_key(namespace, name): table}, step=step)

    def finish(self):
        self.run.finish()


@register_tracker("mlflow")
class MlflowTracker(Tracker):
    """An MLflow run in ``sqlite:///<run dir>/mlflow.db`` (artifacts in ``<run dir>/mlflow-artifacts``;
    ``mlflow ui --backend-store-uri sqlite:///<run dir>/mlflow.db``). MLflow allows only letters,
    digits and ``_-. :/`` in metric names: others become ``_`` (``pass@1`` → ``pass_1``)."""

    modules = ("mlflow", "sqlalchemy", "alembic")

    def __init__(self, run_dir, run_name, project, config, settings):
        import logging

        from mlflow.tracking import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # its database migrations log at INFO
        uri = settings.mlflow_tracking_uri or f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"
        self.client = MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name(project)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(
            project, artifact_location=(run_dir / "mlflow-artifacts").resolve().as_uri()
        )
        self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
        self.client.log_dict(self.run_id, config, "recipe.resolved.json")

    @staticmethod
    def _name(key: str) -> str:
        return re.sub(r"[^\w\-. :/]", "_", key.replace("@", "_"))

    def log_metrics(self, metrics, step, namespace=""):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(self._name(_key(namespace, k)), v, now, step) for k, v in metrics.items()])

    def log_table(self, name, rows, step, namespace=""):
        columns = list(dict.fromkeys(k for r in rows for k in r))
        data = {c: [r.get(c) for r in rows] for c in columns}
        self.client.log_table(self.run_id, data, f"{self._name(_key(namespace, name))}/step-{step:06d}.json")

    def finish(self):
        self.client.set_terminated(self.run_id)
