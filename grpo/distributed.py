"""GRPO over several processes: who holds which prompts, and the few collectives only GRPO needs.

Launch with ``grpo train RECIPE --num-processes N`` (torchrun underneath; ``--nnodes/--node-rank/
--master-addr`` for several machines) or ``accelerate launch --config_file configs/accelerate/...
-m pipelines.cli train RECIPE``. accelerate's ``PartialState`` reads the launcher's environment
and joins the process group (gloo on CPU, NCCL for a model on a GPU).

The weights are PyTorch's engines' business (grpo/parallel.py): ``distributed.strategy: ddp``
(DistributedDataParallel, every rank holds the model) or ``fsdp`` (FSDP2 ``fully_shard`` per
decoder layer). What is left here is what only GRPO needs, the same under both:

    the step's B prompts      rank r takes prompts [r·B/N, (r+1)·B/N): whole groups only, and
                              samples prompt i with the seed of its index i in the whole batch,
                              so its rows are exactly rows of the one-process run (no exchange)
    rewards                   ``gather_scores``: one all-gather of every rank's scores, so the
                              advantages (any estimator) and the reward metrics are the whole
                              batch's; each rank keeps its rows (``local``)
    counts                    ``whole_batch_shape``: one all-gather of every row's token count:
                              ``BatchShape`` holds the whole batch's sequence and token counts, so
                              a rank's loss is its rows' *share* of the batch loss and the shares
                              add up to the one-process loss (the engines sum the gradients)
    loss                      ``sum``: one all-reduce of the ranks' loss shares per pass (the
                              logged loss; a NaN anywhere skips the update everywhere)
    metrics                   ``gather_lists``: one all-gather of the per-row figures the metrics
                              and the logged completions need
    files                     rank 0 writes metrics, samples and the final model; every rank
                              writes its shards of a checkpoint (``torch.distributed.checkpoint``)

Micro-batches (``gradient_accumulation_steps`` = g) are counted over the whole batch too: a
micro-batch is (B·G)/g rows whatever N is. With g ≥ N each rank runs g/N whole micro-batches;
with g < N each micro-batch is spread over N/g ranks (``BatchShape.micro_batch_tokens`` then
holds its token count, which ``bnpo`` divides by). So g must be a multiple or a divisor of N.

In one process :class:`DataParallel` is a stand-in whose collectives return their input, and
nothing of ``torch.distributed`` or accelerate is touched.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

import torch

from grpo.config import GRPOConfig
from grpo.launch import DistributedSettings, launched_world_size
from grpo.loss import BatchShape
from grpo.schema import ConfigError


def check_data_parallel(config: GRPOConfig, world_size: int, settings: DistributedSettings | None = None) -> None:
    """ConfigError (one line, naming the field) when ``config`` cannot be split over ``world_size`` ranks."""
    if world_size <= 1:
        return
    settings = (settings or DistributedSettings()).from_launcher()
    if os.environ.get("ACCELERATE_MIXED_PRECISION", "no").strip().lower() not in ("no", "") and settings.strategy != "fsdp":
        raise ConfigError("accelerate config: mixed_precision applies to fsdp only; with ddp the recipe's precision key sets it (mixed_precision: 'no')")
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
    """This process's place among the ranks, and the collectives a GRPO step needs (the weights'
    own are the engines', grpo/parallel.py).

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
    def from_environment(cls, config: GRPOConfig, device: torch.device, settings: DistributedSettings | None = None) -> "DataParallel":
        """Join the launcher's process group (through accelerate) when there is one, and check that
        ``config`` splits over it. ``device``: where the model trains (it picks gloo or NCCL)."""
        if launched_world_size() <= 1 and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return cls()
        check_data_parallel(config, launched_world_size(), settings)  # before joining: errors come without a rendezvous
        state = join_process_group(device)
        if state.num_processes <= 1:
            return cls()
        check_data_parallel(config, state.num_processes, settings)
        return cls.of_process_group(device)

    @classmethod
    def of_process_group(cls, device: torch.device) -> "DataParallel":
        """This rank in the process group that is already joined."""
        import torch.distributed as dist

        # Objects and CPU tensors need a gloo group when the default backend is NCCL (a GPU launch).
        group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        device_group = group if device.type == "cpu" else None
        return cls(rank=dist.get_rank(), world_size=dist.get_world_size(), group=group, device_group=device_group)

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

    def first_micro_batch_mean(self, parts: list[tuple[float, int]], micro_batches: int) -> float:
        """A token mean measured on the batch's first micro-batch only (the trainer's entropy), from
        every rank's ``(value, tokens)`` in rank order (``gather_lists``): the ranks holding a slice
        of that micro-batch combined, weighted by their tokens."""
        parts = parts[: max(1, self.world_size // micro_batches)]
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

    def broadcast_parameters(self, model) -> None:
        """Every rank takes rank 0's weights (they are equal already when all load the same files)."""
        if not self.active:
            return
        with torch.no_grad():
            for p in model.parameters():
                group = self.group if p.device.type == "cpu" else self.device_group
                torch.distributed.broadcast(p.data, src=0, group=group)

    def broadcast_object(self, value):
        """Rank 0's ``value`` on every rank."""
        if not self.active:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier(group=self.group)


def join_process_group(device: torch.device):
    """accelerate's ``PartialState`` for this launch: gloo for a model on the CPU (no GPU is
    claimed), NCCL for one on a GPU. Joining twice returns the same state."""
    from accelerate import PartialState

    return PartialState(cpu=device.type == "cpu")
