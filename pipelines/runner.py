"""``grpo run``: a staged recipe, end to end, resumably, into one run directory.

The runner turns a recipe's ``stages:`` list into a plan (every reference checked, every
stage's config validated and hashed), then runs the stages in order:

    runs/<name>/
      recipe.resolved.yaml   manifest.json   report.md   curves.png
      <stage>/               a completed stage (stage.json holds its config hash and outputs)
      .<stage>.partial/      a stage in progress; renamed to <stage>/ only when it completes
      evals/<stage>/         the eval set's figures for the model after that stage (and base/)
      superseded/            completed stages whose configuration changed since (kept, not deleted)

A completed stage whose configuration hash is unchanged is skipped. The hash covers the stage's
own keys, the recipe defaults it uses, the seed, and the hashes of the stages it reads from, so
changing an early stage reruns everything downstream of it. Settings left at their dataclass
defaults are not hashed, so an upgrade that adds a setting keeps completed stages. An interrupted stage of a resumable
kind (sft, grpo) continues from its last checkpoint; the others start over.

What each stage did, measured (``eval_after:``): the base model and the model after every stage
that produces one are evaluated on the eval set, with the settings of the recipe's last eval
stage, by that stage kind's own code (an eval stage the recipe already has for a model is not
repeated). Each evaluation is hashed like a stage (its settings + the evaluated stage's hash),
so reruns skip it, and report.md opens with the table and ``evals.png``.

With several processes (``grpo run --num-processes N``, torchrun underneath) every rank runs
every stage together: GRPO on the trainer's engines (ddp | fsdp), SFT through TRL / accelerate
(DDP, or FSDP2 when ``distributed.strategy`` is fsdp), and the sampling stages each sample and
score their share of the prompts. Rank 0 alone writes the run directory (manifest, report, stage
directories) and decides what runs; the others follow its decisions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from grpo.io import atomic_write_json, atomic_write_text, check_writable, fsync_dir
from grpo.schema import ConfigError, from_dict, nearest, to_dict
from pipelines.recipe import Recipe, reward_terms
from pipelines.stages import STAGE_KINDS
from pipelines.stages.common import is_stage_ref, ref_name

COMMON_KEYS = ("name", "kind", "init", "report_to")  # report_to: this stage's trackers (default: the recipe's)
BASE = "base"  # in eval_after: the recipe's model, before any stage


@dataclass
class PlannedStage:
    index: int
    name: str
    kind: str
    init: str  # "base", "stages.<name>", or a model alias / hub id / directory
    config: Any  # the kind's Config dataclass
    depends_on: list[str] = field(default_factory=list)
    config_hash: str = ""
    report_to: list[str] | None = None  # experiment trackers; None: the recipe's (not hashed: logging changes no result)

    @property
    def model_ref(self) -> str | None:
        return ref_name(self.init) if is_stage_ref(self.init) else None

    @property
    def data_ref(self) -> str | None:
        data = getattr(self.config, "data", None)
        return ref_name(data) if is_stage_ref(data) else None


def _stage_path(index: int, name: str | None = None) -> str:
    return f"stages[{index}]" + (f" ({name})" if name else "")


def plan_stages(recipe: Recipe) -> list[PlannedStage]:
    """Validate the stages and the references between them; hash each stage's configuration."""
    if not recipe.stages:
        raise ConfigError("stages: the recipe has no stages (use `grpo train` for a single GRPO run)")
    planned: list[PlannedStage] = []
    names = [s.get("name") if isinstance(s, dict) else None for s in recipe.stages]
    for i, raw in enumerate(recipe.stages):
        path = f"stages[{i}]"
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping with name and kind, got {raw!r}")
        for key in ("name", "kind"):
            if not isinstance(raw.get(key), str) or not raw.get(key):
                raise ConfigError(f"{path}.{key}: required key is missing")
        name, kind = raw["name"], raw["kind"]
        if name in names[:i]:
            raise ConfigError(f"{path}.name: stage name {name!r} is used twice")
        if kind not in STAGE_KINDS:
            hint = nearest(kind, STAGE_KINDS)
            extra = f"did you mean {hint!r}? " if hint else ""
            raise ConfigError(f"{path}.kind: unknown stage kind {kind!r}; {extra}known kinds: {', '.join(sorted(STAGE_KINDS))}")
        stage_cls = STAGE_KINDS[kind]
        init = raw.get("init", "base")
        if not isinstance(init, str):
            raise ConfigError(f"{path}.init: expected base, stages.<name> or a model name, got {init!r}")
        body = {k: v for k, v in raw.items() if k not in COMMON_KEYS}
        config = from_dict(stage_cls.Config, body, path)
        validate = getattr(stage_cls(), "validate", None)
        if validate:
            validate(config, recipe, path)
        if getattr(config, "rewards", None):
            try:
                reward_terms(config.rewards)  # names resolve, user functions import and are callable
            except ConfigError as exc:
                raise ConfigError(f"{path}.{exc}") from None
        report_to = raw.get("report_to")
        if report_to is not None:
            from grpo.tracking import check_trackers

            if not isinstance(report_to, list) or not all(isinstance(t, str) for t in report_to):
                raise ConfigError(f"{path}.report_to: expected a list of tracker names, got {report_to!r}")
            try:
                check_trackers(report_to, f"{path}.report_to")
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        stage = PlannedStage(i, name, kind, init, config, report_to=report_to)
        refs = [("init", stage.model_ref, "model"), ("data", stage.data_ref, "data")]
        refs += [(key, ref_name(getattr(config, key)), "model") for key in _model_refs(kind) if is_stage_ref(getattr(config, key, None))]
        for label, ref, needs in refs:
            if ref is None:
                continue
            _check_reference(recipe, names, i, label, ref, needs)
            stage.depends_on.append(ref)
        planned.append(stage)
    by_name = {s.name: s for s in planned}
    for stage in planned:
        stage.config_hash = _config_hash(recipe, stage, by_name)
    plan_evaluations(recipe, planned)  # eval_after names and settings checked with the rest
    return planned


@dataclass
class Evaluation:
    """One eval_after measurement: the model of ``target`` (``base`` or a stage) on the eval set."""

    target: str
    stage: PlannedStage  # an eval stage that is not in the plan: init base / stages.<target>
    reuse: str | None = None  # an eval stage of the recipe that evaluates this model with these settings

    @property
    def directory(self) -> str:
        """Where its eval.json lies, relative to the run directory."""
        return self.reuse or f"evals/{self.target}"


def plan_evaluations(recipe: Recipe, plan: list[PlannedStage]) -> list[Evaluation]:
    """The evaluations ``eval_after`` asks for, in pipeline order (base first)."""
    from pipelines.stages.sampling import EvalConfig

    evals = [s for s in plan if s.kind == "eval"]
    settings = evals[-1].config if evals else EvalConfig()
    has_eval_set = settings.data is not None or recipe.data.eval is not None
    candidates = [BASE] + [s.name for s in plan if "model" in STAGE_KINDS[s.kind].produces]
    if recipe.eval_after is None:
        if not has_eval_set:
            return []
        targets = candidates
    else:
        kinds = {s.name: s.kind for s in plan}
        for i, name in enumerate(recipe.eval_after):
            if name in candidates:
                continue
            if name in kinds:
                raise ConfigError(f"eval_after[{i}]: stage {name!r} ({kinds[name]}) produces no model to evaluate")
            hint = nearest(name, candidates)
            extra = f"did you mean {hint!r}? " if hint else ""
            raise ConfigError(f"eval_after[{i}]: no stage {name!r}; {extra}expected base or one of: {', '.join(candidates[1:])}")
        if recipe.eval_after and not has_eval_set:
            raise ConfigError("eval_after: needs an eval set (data.eval, or an eval stage with data)")
        targets = [c for c in candidates if c in recipe.eval_after]
    if targets and is_stage_ref(settings.data):
        raise ConfigError(
            f"eval_after: the last eval stage reads {settings.data}, which not every model in eval_after can wait for; "
            "give that stage a data spec, or set eval_after: []"
        )
    by_name = {s.name: s for s in plan}
    out = []
    for target in targets:
        init = BASE if target == BASE else f"stages.{target}"
        stage = PlannedStage(-1, f"eval_after.{target}", "eval", init, settings, [] if target == BASE else [target])
        stage.config_hash = _config_hash(recipe, stage, by_name)
        reuse = next((e.name for e in evals if e.init == init and e.config == settings), None)
        out.append(Evaluation(target, stage, reuse))
    return out


def _check_reference(recipe: Recipe, names: list, i: int, label: str, ref: str, needs: str) -> None:
    path = f"stages[{i}].{label}"
    if ref not in names:
        hint = nearest(ref, [n for n in names if n])
        extra = f"; did you mean 'stages.{hint}'?" if hint else ""
        raise ConfigError(f"{path}: refers to stage {ref!r}, which does not exist{extra}")
    j = names.index(ref)
    if j == i:
        raise ConfigError(f"{path}: stage {ref!r} refers to itself")
    if j > i:
        cycle = _cycle_from(recipe, names, j, names[i])
        if cycle:
            raise ConfigError(f"{path}: stages form a cycle: {' → '.join([names[i], *cycle])}")
        raise ConfigError(f"{path}: refers to stage {ref!r}, which runs later (stage {j}); a stage can only use earlier stages' outputs")
    produced = STAGE_KINDS[recipe.stages[j]["kind"]].produces
    if needs not in produced:
        raise ConfigError(f"{path}: stage {ref!r} ({recipe.stages[j]['kind']}) produces no {needs}; it produces: {', '.join(produced) or 'nothing'}")


def _cycle_from(recipe: Recipe, names: list, j: int, target: str, seen=()) -> list[str] | None:
    """Follow references from stage j; the path back to ``target`` if there is one."""
    raw = recipe.stages[j]
    refs = [ref_name(v) for v in (raw.get("init"), raw.get("data"), *(raw.get(k) for k in _model_refs(raw.get("kind")))) if is_stage_ref(v)]
    for ref in refs:
        if ref == target:
            return [names[j], target]
        if ref in names and ref not in seen:
            rest = _cycle_from(recipe, names, names.index(ref), target, (*seen, ref))
            if rest:
                return [names[j], *rest]
    return None


def _model_refs(kind) -> tuple[str, ...]:
    """Config keys of a stage kind that name a model besides ``init`` (e.g. a distill stage's ``teacher``)."""
    return getattr(STAGE_KINDS.get(kind), "model_refs", ())


def _explicit(value):
    """``value`` with every dataclass field left at its default dropped, recursively: what the
    recipe asked for. A toolkit upgrade that adds a setting (with a default) then leaves the
    hashes of completed stages, and so the stages, as they were."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {}
        for f in dataclasses.fields(value):
            v = getattr(value, f.name)
            if f.default is not dataclasses.MISSING and v == f.default:
                continue
            if f.default_factory is not dataclasses.MISSING and v == f.default_factory():
                continue
            out[f.name] = _explicit(v)
        return out
    if isinstance(value, dict):
        return {k: _explicit(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_explicit(v) for v in value]
    return value


def _config_hash(recipe: Recipe, stage: PlannedStage, by_name: dict[str, PlannedStage]) -> str:
    payload = {
        "kind": stage.kind,
        "init": stage.init if stage.model_ref else (recipe.model if stage.init == "base" else stage.init),
        "config": _explicit(stage.config),
        # Recipe-level defaults a stage may read; hashing them all keeps the rule simple.
        "defaults": {k: _explicit(getattr(recipe, k)) for k in ("data", "template", "rewards", "grpo", "dtype", "seed")}
        | ({"precision": recipe.precision} if recipe.precision is not None else {}),  # (unset: hashes stay as they were)
        "upstream": {ref: by_name[ref].config_hash for ref in stage.depends_on},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --- the run -----------------------------------------------------------------------------------


class Runner:
    def __init__(self, recipe: Recipe, run_dir: Path | None = None, progress: bool = True):
        self.recipe = recipe
        self.run_dir = Path(run_dir or recipe.run_dir)
        self.plan = plan_stages(recipe)
        self.by_name = {s.name: s for s in self.plan}
        self.evaluations = {e.target: e for e in plan_evaluations(recipe, self.plan)}
        self.progress = progress
        self.dist = None  # the run's processes (grpo.distributed.DataParallel), joined by run()

    def _join(self):
        """This run's processes: a stand-in in one process, else the launcher's process group."""
        from grpo.distributed import DataParallel, join_process_group
        from grpo.launch import launched_world_size
        from grpo.models import _resolve_device

        if launched_world_size() <= 1:
            return DataParallel()
        device = _resolve_device(self.recipe.device)
        join_process_group(device)
        return DataParallel.of_process_group(device)

    # -- state on disk

    def stage_dir(self, name: str) -> Path:
        return self.run_dir / name

    def partial_dir(self, name: str) -> Path:
        return self.run_dir / f".{name}.partial"

    def completed(self, stage: PlannedStage) -> dict | None:
        """The stage.json of a completed run of exactly this configuration, else None."""
        info_path = self.stage_dir(stage.name) / "stage.json"
        if not info_path.exists():
            return None
        info = json.loads(info_path.read_text())
        return info if info.get("config_hash") == stage.config_hash else None

    def _manifest_path(self) -> Path:
        return self.run_dir / "manifest.json"

    def load_manifest(self) -> dict:
        path = self._manifest_path()
        manifest = json.loads(path.read_text()) if path.exists() else {}
        manifest.setdefault("recipe", self.recipe.name)
        manifest.setdefault("created", _now())
        old = {s["name"]: s for s in manifest.get("stages", [])}
        manifest["stages"] = []
        for stage in self.plan:
            entry = old.get(stage.name, {})
            done = self.completed(stage)
            entry.update({"name": stage.name, "kind": stage.kind, "config_hash": stage.config_hash, "init": stage.init})
            if done:
                entry.update({k: done[k] for k in ("outputs", "metrics", "wall_time_s", "inputs", "finished") if k in done})
                entry["status"] = "complete"
            elif entry.get("status") in ("complete", None) or entry.get("config_hash") != stage.config_hash:
                entry["status"] = "pending"
            elif entry["status"] == "running":
                entry["status"] = "interrupted"  # the process that was running it is gone (killed)
            manifest["stages"].append(entry)
        old_evals = {e["target"]: e for e in manifest.get("evaluations", [])}
        manifest["evaluations"] = []
        for ev in self.evaluations.values():
            entry = {"target": ev.target, "dir": ev.directory, "config_hash": ev.stage.config_hash, "status": "pending"}
            done = self._evaluation_done(ev)
            if done:
                entry.update({k: done[k] for k in ("metrics", "wall_time_s", "inputs", "finished") if k in done})
                entry["status"] = "complete"
            elif old_evals.get(ev.target, {}).get("status") == "failed" and old_evals[ev.target].get("config_hash") == ev.stage.config_hash:
                entry.update(status="failed", error=old_evals[ev.target].get("error"))
            manifest["evaluations"].append(entry)
        return manifest

    def save_manifest(self, manifest: dict) -> None:
        manifest["updated"] = _now()
        atomic_write_json(self._manifest_path(), manifest)

    # -- resolving inputs

    def _inputs(self, stage: PlannedStage) -> dict[str, str]:
        inputs = {}
        if stage.model_ref:
            inputs["model"] = self._output_path(stage.model_ref, "model")
        else:
            inputs["model"] = self.recipe.model if stage.init == "base" else stage.init
        if stage.data_ref:
            inputs["data"] = self._output_path(stage.data_ref, "data")
        for key in _model_refs(stage.kind):
            value = getattr(stage.config, key, None)
            if value is not None:
                inputs[key] = self._output_path(ref_name(value), "model") if is_stage_ref(value) else value
        return inputs

    def _output_path(self, name: str, what: str) -> str:
        info = self.completed(self.by_name[name])
        if info is None:
            raise ConfigError(f"stage {name!r} has not completed; run it first (without --only)")
        return str(self.stage_dir(name) / info["outputs"][what])

    # -- running

    def run(self, from_stage: str | None = None, only: str | None = None) -> dict:
        """Run the plan; returns the manifest. ``from_stage`` reruns it and everything after it."""
        from pipelines.report import write_report

        for flag, value in (("--from", from_stage), ("--only", only)):
            if value is not None and value not in self.by_name:
                hint = nearest(value, self.by_name)
                raise ConfigError(f"{flag} {value}: no such stage" + (f"; did you mean {hint!r}?" if hint else f"; stages: {', '.join(self.by_name)}"))
        self.dist = dist = self._join()
        main = dist.is_main
        if main:
            check_writable(self.run_dir)
            atomic_write_text(self.run_dir / "recipe.resolved.yaml", yaml.safe_dump(to_dict(self.recipe), sort_keys=False, allow_unicode=True))
        manifest = self.load_manifest()
        if main:
            self.save_manifest(manifest)
        self.trackers = self._open_trackers() if main else None  # rank 0 reports
        try:
            self._run_plan(manifest, from_stage, only)
        finally:
            if self.trackers is not None:
                self.trackers.finish()
        if main:
            write_report(self.run_dir, manifest)
        dist.barrier()
        return manifest

    def _open_trackers(self):
        """One tracker run per recipe run: every tracker any stage reports to (each stage under its name)."""
        from pipelines.train import open_recipe_trackers

        names = [*self.recipe.report_to, *(t for s in self.plan for t in (s.report_to or []))]
        return open_recipe_trackers(self.recipe, self.run_dir, names)

    def _run_plan(self, manifest: dict, from_stage: str | None, only: str | None) -> None:
        from pipelines.report import write_report

        dist = self.dist
        main = dist.is_main
        forced = set()
        if from_stage:
            forced = {s.name for s in self.plan if s.index >= self.by_name[from_stage].index}
        if only:
            forced = {only}
        if not only:
            self._evaluate(BASE, manifest)
        for stage, entry in zip(self.plan, manifest["stages"]):
            if only and stage.name != only:
                continue
            if dist.broadcast_object(bool(self.completed(stage)) and stage.name not in forced):  # rank 0 decides
                if main:
                    print(f"[{stage.name}] complete (config {stage.config_hash}), skipped")
            else:
                self._run_stage(stage, entry, manifest)
                if main:
                    self._note_reused_evaluations(stage.name, manifest)
                    write_report(self.run_dir, manifest)
            self._evaluate(stage.name, manifest, rerun=stage.name in forced)

    # -- eval_after

    def _evaluation_done(self, ev: Evaluation) -> dict | None:
        """The stage.json of a completed evaluation of exactly this model and these settings."""
        if ev.reuse:
            return self.completed(self.by_name[ev.reuse])
        path = self.run_dir / ev.directory / "stage.json"
        if not path.exists():
            return None
        info = json.loads(path.read_text())
        return info if info.get("config_hash") == ev.stage.config_hash else None

    def _note_reused_evaluations(self, stage_name: str, manifest: dict) -> None:
        """An eval stage of the recipe that an evaluation reuses has just completed: record it."""
        for ev, entry in zip(self.evaluations.values(), manifest["evaluations"]):
            done = self._evaluation_done(ev) if ev.reuse == stage_name else None
            if done:
                entry.update({**{k: done[k] for k in ("metrics", "wall_time_s", "inputs", "finished") if k in done}, "status": "complete"})
        self.save_manifest(manifest)

    def _evaluate(self, target: str, manifest: dict, rerun: bool = False) -> None:
        """Evaluate the model after ``target`` when eval_after asks for it and it is not done yet.

        The work is the eval stage kind's own (pipelines/stages/sampling.py), into
        ``evals/.<target>.partial/``, renamed to ``evals/<target>/`` when complete.
        """
        from pipelines.report import write_report
        from pipelines.stages.base import StageContext

        ev = self.evaluations.get(target)
        if ev is None or ev.reuse:  # not asked for, or the recipe's own eval stage measures this model
            return
        dist = self.dist
        main = dist is None or dist.is_main
        done = bool(self._evaluation_done(ev)) and not rerun
        if dist is not None:
            done = dist.broadcast_object(done)  # rank 0 decides
        if done:
            return
        entry = next(e for e in manifest["evaluations"] if e["target"] == target)
        model = self.recipe.model if target == BASE else self._output_path(target, "model")
        work = self.run_dir / "evals" / f".{target}.partial"
        if main:
            if work.exists():
                shutil.rmtree(work)  # an interrupted evaluation starts over, as the sampling stages do
            work.mkdir(parents=True)
            print(f"[eval_after {target}] evaluating {model} (config {ev.stage.config_hash})")
            entry.update({"status": "running", "inputs": {"model": model}})
            entry.pop("error", None)
            self.save_manifest(manifest)
        if dist is not None:
            dist.barrier()  # the work directory exists before any rank writes into it
        started = time.perf_counter()
        ctx = StageContext(
            name=ev.stage.name, config=ev.stage.config, recipe=self.recipe, work_dir=work, init_model=model,
            data_path=None, resume=False, seed=self.recipe.seed, progress=self.progress,
            dist=dist if dist is not None and dist.active else None,
        )
        try:
            result = STAGE_KINDS["eval"]().run(ctx)
        except BaseException as exc:
            if main:
                entry.update({"status": "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed", "error": f"{type(exc).__name__}: {exc}"})
                self.save_manifest(manifest)
            raise
        if main:
            info = {
                "name": ev.stage.name, "kind": "eval", "config_hash": ev.stage.config_hash, "inputs": {"model": model},
                "metrics": _jsonable(result.metrics), "wall_time_s": time.perf_counter() - started, "finished": _now(),
            }
            atomic_write_json(work / "stage.json", info)
            self._move_into_place(f"evals/{target}", work)
            entry.update({**{k: info[k] for k in ("metrics", "wall_time_s", "finished")}, "status": "complete"})
            self.save_manifest(manifest)
            write_report(self.run_dir, manifest)
            print(f"[eval_after {target}] complete in {info['wall_time_s']:.0f} s")
        if dist is not None:
            dist.barrier()  # rank 0 has moved the evaluation into place

    def _run_stage(self, stage: PlannedStage, entry: dict, manifest: dict) -> None:
        from pipelines.stages.base import StageContext

        stage_cls = STAGE_KINDS[stage.kind]
        dist = self.dist
        main = dist is None or dist.is_main
        inputs = self._inputs(stage)
        work = self.partial_dir(stage.name)
        marker = work / "attempt.json"
        resume = False
        if main:
            if work.exists():
                previous = json.loads(marker.read_text()) if marker.exists() else {}
                if getattr(stage_cls, "resumable", False) and previous.get("config_hash") == stage.config_hash:
                    resume = True
                else:
                    shutil.rmtree(work)
            work.mkdir(parents=True, exist_ok=True)
            atomic_write_json(marker, {"config_hash": stage.config_hash, "started": _now()})
            print(f"[{stage.name}] {stage.kind}: {'resuming' if resume else 'running'} (config {stage.config_hash}) from {inputs['model']}")
            entry.update({"status": "running", "inputs": inputs, "started": _now(), "resumed": resume})
            entry.pop("error", None)
            self.save_manifest(manifest)
        if dist is not None:
            resume = dist.broadcast_object(resume)  # after rank 0 has prepared the work directory
        started = time.perf_counter()
        trackers = getattr(self, "trackers", None)
        tracker = trackers.scoped(stage.name, stage.report_to if stage.report_to is not None else self.recipe.report_to) if trackers else None
        ctx = StageContext(
            name=stage.name, config=stage.config, recipe=self.recipe, work_dir=work, init_model=inputs["model"],
            data_path=inputs.get("data"), resume=resume, seed=self.recipe.seed, progress=self.progress,
            tracker=tracker if tracker and tracker.trackers else None, inputs=inputs,
            dist=dist if dist is not None and dist.active else None,
        )
        try:
            result = stage_cls().run(ctx)
        except BaseException as exc:
            if main:
                entry.update({"status": "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed", "error": f"{type(exc).__name__}: {exc}"})
                self.save_manifest(manifest)
            raise
        if not main:
            dist.barrier()  # rank 0 moves the stage into place
            return
        wall = time.perf_counter() - started
        if ctx.tracker is not None:
            ctx.tracker.log_summary({**result.metrics, "wall_time_s": wall})
        info = {
            "name": stage.name, "kind": stage.kind, "config_hash": stage.config_hash, "inputs": inputs,
            "outputs": result.outputs, "metrics": _jsonable(result.metrics), "wall_time_s": wall, "finished": _now(),
        }
        atomic_write_json(work / "stage.json", info)
        marker.unlink()
        self._move_into_place(stage.name, work)
        entry.update({**info, "status": "complete"})
        self.save_manifest(manifest)
        print(f"[{stage.name}] complete in {wall:.0f} s")
        if dist is not None:
            dist.barrier()

    def _move_into_place(self, name: str, work: Path) -> None:
        final = self.stage_dir(name)
        if final.exists():
            # An older result (other configuration, or --from): keep it, out of the way.
            old_hash = json.loads((final / "stage.json").read_text()).get("config_hash", "unknown") if (final / "stage.json").exists() else "unknown"
            target = self.run_dir / "superseded" / f"{name.replace('/', '-')}-{old_hash}-{int(time.time())}"
            target.parent.mkdir(exist_ok=True)
            os.replace(final, target)
        os.replace(work, final)
        fsync_dir(self.run_dir)

    def describe(self) -> str:
        """The plan as a table (for --dry-run)."""
        lines = [f"recipe {self.recipe.name}: {len(self.plan)} stages into {self.run_dir}", ""]
        lines.append(f"{'#':<3} {'stage':<22} {'kind':<20} {'init':<28} {'data':<28} {'config':<16} status")
        manifest = self.load_manifest() if self.run_dir.exists() else {"stages": [{"status": "pending"}] * len(self.plan)}
        for stage, entry in zip(self.plan, manifest["stages"]):
            data = getattr(stage.config, "data", None)
            data_text = data if isinstance(data, str) else (data.source if data is not None else "(recipe default)")
            lines.append(f"{stage.index:<3} {stage.name:<22} {stage.kind:<20} {stage.init:<28} {str(data_text)[:28]:<28} {stage.config_hash:<16} {entry.get('status', 'pending')}")
        if self.evaluations:
            done = {e["target"]: e.get("status", "pending") for e in manifest.get("evaluations", [])}
            lines += ["", "eval_after (the eval set, with the last eval stage's settings):"]
            for ev in self.evaluations.values():
                where = f"by stage {ev.reuse}" if ev.reuse else ev.directory
                lines.append(f"    {ev.target:<22} {where:<28} {ev.stage.config_hash:<16} {done.get(ev.target, 'pending')}")
        return "\n".join(lines)


def dry_run(recipe: Recipe, run_dir: Path | None = None) -> str:
    """Check everything that can be checked without training: plan, data, rewards, models."""
    from grpo.data import DataError, is_hub_id, load_rows, load_sft_rows
    from grpo.models import resolve_model_path
    from pipelines.recipe import reward_terms
    from pipelines.stages.common import data_spec
    from pipelines.train import check_rewards_on_data

    runner = Runner(recipe, run_dir)
    checks = []
    reward_terms(recipe.rewards)
    resolve_model_path(recipe.model)
    checks.append(f"model {recipe.model}: found")
    loaded: dict[str, list] = {}

    def check_data(spec, sft: bool, label: str) -> list | None:
        key = json.dumps(to_dict(spec), sort_keys=True)
        if key not in loaded:
            try:
                loaded[key] = (load_sft_rows if sft else load_rows)(spec)
            except DataError as exc:
                if not is_hub_id(spec.source):
                    raise
                # A hub dataset on a machine without the hub: report it, check everything else.
                checks.append(f"{label}: {spec.source} NOT CHECKED (hub unreachable here: {str(exc)[:80]})")
                return None
        checks.append(f"{label}: {spec.source} ({len(loaded[key])} rows)")
        return loaded[key]

    train_rows = check_data(recipe.data.train, False, "data.train")
    eval_rows = check_data(recipe.data.eval, False, "data.eval") if recipe.data.eval is not None else None
    for stage in runner.plan:
        cfg = stage.config
        rewards = getattr(cfg, "rewards", None)
        if rewards:
            reward_terms(rewards)
        if stage.init not in ("base",) and not stage.model_ref:
            resolve_model_path(stage.init)
        for key in _model_refs(stage.kind):
            if getattr(cfg, key, None) is not None and not is_stage_ref(getattr(cfg, key)):
                resolve_model_path(getattr(cfg, key))
                checks.append(f"stages.{stage.name}.{key} {getattr(cfg, key)}: found")
        data = getattr(cfg, "data", None)
        rows = eval_rows if stage.kind == "eval" else train_rows
        if data is not None and not is_stage_ref(data):
            rows = check_data(data_spec(data, None, None, stage.name), stage.kind == "sft", f"stages.{stage.name}.data")
        elif data is not None:
            rows = None  # an earlier stage's output: not there yet
        if hasattr(cfg, "rewards") and rows:  # a kind that scores (grpo, rejection_sampling, eval)
            # Each reward called once on a sample of the stage's rows: signature/column errors now.
            check_rewards_on_data(reward_terms(rewards or recipe.rewards), rows, recipe.grpo)
        mix = getattr(cfg, "mix", None)
        if mix is not None and not is_stage_ref(mix.data):
            check_data(data_spec(mix.data, None, None, stage.name), True, f"stages.{stage.name}.mix.data")
        if stage.kind == "eval" and data is None and recipe.data.eval is None:
            raise ConfigError(f"stages.{stage.name}.data: an eval stage needs data (or a recipe-level data.eval)")
    return runner.describe() + "\n\nchecks:\n" + "\n".join(("  --  " if "NOT CHECKED" in c else "  ok  ") + c for c in checks)


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")
