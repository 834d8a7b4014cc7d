"""Numeric precision of a training run: one name, the dtypes it stands for, and why it was chosen.

``precision`` (recipe key, for ``grpo`` and ``sft``) is one of

===========  ======================  ===================  =====================  ================
name         weights + AdamW state   matmuls (compute)    rollouts, reference    gradient reduce
===========  ======================  ===================  =====================  ================
fp32         float32                 float32              float32                float32
bf16-mixed   float32 (master)        bfloat16 (autocast)  bfloat16 weights       float32
bf16         bfloat16                bfloat16             bfloat16               bfloat16
===========  ======================  ===================  =====================  ================

plus ``auto``, which :func:`resolve_precision` turns into one of them for the device at hand.
Log-softmax, the loss and every reduction over tokens run in float32 in all three.

Why not pure bf16 by default: AdamW moves each weight by about the learning rate per step, and
bfloat16 keeps 8 significant bits, so a weight w only changes when the step exceeds half its
spacing, |w|·2⁻⁹. At lr 1e-6 that fails for nearly every weight of a real model (|w| ~ 0.02):
the update rounds away and the run does not learn (:func:`bf16_update_loss` measures the share;
tests/test_precision.py trains 10 steps both ways). ``bf16-mixed`` keeps float32 master weights
and optimiser state and computes in bf16, the usual GPU recipe, and is what ``auto`` picks where
bf16 is fast.

``auto``: a CUDA device that supports bf16 → ``bf16-mixed``; a CPU with bf16 instructions
(AMX-BF16 or AVX512-BF16) → a quick probe (:func:`probe_cpu_bf16`, about a second) times bf16
against float32 on a decode-sized and a training-sized matrix product, and ``bf16-mixed`` is
chosen only where bf16 is measurably faster on both; anything else → ``fp32``. The decision and
the measured numbers are printed at start and written to ``precision.json`` in the run directory.

For FSDP2 (``torch.distributed.fsdp.fully_shard``, grpo/parallel.py) :meth:`Precision.fsdp_mixed_precision`
gives the matching ``MixedPrecisionPolicy``: there the sharded float32 parameters are cast to
bf16 on unshard and gradients reduced in float32. Under ``accelerate launch`` an accelerate
config's ``mixed_precision: bf16`` is a request for ``bf16-mixed`` (:func:`launcher_precision`);
a recipe that asks for another precision under it is an error, not a silent choice.
"""

from __future__ import annotations

import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

__all__ = [
    "Precision",
    "PRECISIONS",
    "PRECISION_NAMES",
    "requested_precision",
    "launcher_precision",
    "resolve_precision",
    "probe_cpu_bf16",
    "cpu_bf16_flags",
    "bf16_update_loss",
    "bf16_update_warning",
    "recorded_precision",
]

# name -> (parameter dtype, compute dtype, gradient-reduction dtype)
PRECISIONS: dict[str, tuple[torch.dtype, torch.dtype, torch.dtype]] = {
    "fp32": (torch.float32, torch.float32, torch.float32),
    "bf16-mixed": (torch.float32, torch.bfloat16, torch.float32),
    "bf16": (torch.bfloat16, torch.bfloat16, torch.bfloat16),
    "fp16": (torch.float16, torch.float16, torch.float16),  # only through `dtype: float16` (pure half, no loss scaling)
}
#: What a recipe's ``precision`` may say.
PRECISION_NAMES = ("auto", "fp32", "bf16-mixed", "bf16")
# `dtype` values that mean a precision (the rest, `auto`, means "the checkpoint's dtype").
_DTYPE_MEANS = {"float32": "fp32", "fp32": "fp32", "float": "fp32", "bfloat16": "bf16", "bf16": "bf16",
                "float16": "fp16", "fp16": "fp16", "half": "fp16"}
# bf16 must beat float32 by this factor on every probe shape for `auto` to choose it: a margin
# over timing noise, so a machine where bf16 is merely as fast keeps the exact float32 numerics.
_PROBE_MARGIN = 1.15


@dataclass(frozen=True)
class Precision:
    """A resolved precision: its dtypes, and a sentence saying why it was chosen."""

    name: str
    reason: str
    probe: dict = field(default_factory=dict)  # measured numbers behind an `auto` decision

    @property
    def param_dtype(self) -> torch.dtype:
        """Dtype of the trained weights and the optimiser state (the master copy)."""
        return PRECISIONS[self.name][0]

    @property
    def compute_dtype(self) -> torch.dtype:
        """Dtype of the matrix products (forward and backward), of rollouts and of the reference."""
        return PRECISIONS[self.name][1]

    @property
    def reduce_dtype(self) -> torch.dtype:
        """Dtype gradients are summed in across ranks."""
        return PRECISIONS[self.name][2]

    @property
    def mixed(self) -> bool:
        return self.param_dtype != self.compute_dtype

    def autocast(self, device: torch.device | str):
        """The context the trainer's forwards run in: bf16 autocast for ``bf16-mixed``, else nothing."""
        if not self.mixed:
            return nullcontext()
        return torch.autocast(torch.device(device).type, dtype=self.compute_dtype)

    def fsdp_mixed_precision(self):
        """FSDP2's ``MixedPrecisionPolicy`` for this precision (None when nothing is cast)."""
        if not self.mixed:
            return None
        from torch.distributed.fsdp import MixedPrecisionPolicy

        return MixedPrecisionPolicy(param_dtype=self.compute_dtype, reduce_dtype=self.reduce_dtype)

    def describe(self) -> str:
        """The line printed at start: ``precision: bf16-mixed (…) — reason``."""
        dtypes = f"weights {_short(self.param_dtype)}, compute {_short(self.compute_dtype)}"
        return f"precision: {self.name} ({dtypes}) — {self.reason}"

    def to_json(self) -> dict:
        return {
            "precision": self.name,
            "param_dtype": _short(self.param_dtype),
            "compute_dtype": _short(self.compute_dtype),
            "reduce_dtype": _short(self.reduce_dtype),
            "reason": self.reason,
            "probe": self.probe,
        }


def _short(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def launcher_precision(environ=None) -> str | None:
    """The precision an accelerate config's ``mixed_precision`` asks for (``accelerate launch`` puts
    it in ``ACCELERATE_MIXED_PRECISION``): ``bf16`` → ``bf16-mixed``; ``no`` or unset → None."""
    mode = (os.environ if environ is None else environ).get("ACCELERATE_MIXED_PRECISION", "no").strip().lower()
    if mode in ("", "no"):
        return None
    if mode == "bf16":
        return "bf16-mixed"
    raise ValueError(f"accelerate config: mixed_precision {mode!r} is not supported (fp16 needs loss scaling we do not do); use bf16 or no")


def requested_precision(precision: str | None, dtype: str | None, environ=None) -> tuple[str, str]:
    """The precision a recipe asks for, and where that comes from.

    Under an accelerate config with ``mixed_precision: bf16`` (:func:`launcher_precision`) that is
    ``bf16-mixed``, and a recipe ``precision`` other than it or ``auto`` is refused. Else
    ``precision`` wins when set. Otherwise ``dtype`` stands for it where it means the same:
    ``float32`` → ``fp32``, ``bfloat16`` → ``bf16`` (pure), ``float16`` → ``fp16``; ``dtype: auto``
    (the checkpoint's dtype) is returned as ``checkpoint`` and resolved once the weights are loaded.
    """
    launcher = launcher_precision(environ)
    if launcher is not None:
        if precision not in (None, "auto", launcher):
            raise ValueError(f"precision: the recipe says {precision} but the accelerate config says mixed_precision bf16 "
                             f"({launcher}); make them agree")
        return launcher, "accelerate config: mixed_precision bf16"
    if precision is not None:
        if precision not in PRECISION_NAMES:
            raise ValueError(f"precision: expected one of {', '.join(map(repr, PRECISION_NAMES))}, got {precision!r}")
        return precision, f"precision: {precision} in the recipe"
    key = str(dtype or "float32").strip().lower().removeprefix("torch.")
    if key == "auto":
        return "checkpoint", "dtype: auto in the recipe (the checkpoint's own dtype, trained as is)"
    if key not in _DTYPE_MEANS:
        raise ValueError(f"dtype: expected one of float32, bfloat16, float16, auto, got {dtype!r}")
    return _DTYPE_MEANS[key], f"dtype: {dtype} in the recipe (no precision key)"


def precision_of_dtype(dtype: torch.dtype, why: str) -> Precision:
    """The pure precision of weights loaded as ``dtype`` (for ``dtype: auto``)."""
    for name, (param, compute, _) in PRECISIONS.items():
        if param == compute == dtype:
            return Precision(name, f"{why}: {_short(dtype)}")
    raise ValueError(f"dtype: the checkpoint's dtype {_short(dtype)} is not one the trainer supports (float32, bfloat16, float16)")


def resolve_precision(requested: str, device: torch.device | str, *, why: str = "", probe=None) -> Precision:
    """Turn a requested precision into a :class:`Precision` for ``device``.

    ``auto`` decides as the module docstring says; ``probe`` (default :func:`probe_cpu_bf16`) is
    called only on a CPU with bf16 instructions and returns ``{"decode": r, "train": r, ...}``,
    the measured float32-time / bf16-time ratios. Explicit names are returned as asked, with a
    note when the device has no bf16 hardware (bf16 is then emulated, slowly).
    """
    device = torch.device(device)
    if requested != "auto":
        if requested not in PRECISIONS:
            raise ValueError(f"precision: expected one of {', '.join(map(repr, PRECISION_NAMES))}, got {requested!r}")
        reason = why or f"precision: {requested}"
        if requested in ("bf16", "bf16-mixed") and not _has_bf16_hardware(device):
            reason += " (this device has no bf16 hardware: bf16 is emulated and slower than fp32)"
        return Precision(requested, reason)
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision("bf16-mixed", f"auto: {torch.cuda.get_device_name(device)} supports bf16")
        return Precision("fp32", f"auto: {torch.cuda.get_device_name(device)} has no bf16 support")
    if device.type != "cpu":
        return Precision("fp32", f"auto: bf16 autocast on {device.type} is not relied on")
    flags = cpu_bf16_flags()
    if not flags:
        return Precision("fp32", "auto: this CPU has no bf16 instructions (neither amx_bf16 nor avx512_bf16)")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Ranks probing at the same time on shared cores would time each other and could decide
        # differently; every rank must train in the same precision.
        return Precision("fp32", f"auto: several processes share this CPU ({', '.join(flags)}); not probed, fp32 on every rank")
    measured = (probe or probe_cpu_bf16)()
    ratios = {k: measured[k] for k in ("decode", "train")}
    numbers = ", ".join(f"{k} {v:.2f}×" for k, v in ratios.items())
    if min(ratios.values()) >= _PROBE_MARGIN:
        return Precision("bf16-mixed", f"auto: CPU with {', '.join(flags)}; bf16 measured faster than fp32 ({numbers})", measured)
    return Precision(
        "fp32",
        f"auto: CPU with {', '.join(flags)}, but bf16 was not measured faster than fp32 by {_PROBE_MARGIN}× on both "
        f"decode and training shapes ({numbers})",
        measured,
    )


def recorded_precision(directory: str | Path) -> Precision | None:
    """The precision a run in ``directory`` started with (its ``precision.json``), or None.

    A resumed ``auto`` run keeps it: probing again could choose differently, and a run must not
    change precision half-way."""
    import json

    path = Path(directory) / "precision.json"
    try:
        info = json.loads(path.read_text())
        name = info["precision"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if name not in PRECISIONS:
        return None
    return Precision(name, f"as this run started ({path.name}): {info.get('reason', '')}", info.get("probe") or {})


def _has_bf16_hardware(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(cpu_bf16_flags())
    return True  # other accelerators: not ours to judge


def cpu_bf16_flags() -> list[str]:
    """The bf16 instruction sets this CPU reports (``amx_bf16``, ``avx512_bf16``), from /proc/cpuinfo."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return [f for f in ("amx_bf16", "avx512_bf16") if f in flags]


def probe_cpu_bf16(seconds: float = 0.25) -> dict:
    """Time bf16 against float32 on this CPU with torch's current threads; ratios > 1: bf16 faster.

    * ``decode``: 16 rows × a 1024 → 4096 linear through prepacked oneDNN weights (how rollouts and
      the reference run here, grpo/packed.py), bf16 weights vs float32 weights;
    * ``train``: the forward and backward of a 512-row MLP block (1024 → 4096 → 1024) under bf16
      autocast vs float32 (how the policy trains under ``bf16-mixed``).

    Each pair is timed alternately, best of several rounds of ``seconds`` each.
    """
    from grpo.packed import PackedLinears

    F = torch.nn.functional
    gen = torch.Generator().manual_seed(0)
    hidden, inner = 1024, 4096
    x = torch.randn(16, hidden, generator=gen)
    w = torch.randn(inner, hidden, generator=gen) * 0.02
    out: dict = {"threads": torch.get_num_threads()}
    if PackedLinears.ops_available():
        pack = torch.ops.mkldnn._reorder_linear_weight
        p32, p16 = pack(w, None), pack(w.bfloat16(), None)
        dec32 = lambda: torch.ops.mkldnn._linear_pointwise(x, p32, None, "none", [], "")  # noqa: E731
        dec16 = lambda: torch.ops.mkldnn._linear_pointwise(x.bfloat16(), p16, None, "none", [], "")  # noqa: E731
    else:
        wb = w.bfloat16()
        dec32 = lambda: F.linear(x, w)  # noqa: E731
        dec16 = lambda: F.linear(x.bfloat16(), wb)  # noqa: E731
    out["decode"] = _ratio(dec32, dec16, seconds)

    xt = torch.randn(512, hidden, generator=gen)
    w1 = (torch.randn(inner, hidden, generator=gen) * 0.02).requires_grad_()
    w2 = (torch.randn(hidden, inner, generator=gen) * 0.02).requires_grad_()

    def train(bf16: bool):
        def run():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                y = F.linear(F.silu(F.linear(xt, w1)), w2)
            y.float().square().mean().backward()
            w1.grad = w2.grad = None

        return run

    out["train"] = _ratio(train(False), train(True), seconds)
    return out


def _ratio(fp32_fn, bf16_fn, seconds: float, rounds: int = 3) -> float:
    """fp32 time / bf16 time, each the best per-call time over ``rounds`` alternating rounds."""
    best = {0: float("inf"), 1: float("inf")}
    for fn in (fp32_fn, bf16_fn):
        fn()  # warm-up: allocations, oneDNN primitive creation
    for _ in range(rounds):
        for i, fn in enumerate((fp32_fn, bf16_fn)):
            calls, t0 = 0, time.perf_counter()
            while True:
                fn()
                calls += 1
                elapsed = time.perf_counter() - t0
                if elapsed >= seconds / rounds:
                    break
            best[i] = min(best[i], elapsed / calls)
    return best[0] / best[1]


def bf16_update_loss(params, learning_rate: float) -> float:
    """Share of the weights an AdamW step of size ``learning_rate`` cannot move in bfloat16.

    AdamW's step is about ``lr`` per weight (its update m/√v is O(1)). A bfloat16 value w keeps 8
    significant bits, so w + δ rounds back to w when |δ| is under half the spacing at w, which
    lies between |w|·2⁻⁹ and |w|·2⁻⁸. The share returned counts the weights with ``|w|·2⁻⁹ > lr``
    (certainly stuck; zero weights can always move), so it is a lower bound.
    """
    total, lost = 0, 0
    with torch.no_grad():
        for p in params:
            magnitude = p.detach().abs().float()
            total += magnitude.numel()
            lost += int((magnitude * 2.0**-9 > learning_rate).sum())
    return lost / total if total else 0.0


def bf16_update_warning(params, learning_rate: float, threshold: float = 0.5) -> str | None:
    """The warning pure ``bf16`` training gets when most AdamW updates would round away, else None."""
    lost = bf16_update_loss(params, learning_rate)
    if lost <= threshold:
        return None
    return (
        f"precision: bf16 (pure) at learning_rate {learning_rate:g}: for {lost:.0%} of this model's weights an AdamW step "
        "(about lr) is below half a bf16 spacing (|w|·2^-9), so those updates round away and the weights do not move "
        "(measured on SmolLM2-135M, benchmarks/bench_precision.py: 0.4% of the weights changed after 10 GRPO steps "
        "at lr 1e-6, 99.3% with bf16-mixed); use precision: bf16-mixed "
        "(float32 master weights and optimiser state, bf16 compute)"
    )
