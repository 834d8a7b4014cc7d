"""The policy on PyTorch's own engines: one process, DDP, or FSDP2; and its sharded checkpoints.

:func:`wrap_policy` gives the trainer a :class:`PolicyEngine`, the one object that knows how the
policy's weights are laid out over the ranks:

    strategy   weights on each rank                  gradients                   optimiser state
    none       all (one process)                     local                       all
    ddp        all (DistributedDataParallel)         all-reduced (summed) in     all
                                                     the last micro-batch's
                                                     backward
    fsdp       1/N: every decoder layer and the      reduce-scattered (summed)   1/N (AdamW on the
               rest of the model sharded on dim 0    in every backward           shards)
               (``fully_shard``), gathered per
               layer for its forward and backward

Gradients are *summed*, not averaged, over the ranks: each rank's loss is already its share of
the whole batch's loss (grpo/distributed.py), so the sum is the one-process gradient. DDP sums
through a communication hook, FSDP through ``set_gradient_divide_factor(1)``.

What the trainer asks of the engine:

* ``forward(fn, *args)`` runs ``fn(model, *args)`` with gradients: under DDP as one forward of
  the wrapped model (the loss forward may call the model twice, prompt then completions, and DDP
  wants one forward per backward); ``sync_gradients(flag)`` before each micro-batch says whether
  its backward is the one that communicates (DDP; FSDP reduce-scatters in every backward and
  keeps only the summed shard, which is what keeps its gradient memory at 1/N).
* ``generation(engine)``: the rollout engines call the policy many times (one forward per token)
  and each rank decodes for as many steps as *its* completions need. Under FSDP, with
  ``rollout_weights: gathered`` (the default), every layer is gathered once when the rollout
  starts and kept, resharded when it ends: the full weights (in the compute dtype) exist only for
  the rollout's duration, never as a permanent second copy, and no rank waits on another between
  tokens. With ``per_layer`` FSDP's own hooks gather each layer for each forward and free it
  after, so a rank holds one layer beyond its shards; the ranks then decode in step (the
  engine's ``step_sync``: one all-reduce per token, and a rank that is done runs empty forwards
  until every rank is). The vLLM engine reads the weights itself (one tensor at a time,
  grpo/rollout_vllm.py) and needs no gathering here.
* ``clip_grad_norm(params, max_norm)``: the global norm (from the shards under FSDP).
* ``save(path, optimizer)`` / ``load(path, optimizer)``: ``torch.distributed.checkpoint`` of the
  trainable weights and the optimiser state, by parameter name and global shape, each rank
  writing its own shards. Any number of processes, under either strategy, can load it.
* ``full_state_dict()``: the whole model gathered once onto rank 0 (CPU), for the final
  Hugging Face directory; LoRA adapters are merged by :func:`merge_lora`.

Precision: FSDP's ``MixedPrecisionPolicy`` is the run's :class:`grpo.precision.Precision`'s
(``Precision.fsdp_mixed_precision``): under ``bf16-mixed`` the float32 shards are gathered in
bf16 and gradients reduced in float32; otherwise the weights' own dtype throughout. accelerate's
``mixed_precision`` reaches it through the recipe's precision (grpo/precision.py: ``launcher_precision``).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from grpo.schema import ConfigError


def _is_dtensor(t) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def local_bytes(t: torch.Tensor | None) -> int:
    """Bytes this rank holds for tensor ``t`` (its shard when ``t`` is a DTensor)."""
    if t is None:
        return 0
    if _is_dtensor(t):
        t = t.to_local()
    return t.numel() * t.element_size()


def state_memory(model, optimizer) -> dict[str, float]:
    """MiB of this rank's policy parameters, gradients and optimiser state (what sharding divides),
    and on a GPU the allocator's peak."""
    params = list(model.parameters())
    optim = sum(local_bytes(v) for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v) and v.dim() > 0)
    mib = 2**20
    out = {
        "memory/params_mib": sum(local_bytes(p) for p in params) / mib,
        "memory/grads_mib": sum(local_bytes(p.grad) for p in params) / mib,
        "memory/optimizer_mib": optim / mib,
    }
    if params and params[0].device.type == "cuda":  # the allocator's peak on this GPU so far (everything: rollouts too)
        out["memory/cuda_peak_mib"] = torch.cuda.max_memory_allocated(params[0].device) / mib
    return out


# --- the engines --------------------------------------------------------------------------


class _CallOnModel(torch.nn.Module):
    """``forward(fn, *args, **kwargs) = fn(model, *args, **kwargs)``: a whole loss forward as one
    forward of one module (what DDP's reducer expects before each backward)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, fn, *args, **kwargs):
        return fn(self.model, *args, **kwargs)


def _sum_allreduce_hook(group, bucket):
    """DDP communication hook: the bucket's gradients summed over the ranks (DDP's default averages)."""
    work = torch.distributed.all_reduce(bucket.buffer(), group=group, async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


class PolicyEngine:
    """The policy in one process (``strategy == "none"``) and the base of the two engines."""

    strategy = "none"

    def __init__(self, model, ref_model=None, dist=None):
        self.model, self.ref_model, self.dist = model, ref_model, dist
        self._call = _CallOnModel(model)

    def forward(self, fn, *args, **kwargs):
        return self._call(fn, *args, **kwargs)

    def sync_gradients(self, flag: bool) -> None:
        """Whether the next backward communicates gradients (DDP: only the last micro-batch's)."""

    def shard_frozen(self, model) -> None:
        """Lay out another frozen model (a distillation teacher) as the reference is: sharded under FSDP."""

    @contextmanager
    def generation(self, engine):
        yield

    def clip_grad_norm(self, params: list[torch.Tensor], max_norm: float) -> float:
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))

    @property
    def process_group(self):
        return None if self.dist is None else self.dist.group

    def save(self, path: Path, optimizer) -> None:
        """Trainable weights and optimiser state into ``path`` (torch.distributed.checkpoint; every rank calls)."""
        import torch.distributed.checkpoint as dcp

        with _quiet_single_process():
            dcp.save(_state(self.model, optimizer), checkpoint_id=str(path), process_group=self.process_group)

    def load(self, path: Path, optimizer) -> None:
        """Load :meth:`save`'s files (written by any number of processes) into this rank's layout."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        state = _state(self.model, optimizer)
        expected = set(state["model"])
        with _quiet_single_process():
            stored = set(dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata)
            names = {k.removeprefix("model.") for k in stored if k.startswith("model.")}
            if expected - names or names - expected:
                raise ValueError(
                    f"checkpoint {path.parent} does not match the model (missing {sorted(expected - names)[:3]}, "
                    f"unexpected {sorted(names - expected)[:3]})"
                )
            dcp.load(state, checkpoint_id=str(path), process_group=self.process_group)
        set_state_dict(self.model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                       options=StateDictOptions(ignore_frozen_params=True, strict=False))

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Every weight, whole, on the CPU of rank 0 (None on the others); LoRA merged, plain names."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.dist is not None and not self.dist.is_main:
            return None
        # A tied weight (an output layer sharing the embeddings) once, under its first name, as
        # save_pretrained writes it from an unsharded model.
        first = {name for name, _ in self.model.named_parameters()}
        for name, _ in self.model.named_parameters(remove_duplicate=False):
            if name not in first:
                state.pop(name, None)
        return merge_lora(state, lora_scalings(self.model)) if hasattr(self.model, "peft_config") else state


class DDPEngine(PolicyEngine):
    """Every rank holds the whole policy; DDP sums the gradients during the backward."""

    strategy = "ddp"

    def __init__(self, model, ref_model, dist, device: torch.device):
        super().__init__(model, ref_model, dist)
        import inspect

        from torch.nn.parallel import DistributedDataParallel

        # No trained buffers (rotary tables are recomputed, not learnt): nothing to sync per forward.
        no_buffer_sync = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                          else "broadcast_buffers")
        self._call = DistributedDataParallel(
            _CallOnModel(model),
            device_ids=[device.index] if device.type == "cuda" else None,
            process_group=dist.device_group,
            **{no_buffer_sync: False},
            init_sync=False,  # the ranks start from rank 0's weights already (DataParallel.broadcast_parameters)
            gradient_as_bucket_view=True,  # gradients live in DDP's buckets: no second copy
        )
        self._call.register_comm_hook(dist.device_group, _sum_allreduce_hook)

    def sync_gradients(self, flag: bool) -> None:
        # What DistributedDataParallel.no_sync() toggles; read at the next forward.
        self._call.require_backward_grad_sync = flag


class FSDPEngine(PolicyEngine):
    """FSDP2: the policy (and the reference) sharded over the ranks, one unit per decoder layer."""

    strategy = "fsdp"

    def __init__(self, model, ref_model, dist, device: torch.device, settings, precision=None):
        super().__init__(model, ref_model, dist)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy

        if settings.cpu_offload and device.type != "cuda":
            raise ConfigError("distributed.cpu_offload: moves FSDP shards from GPU to CPU memory; this run trains on the CPU already")
        self.dist_device = device
        mesh = init_device_mesh(device.type, (dist.world_size,))
        common = {
            "mesh": mesh,
            # bf16-mixed: gathered (computed) in bf16, reduced in float32; else the weights' own dtype
            "mp_policy": (precision.fsdp_mixed_precision() if precision is not None else None) or MixedPrecisionPolicy(),
            "offload_policy": CPUOffloadPolicy(pin_memory=True) if settings.cpu_offload else OffloadPolicy(),
        }
        self.layer_reshard = settings.reshard_after_forward
        self.rollout_weights = settings.rollout_weights
        self.units = shard_model(model, reshard_after_forward=self.layer_reshard, **common)
        for unit in self.units:
            unit.set_gradient_divide_factor(1.0)  # a sum: each rank's loss is its share of the batch loss
            unit.set_force_sum_reduction_for_comms(True)  # plain SUM collectives (gloo has no PREMUL_SUM)
        self._frozen_kwargs = common
        if ref_model is not None:
            self.shard_frozen(ref_model)

    def shard_frozen(self, model) -> None:
        # frozen: every unit gathered for its forward and freed after (no backward to keep it for)
        shard_model(model, reshard_after_forward=True, root_reshard_after_forward=True, **self._frozen_kwargs)

    def _any_rank_decoding(self, mine: bool) -> bool:
        flag = torch.tensor([1.0 if mine else 0.0], device=self.dist_device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX, group=self.dist.device_group)
        return bool(flag.item())

    @contextmanager
    def generation(self, engine):
        if not getattr(engine, "runs_policy_forward", True):  # vLLM: it holds its own copy, synced per tensor
            yield
            return
        if self.rollout_weights == "per_layer":
            engine.step_sync = self._any_rank_decoding
            try:
                yield
            finally:
                engine.step_sync = None
            return
        for unit in self.units:
            unit.set_reshard_after_forward(False, recurse=False)
        for unit in self.units:  # the same units in the same order on every rank: the all-gathers pair up
            unit.unshard()
        try:
            yield
        finally:
            for unit in self.units:
                unit.reshard()
            for unit in self.units[:-1]:
                unit.set_reshard_after_forward(self.layer_reshard, recurse=False)
            self.units[-1].set_reshard_after_forward(False, recurse=False)  # the root's default

    def clip_grad_norm(self, params: list[torch.Tensor], max_norm: float) -> float:
        grads = [p.grad for p in params if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads, 2.0)
        if _is_dtensor(norm):
            norm = norm.full_tensor()  # the shards' partial norms combined: the global norm
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
        return float(norm)


@contextmanager
def head_gathered(model, head):
    """The output ``head``'s weights whole for calls made outside ``model``'s forward (the chunked
    log-probs project the final hidden states after the forward, grpo/trainer.py). Under FSDP2 a
    frozen root (the reference, a teacher) reshards right after its forward, so its own shards
    (embeddings, final norm, head) are gathered again here and freed on exit; the policy's root
    keeps them gathered until its backward, and unsharded models need nothing."""
    from torch.distributed.fsdp import FSDPModule

    if not (isinstance(model, FSDPModule) and _is_dtensor(getattr(head, "weight", None))):
        yield
        return
    model.unshard()
    try:
        yield
    finally:
        model.reshard()


def decoder_layers(model) -> list[torch.nn.Module]:
    """The model's repeated blocks (transformers lists their class in ``_no_split_modules``)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ConfigError(
            f"distributed.strategy: fsdp shards the model per decoder layer, but {type(base).__name__} names no layer "
            "class (_no_split_modules); use strategy: ddp"
        )
    return layers


def shard_model(model, *, reshard_after_forward: bool, root_reshard_after_forward: bool | None = None, **fsdp_kwargs) -> list:
    """``fully_shard`` each decoder layer, then the model (embeddings, final norm, head); the units
    in forward order, the root last. The root keeps its weights gathered after a forward by
    default (the backward needs them first); a frozen model's root reshards too."""
    from torch.distributed.fsdp import fully_shard

    layers = decoder_layers(model)
    for layer in layers:
        fully_shard(layer, reshard_after_forward=reshard_after_forward, **fsdp_kwargs)
    fully_shard(model, reshard_after_forward=root_reshard_after_forward, **fsdp_kwargs)
    return [*layers, model]


def wrap_policy(model, ref_model, dist, settings, device: torch.device, precision=None) -> PolicyEngine:
    """The engine for this run: one process, ``ddp`` or ``fsdp`` (``settings.strategy`` resolved);
    ``precision`` (a :class:`grpo.precision.Precision`) sets FSDP's mixed-precision policy."""
    if dist is None or not dist.active:
        return PolicyEngine(model, ref_model, dist)
    strategy = settings.resolved_strategy()
    if strategy == "fsdp":
        return FSDPEngine(model, ref_model, dist, device, settings, precision)
    return DDPEngine(model, ref_model, dist, device)


# --- checkpoints and the final model ---------------------------------------------------------


def _state(model, optimizer) -> dict:
    """``{"model": trainable weights, "optimizer": AdamW state}`` keyed by parameter name, in this
    rank's layout (DTensor shards under FSDP)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    msd, osd = get_state_dict(model, optimizer, options=StateDictOptions(ignore_frozen_params=True))
    return {"model": msd, "optimizer": osd}


@contextmanager
def _quiet_single_process():
    """torch.distributed.checkpoint warns that it runs in one process when there is no process group."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        with nullcontext():
            yield
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def lora_scalings(model) -> dict[str, tuple[str, float]]:
    """``{module name: (adapter, scaling)}`` of each active LoRA linear layer of a peft model."""
    from peft.tuners.lora import Linear as LoraLinear
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and not getattr(module, "merged", False):
            if not isinstance(module, LoraLinear) or module.fan_in_fan_out or any(module.use_dora.values()):
                raise ValueError(f"lora.target_modules: {name} is a {type(module).__name__} adapter; only plain LoRA on linear layers is merged here")
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    out[name] = (adapter, float(module.scaling[adapter]))
    return out


def merge_lora_weight(w: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float) -> torch.Tensor:
    """One adapted linear layer merged: W + s·(B A), computed in float32, returned in W's dtype."""
    return (w.float() + scaling * (b.float() @ a.float())).to(w.dtype)


def merge_lora(state: dict[str, torch.Tensor], scalings: dict[str, tuple[str, float]]) -> dict[str, torch.Tensor]:
    """A peft LoRA model's full state dict as the plain model's: for each adapted linear layer m,

        W_m ← W_m + s_m · (B_m A_m)        A: [r, in], B: [out, r], s = alpha / r

    the adapter tensors dropped and peft's names (``base_model.model.``, ``.base_layer.``)
    turned back into the base model's."""
    state = dict(state)
    for module, (adapter, scaling) in scalings.items():
        a = state.pop(f"{module}.lora_A.{adapter}.weight")
        b = state.pop(f"{module}.lora_B.{adapter}.weight")
        key = f"{module}.base_layer.weight"
        state[key] = merge_lora_weight(state[key], a, b, scaling)
    left = [k for k in state if ".lora_" in k]
    if left:
        raise ValueError(f"merge_lora: adapter weights of no active linear adapter remain ({left[:2]})")
    return {k.removeprefix("base_model.model.").replace(".base_layer.", "."): v for k, v in state.items()}
