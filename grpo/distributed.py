"""Data-parallel GRPO: N processes, one model copy each, the same step as one process.

Launch with ``grpo train RECIPE --num-processes N`` (``torchrun`` underneath) or with
``accelerate launch [--config_file configs/accelerate/ddp_cpu.yaml] -m pipelines.cli train RECIPE``.
accelerate's ``PartialState`` reads the launcher's environment and joins the process group
(gloo on CPU, NCCL for a model on a GPU). How step k is shared out among the N ranks:

    the step's B prompts      rank r takes prompts [r·B/N, (r+1)·B/N): whole groups only, and
                              samples prompt i with the seed of its index i in the whole batch,
                              so its rows are exactly rows of the one-process run
    rewards                   gathered from every rank: the advantages (any estimator) and the
                              reward metrics are those of the whole batch; each rank keeps its rows
    the loss                  ``BatchShape`` holds the whole batch's sizes (all ranks' rows and
                              tokens), so a rank's loss is its rows' *share* of the batch loss and
                              the shares add up to the one-process loss
    gradients                 summed over the ranks after the micro-batches (not averaged: the
                              shares already carry the normalisation), then clipped and applied
                              by every rank alike, so the weights stay identical everywhere
    files                     rank 0 writes metrics, samples, checkpoints and the final model;
                              the others wait at a barrier. A resumed run loads the same
                              checkpoint on every rank.

Micro-batches (``gradient_accumulation_steps`` = g) are counted over the whole batch too: a
micro-batch is (B·G)/g rows whatever N is. With g ≥ N each rank runs g/N whole micro-batches;
with g < N each micro-batch is spread over N/g ranks (``BatchShape.micro_batch_tokens`` then
holds its token count, which ``bnpo`` divides by). So g must be a multiple or a divisor of N.

The model is not wrapped in ``DistributedDataParallel``: the gradients are summed explicitly
once per optimiser step (:meth:`DataParallel.sum_gradients`), so the rollout engine, the
prompt-sharing forwards (two forwards per backward) and checkpoints see the plain model.
DeepSpeed and FSDP (parameter sharding) are not supported by the trainer yet.

In one process :class:`DataParallel` is a stand-in whose collectives return their input, and
nothing of ``torch.distributed`` or accelerate is touched.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, replace

import torch

from grpo.config import GRPOConfig
from grpo.loss import BatchShape
from grpo.schema import ConfigError

_RANK_VARIABLES = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
_WORLD_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
_BUCKET_BYTES = 64 * 2**20  # gradients are summed in flat buckets of at most this size


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


def check_data_parallel(config: GRPOConfig, world_size: int) -> None:
    """ConfigError (one line, naming the field) when ``config`` cannot be split over ``world_size`` ranks."""
    if world_size <= 1:
        return
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true" or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        raise ConfigError(
            "accelerate config: the GRPO trainer is data-parallel only (every rank holds the whole model); "
            "DeepSpeed and FSDP are not supported yet: launch with configs/accelerate/ddp_cpu.yaml or ddp_multi_gpu.yaml"
        )
    if config.prompts_per_step % world_size:
        raise ConfigError(
            f"grpo.prompts_per_step: must be divisible by the number of processes ({world_size}) so that each "
            f"process gets whole prompt groups, got {config.prompts_per_step}"
        )
    g = config.gradient_accumulation_steps
    if g % world_size and world_size % g:
        raise ConfigError(
            f"grpo.gradient_accumulation_steps: must be a multiple or a divisor of the number of processes ({world_size}), got {g}"
        )
    if config.dynamic_sampling:
        raise ConfigError(f"grpo.dynamic_sampling: dynamic_sampling is not supported with --num-processes > 1 yet ({world_size} processes)")


@dataclass
class DataParallel:
    """This process's place among the data-parallel ranks, and the collectives a GRPO step needs.

    ``rank``/``world_size`` are 0/1 in a single process, where every method returns its input.
    """

    rank: int = 0
    world_size: int = 1
    group: object = field(default=None, repr=False)  # process group for CPU tensors and objects
    device_group: object = field(default=None, repr=False)  # process group for the model's tensors

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_environment(cls, config: GRPOConfig, model) -> "DataParallel":
        """Join the launcher's process group (through accelerate) when there is one, check that
        ``config`` splits over it, and start every rank from rank 0's weights."""
        if launched_world_size() <= 1 and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return cls()
        check_data_parallel(config, launched_world_size())  # before joining: errors come without a rendezvous
        import torch.distributed as dist
        from accelerate import PartialState

        device = next(model.parameters()).device
        # cpu=True: gloo, and no GPU is claimed for a model that lives on the CPU.
        state = PartialState(cpu=device.type == "cpu")
        if state.num_processes <= 1:
            return cls()
        check_data_parallel(config, state.num_processes)
        # Objects and CPU tensors need a gloo group when the default backend is NCCL (a GPU launch).
        group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        device_group = group if device.type == "cpu" else None
        self = cls(rank=state.process_index, world_size=state.num_processes, group=group, device_group=device_group)
        self.broadcast_parameters(model)
        return self

    # --- the batch ----------------------------------------------------------------------

    def shard(self, batch_rows: list) -> tuple[int, list]:
        """This rank's prompts of the step's batch and the batch index of the first one."""
        n = len(batch_rows) // self.world_size
        return self.rank * n, batch_rows[self.rank * n : (self.rank + 1) * n]

    def local(self, values: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a whole-batch tensor (ranks hold equal, contiguous shares)."""
        n = values.shape[0] // self.world_size
        return values[self.rank * n : (self.rank + 1) * n]

    def whole_batch_shape(self, shape: BatchShape, loss_mask: torch.Tensor) -> tuple[BatchShape, int]:
        """This rank's ``shape`` made the whole batch's (every rank's rows and tokens), and the rows
        of this rank's micro-batches; see the module docstring for how micro-batches are split."""
        rows, g = loss_mask.shape[0], shape.num_micro_batches
        row_tokens = self.gather(loss_mask.sum(dim=1).tolist())  # every row of the batch, in batch order
        total_rows = len(row_tokens)
        micro_tokens = None
        if g < self.world_size:  # one micro-batch spread over world_size/g ranks: this rank holds a slice of it
            size = total_rows // g
            k = self.rank * rows // size
            micro_tokens = int(sum(row_tokens[k * size : (k + 1) * size]))
        whole = replace(shape, num_sequences=total_rows, num_tokens=int(sum(row_tokens)), micro_batch_tokens=micro_tokens)
        return whole, min(rows, total_rows // g)

    # --- collectives --------------------------------------------------------------------

    def gather(self, values: list) -> list:
        """Every rank's list, concatenated in rank order (the same list on every rank)."""
        if not self.active:
            return values
        parts = [None] * self.world_size
        torch.distributed.all_gather_object(parts, values, group=self.group)
        return [v for part in parts for v in part]

    def gather_lists(self, values: dict[str, list]) -> dict[str, list]:
        """``gather`` for several named lists in one exchange."""
        if not self.active:
            return values
        parts = [None] * self.world_size
        torch.distributed.all_gather_object(parts, values, group=self.group)
        return {k: [v for part in parts for v in part[k]] for k in values}

    def first_micro_batch_mean(self, value: float, tokens: int, micro_batches: int) -> float:
        """A token mean measured on the batch's first micro-batch only (the trainer's entropy):
        this rank's ``value`` over ``tokens`` tokens, combined over the ranks holding a slice of it."""
        if not self.active:
            return value
        parts = self.gather([(value, tokens)])[: max(1, self.world_size // micro_batches)]
        if len(parts) == 1:
            return parts[0][0]
        total = sum(n for _, n in parts)
        return sum(v * n for v, n in parts) / total if total else 0.0

    def sum(self, value: float) -> float:
        """The sum over ranks of a number (NaN and inf propagate)."""
        if not self.active:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64)
        torch.distributed.all_reduce(t, group=self.group)
        return t.item()

    def gather_scores(self, scores):
        """The whole batch's :class:`~grpo.scoring.Scores`: rows in batch order; figures the
        rewards logged (``log_metric``) averaged over the ranks (each is a share of its rank's
        equal number of rows), except the ``reward_errors/*`` counts, which add up."""
        if not self.active:
            return scores
        from grpo.scoring import Scores

        parts = [None] * self.world_size
        torch.distributed.all_gather_object(parts, scores, group=self.group)
        merged = Scores.concat(parts)
        extra = {}
        for key in {k for p in parts for k in p.extra_metrics}:
            values = [p.extra_metrics[key] for p in parts if key in p.extra_metrics]
            extra[key] = sum(values) if key.startswith("reward_errors/") else sum(values) / len(values)
        merged.extra_metrics = extra
        return merged

    def sum_gradients(self, params: list[torch.Tensor]) -> None:
        """Sum ``.grad`` over the ranks in place (a missing gradient counts as zeros), a few flat
        buckets of same-dtype gradients at a time."""
        if not self.active:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        bucket: list[torch.Tensor] = []

        def reduce_bucket():
            flat = torch.cat([g.reshape(-1) for g in bucket])
            torch.distributed.all_reduce(flat, group=self.device_group)
            for g, part in zip(bucket, flat.split([g.numel() for g in bucket])):
                g.copy_(part.view_as(g))
            bucket.clear()

        for p in params:
            g = p.grad
            if bucket and (g.dtype != bucket[0].dtype or sum(b.numel() * b.element_size() for b in bucket) > _BUCKET_BYTES):
                reduce_bucket()
            bucket.append(g)
        if bucket:
            reduce_bucket()

    def broadcast_parameters(self, model) -> None:
        """Every rank takes rank 0's weights (they are equal already when all load the same files)."""
        if not self.active:
            return
        with torch.no_grad():
            for p in model.parameters():
                torch.distributed.broadcast(p.data, src=0, group=self.device_group)

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier(group=self.group)


def relaunch_command(num_processes: int, argv: list[str]) -> list[str]:
    """The command that runs ``python -m pipelines.cli <argv>`` in ``num_processes`` local processes:
    torchrun (what ``accelerate launch`` runs for several processes too), on a free port."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={num_processes}",
            "-m", "pipelines.cli", *argv]
