"""Where a run's processes come from, and what the recipe asks of them (no torch imported here).

``grpo train|run RECIPE --num-processes N`` starts N processes on this machine through torchrun;
``--nnodes M --node-rank R --master-addr A [--master-port P]`` makes it one of M machines
(torchrun's static rendezvous: the same command on every machine, each with its own rank).
``accelerate launch`` and ``torchrun`` themselves work too: a process knows it was launched from
the environment they set (``WORLD_SIZE``, ``RANK``, accelerate's ``ACCELERATE_USE_FSDP`` ...).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, replace
from typing import Literal

from grpo.schema import ConfigError

_RANK_VARIABLES = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
_WORLD_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


@dataclass
class DistributedSettings:
    """How several processes share the policy: the recipe's ``distributed:`` section (one process ignores it).

    Under ``accelerate launch`` the config file's FSDP settings map onto these
    (:meth:`from_launcher`): ``distributed_type: FSDP`` → ``fsdp``, ``fsdp_offload_params`` →
    ``cpu_offload``, ``fsdp_reshard_after_forward`` → ``reshard_after_forward``.
    """

    strategy: Literal["auto", "ddp", "fsdp"] = "auto"  # auto: fsdp under an accelerate FSDP config, else ddp
    cpu_offload: bool = False  # fsdp on GPUs: parameter shards, gradients and AdamW state in CPU memory (CPUOffloadPolicy)
    reshard_after_forward: bool = True  # fsdp: free each layer's gathered weights after its forward (False: keep them for the backward: fewer all-gathers, more memory)
    rollout_weights: Literal["gathered", "per_layer"] = "gathered"  # fsdp rollouts: every layer gathered once per rollout (fast; the whole model in compute dtype on each device meanwhile), or each layer per forward with the ranks decoding in step (one layer at a time: for models whose whole weights do not fit beside the shards)

    def resolved_strategy(self) -> str:
        """``ddp`` or ``fsdp``: the recipe's choice, or the launcher's when the recipe says ``auto``."""
        return self.from_launcher().strategy

    def from_launcher(self, env=None) -> "DistributedSettings":
        """These settings with what ``accelerate launch --config_file ...`` put in the environment
        applied; ConfigError (one line) when the two disagree or the config asks for what we do not run."""
        env = os.environ if env is None else env
        flag = lambda name: env.get(name, "").strip().lower() == "true"  # noqa: E731
        if flag("ACCELERATE_USE_DEEPSPEED"):
            raise ConfigError("accelerate config: DeepSpeed is not one of the trainer's engines; use distributed: {strategy: ddp | fsdp} "
                              "(configs/accelerate/fsdp.yaml, ddp_multi_gpu.yaml)")
        if not flag("ACCELERATE_USE_FSDP"):
            if self.strategy == "auto":
                return replace(self, strategy="ddp")
            return self
        if env.get("FSDP_VERSION", "1").strip() != "2":
            raise ConfigError(f"accelerate config: fsdp_version {env.get('FSDP_VERSION', '1')} is not supported; set fsdp_version: 2 (FSDP2, fully_shard)")
        if self.strategy == "ddp":
            raise ConfigError("distributed.strategy: the recipe says ddp but the accelerate config says FSDP; change one of them")
        if flag("FSDP_ACTIVATION_CHECKPOINTING"):
            raise ConfigError("accelerate config: fsdp_activation_checkpointing: set grpo.gradient_checkpointing: true in the recipe instead")
        out = replace(self, strategy="fsdp")
        if "FSDP_OFFLOAD_PARAMS" in env:
            out.cpu_offload = flag("FSDP_OFFLOAD_PARAMS")
        if "FSDP_RESHARD_AFTER_FORWARD" in env:
            out.reshard_after_forward = flag("FSDP_RESHARD_AFTER_FORWARD")
        return out


def _env_int(names: tuple[str, ...], default: int) -> int:
    for name in names:
        if os.environ.get(name, "").strip():
            return int(os.environ[name])
    return default


def launched_world_size() -> int:
    """How many processes the launcher (torchrun, accelerate launch, mpirun) started; 1 without one."""
    return _env_int(_WORLD_VARIABLES, 1)


def is_main_process() -> bool:
    """Rank 0, or no launcher: read from the environment, usable before the process group exists."""
    return launched_world_size() <= 1 or _env_int(_RANK_VARIABLES, 0) == 0


@dataclass
class Launch:
    """Where this command's processes run: ``--num-processes`` on this machine, and for several
    machines ``--nnodes/--node-rank/--master-addr/--master-port`` (torchrun's static rendezvous)."""

    num_processes: int = 1  # on this machine
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int = 29500

    @property
    def world_size(self) -> int:
        return self.num_processes * self.nnodes

    def check(self) -> None:
        if launched_world_size() > 1:
            raise ConfigError("--num-processes: this process was already started by a launcher (torchrun, accelerate launch); drop the flag")
        if self.num_processes < 1:
            raise ConfigError(f"--num-processes: must be ≥ 1, got {self.num_processes}")
        if self.nnodes < 1:
            raise ConfigError(f"--nnodes: must be ≥ 1, got {self.nnodes}")
        if not 0 <= self.node_rank < self.nnodes:
            raise ConfigError(f"--node-rank: must be in [0, {self.nnodes}) for --nnodes {self.nnodes}, got {self.node_rank}")
        if self.nnodes > 1 and not self.master_addr:
            raise ConfigError("--master-addr: several machines need the address of machine 0 (node rank 0), reachable from every machine")

    def command(self, argv: list[str]) -> list[str]:
        """``python -m pipelines.cli <argv>`` in this launch's processes, through torchrun."""
        run = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={self.num_processes}"]
        if self.nnodes == 1 and not self.master_addr:
            run.append("--standalone")  # one machine: a free port, found by torchrun
        else:
            run += [f"--nnodes={self.nnodes}", f"--node-rank={self.node_rank}", f"--master-addr={self.master_addr or '127.0.0.1'}",
                    f"--master-port={self.master_port}"]
        return [*run, "-m", "pipelines.cli", *argv]
