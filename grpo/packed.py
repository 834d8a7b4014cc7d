"""Prepacked oneDNN weights for the no-grad forwards of a CPU model (rollouts, the reference).

On a CPU, decoding multiplies a handful of rows by every weight matrix at each step, and plain
``F.linear`` spends much of that time streaming the weights in their stored layout. oneDNN can
reorder a weight once into its blocked layout (``mkldnn::_reorder_linear_weight``) and then
multiply against it directly (``mkldnn::_linear_pointwise``), 1.5–3× faster for 16–64 rows on
this machine. The results equal ``F.linear``'s to float32 rounding (~1e-6).

:class:`PackedLinears` packs every ``nn.Linear`` of a model and, inside ``with packed:``, routes
their forwards through the packed weights. Packing copies the weights, so a model that trains
must be repacked after each optimiser step (:meth:`PackedLinears.refresh`; about 0.1 s for a
135M model); a frozen reference model is packed once. Only forwards without gradients may run
inside the block (the packed op has no backward). Where oneDNN is unavailable (not a CPU, a
torch build without it) :meth:`PackedLinears.supported` is False and nothing changes.

``dtype`` chooses the packed weights' dtype: float32, or bfloat16 where oneDNN has bf16 kernels
for this CPU (AVX512-BF16 / AMX). bf16-packed weights take float32 activations (cast on the way
in, the output cast back), so only the matrix products run in bf16, as under autocast; this is
how ``precision: bf16-mixed`` runs rollouts and the frozen reference on a CPU, and ``bf16``
(pure) models pack in their own dtype. Whether bf16 is *faster* than float32 here depends on
the CPU: ``grpo/precision.py`` measures it before ``auto`` chooses bf16.
"""

from __future__ import annotations

import torch

__all__ = ["PackedLinears"]


def _packed_forward(weight: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    if x.dtype == weight.dtype:
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return torch.ops.mkldnn._linear_pointwise(x.to(weight.dtype), weight, bias, "none", [], "").to(x.dtype)


class PackedLinears:
    """A model's ``nn.Linear`` weights, packed for oneDNN; ``with`` routes forwards through them."""

    def __init__(self, model: torch.nn.Module, release: bool = False, dtype: torch.dtype | None = None):
        """``release=True`` (a frozen model only ever run inside ``with``): after packing, the
        unpacked copies of weights no other module shares are freed, so packing costs no memory
        (less than none with bf16 packs of a float32 model). ``dtype``: of the packed weights
        (default: the model's)."""
        self.model = model
        self.dtype = dtype if dtype is not None else _param_dtype(model)
        self.enabled = self.supported(model, self.dtype)
        self._packs: dict[torch.nn.Linear, tuple[torch.Tensor, torch.Tensor | None]] = {}
        if self.enabled:
            self.refresh()
            if release:
                self._release()

    def _release(self) -> None:
        shared = {p.data_ptr() for m in self.model.modules() if type(m) is not torch.nn.Linear for p in m.parameters(recurse=False)}
        for module in self._packs:
            if module.weight.data_ptr() not in shared:  # e.g. an lm_head tied to the embeddings stays
                module.weight.data = torch.empty(0, dtype=module.weight.dtype)

    @staticmethod
    def ops_available() -> bool:
        """A torch build with the oneDNN linear ops."""
        return (
            torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise")
        )

    @staticmethod
    def supported(model: torch.nn.Module, dtype: torch.dtype | None = None) -> bool:
        """Whole (not FSDP-sharded) float32 or bfloat16 weights on the CPU, packed in float32 or
        (with oneDNN bf16 kernels for this CPU) bfloat16, and a torch build with the oneDNN linear ops."""
        try:
            param = next(model.parameters())
        except StopIteration:
            return False
        from torch.distributed.tensor import DTensor

        dtype = param.dtype if dtype is None else dtype
        return (
            not isinstance(param, DTensor)  # FSDP shards (outside a gathered rollout): not whole weights
            and param.device.type == "cpu"
            and param.dtype in (torch.float32, torch.bfloat16)
            and (dtype == torch.float32 or (dtype == torch.bfloat16 and _bf16_kernels()))
            and PackedLinears.ops_available()
        )

    def refresh(self) -> None:
        """Pack the current weights (after they change)."""
        if not self.enabled:
            return
        with torch.no_grad():
            self._packs = {
                m: (
                    torch.ops.mkldnn._reorder_linear_weight(m.weight.detach().to(self.dtype), None),
                    None if m.bias is None else m.bias.detach().to(self.dtype),
                )
                for m in self.model.modules()
                if type(m) is torch.nn.Linear
            }

    def __enter__(self) -> "PackedLinears":
        if torch.is_grad_enabled() and self.enabled:
            raise RuntimeError("PackedLinears: packed forwards have no gradient; use them under torch.no_grad()")
        for module, (weight, bias) in self._packs.items():
            module.forward = lambda x, w=weight, b=bias: _packed_forward(w, b, x)
        return self

    def __exit__(self, *exc) -> None:
        for module in self._packs:
            module.__dict__.pop("forward", None)


def _param_dtype(model: torch.nn.Module) -> torch.dtype:
    param = next(model.parameters(), None)
    return torch.float32 if param is None else param.dtype


def _bf16_kernels() -> bool:
    """oneDNN has bf16 kernels for this CPU (it needs AVX512-BF16 or AMX; without them it refuses)."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check()) if check is not None else False
