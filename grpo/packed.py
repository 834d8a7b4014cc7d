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
inside the block (the packed op has no backward). Where oneDNN is unavailable (not a CPU, not
float32, a torch build without it) :meth:`PackedLinears.supported` is False and nothing changes.
"""

from __future__ import annotations

import torch

__all__ = ["PackedLinears"]


def _packed_forward(weight: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class PackedLinears:
    """A model's ``nn.Linear`` weights, packed for oneDNN; ``with`` routes forwards through them."""

    def __init__(self, model: torch.nn.Module, release: bool = False):
        """``release=True`` (a frozen model only ever run inside ``with``): after packing, the
        unpacked copies of weights no other module shares are freed, so packing costs no memory."""
        self.model = model
        self.enabled = self.supported(model)
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
    def supported(model: torch.nn.Module) -> bool:
        """Whole (not FSDP-sharded) float32 weights on the CPU, and a torch build with the oneDNN linear ops."""
        try:
            param = next(model.parameters())
        except StopIteration:
            return False
        from torch.distributed.tensor import DTensor

        return (
            not isinstance(param, DTensor)  # FSDP shards (outside a gathered rollout): not whole weights
            and param.device.type == "cpu"
            and param.dtype == torch.float32
            and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise")
        )

    def refresh(self) -> None:
        """Pack the current weights (after they change)."""
        if not self.enabled:
            return
        with torch.no_grad():
            self._packs = {
                m: (torch.ops.mkldnn._reorder_linear_weight(m.weight.detach(), None), None if m.bias is None else m.bias.detach())
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
