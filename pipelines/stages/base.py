"""What a stage kind is: a typed config, a run function, and the outputs it leaves behind.

A stage kind is a class registered with ``@register_stage("kind")``. It declares

* ``Config``: a dataclass of the keys a recipe may give this kind (validated on load; the
  common keys ``name``, ``kind``, ``init`` are handled by the runner),
* ``produces``: which outputs later stages may reference (``"model"``, ``"data"``),
* ``run(ctx) -> StageResult``: do the work inside ``ctx.work_dir``.

The runner gives each run a fresh or resumed temporary directory (``ctx.work_dir``) and moves
it into place only when ``run`` returns, so a stage directory that exists is complete.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from grpo.registry import registrar

STAGE_KINDS: dict[str, type["Stage"]] = {}


#: ``@register_stage(kind)`` on a :class:`Stage` subclass; sets its ``kind``.
register_stage = registrar(STAGE_KINDS, name_attr="kind")


@dataclass
class StageContext:
    name: str  # the stage's name in the recipe
    config: Any  # the stage kind's Config instance, after defaults from the recipe
    recipe: Any  # the whole Recipe (top-level defaults: model, data, template, rewards, grpo, seed)
    work_dir: Path  # write everything here; the runner renames it into place on success
    init_model: str  # model to start from: an alias, hub id or local directory
    data_path: str | None  # a referenced earlier stage's dataset file, if `data: stages.<name>`
    resume: bool  # work_dir holds an interrupted attempt of this same configuration
    seed: int
    progress: bool = True
    tracker: Any = None  # grpo.tracking.TrackerLogger under this stage's name, when the recipe reports to trackers
    inputs: dict[str, str] = field(default_factory=dict)  # resolved inputs: model, data, and a kind's model_refs (teacher)
    dist: Any = None  # grpo.distributed.DataParallel when the run has several processes (None: one)

    @property
    def is_main(self) -> bool:
        """Rank 0 (or the only process): the one that writes the stage's files."""
        return self.dist is None or self.dist.is_main


@dataclass
class StageResult:
    outputs: dict[str, str] = field(default_factory=dict)  # "model"/"data" -> path relative to the stage dir
    metrics: dict[str, Any] = field(default_factory=dict)  # headline figures for the manifest and report


class Stage:
    kind: ClassVar[str]
    Config: ClassVar[type]
    produces: ClassVar[tuple[str, ...]] = ()
    # Config keys naming another model (a model name or stages.<name>), resolved by the runner into ctx.inputs.
    model_refs: ClassVar[tuple[str, ...]] = ()

    def run(self, ctx: StageContext) -> StageResult:  # pragma: no cover - interface
        raise NotImplementedError
