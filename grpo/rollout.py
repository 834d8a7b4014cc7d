"""Rollout engines: turn B prompts into B×G sampled completions.

An engine is registered by name (``rollout_engine`` in the config) and returns a
:class:`Rollout`: left-padded prompt ids, right-padded completion ids and the masks the loss
needs. Rows are grouped: the G completions of prompt ``b`` are rows ``b·G … b·G+G−1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class Rollout:
    prompt_ids: torch.Tensor  # [N, P] left-padded
    prompt_mask: torch.Tensor  # [N, P] 1 on real prompt tokens
    completion_ids: torch.Tensor  # [N, L] right-padded
    completion_mask: torch.Tensor  # [N, L] 1 up to and including the first end-of-sequence token
    truncated: torch.Tensor  # [N] bool: no end-of-sequence token within max_new_tokens
    texts: list[str]  # decoded completions, without the final eos

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
        )

    def select(self, rows: list[int]) -> "Rollout":
        """The rollout restricted to ``rows`` (in that order)."""
        idx = torch.tensor(rows, dtype=torch.long, device=self.prompt_ids.device)
        return Rollout(
            self.prompt_ids[idx], self.prompt_mask[idx], self.completion_ids[idx], self.completion_mask[idx],
            self.truncated[idx], [self.texts[i] for i in rows],
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
    )


@dataclass
class SamplingParams:
    group_size: int
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0


ROLLOUT_ENGINES: dict[str, Callable[..., "RolloutEngine"]] = {}


def register_rollout_engine(name: str):
    def wrap(cls):
        ROLLOUT_ENGINES[name] = cls
        return cls

    return wrap


def get_rollout_engine(name: str, model, tokenizer) -> "RolloutEngine":
    try:
        cls = ROLLOUT_ENGINES[name]
    except KeyError:
        raise ValueError(f"unknown rollout_engine {name!r}; registered: {', '.join(ROLLOUT_ENGINES)}") from None
    return cls(model, tokenizer)


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
    # Set (by grpo/parallel.py) while the policy's FSDP shards are gathered per layer for each
    # forward: every rank must then run the same number of forwards. Called once per decoding
    # step with whether this rank still decodes; returns whether any rank does.
    step_sync: Callable[[bool], bool] | None = None

    def __init__(self, model, tokenizer):
        self.model = model
        self.tokenizer = tokenizer

    def generate(self, prompts: list[str], params: SamplingParams, seeds: list[int] | None = None) -> Rollout:  # pragma: no cover - interface
        """B prompts → B×G completions; ``seeds`` (one per prompt) makes the sampling reproducible."""
        raise NotImplementedError


@register_rollout_engine("hf")
class HFGenerateEngine(RolloutEngine):
    """transformers ``generate`` with sampling, all B×G rows in one batch, drawing from the global
    torch RNG (seeded from ``seeds`` when they are given: reproducible, but a completion depends
    on the whole batch)."""

    def generate(self, prompts: list[str], params: SamplingParams, seeds: list[int] | None = None) -> Rollout:
        tok = self.tokenizer
        if seeds is not None:
            torch.manual_seed(hash(tuple(int(s) for s in seeds)) % (2**63))
        enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
        G = params.group_size
        prompt_ids = enc["input_ids"].repeat_interleave(G, dim=0)
        prompt_mask = enc["attention_mask"].repeat_interleave(G, dim=0)
        eos = eos_token_ids(tok, self.model)
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            out = self.model.generate(
                input_ids=prompt_ids.to(device),
                attention_mask=prompt_mask.to(device),
                do_sample=True,
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=params.top_k or None,
                max_new_tokens=params.max_new_tokens,
                eos_token_id=eos,
                pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else eos[0],
                synced_gpus=self.step_sync is not None,  # decode until every rank is done (per-layer FSDP gathers)
            )
        self.model.train(was_training)
        completion_ids = out[:, prompt_ids.shape[1] :].cpu()
        mask, truncated = completion_mask_from_ids(completion_ids, eos)
        pad = tok.pad_token_id if tok.pad_token_id is not None else eos[0]
        completion_ids = torch.where(mask.bool(), completion_ids, torch.full_like(completion_ids, pad))
        texts = decode_completions(tok, completion_ids, mask, truncated)
        return Rollout(prompt_ids, prompt_mask, completion_ids, mask, truncated, texts)


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

    ``temperature == 0`` decodes greedily. After each call ``last_logprobs`` [N, L] holds
    log p(token) of every sampled token under the sampling distribution (0 past the end).
    """

    last_logprobs: torch.Tensor | None = None
    pack_weights: bool = True  # CPU: decode through prepacked oneDNN weights (grpo/packed.py)

    def _packed(self):
        """The model's linear layers with freshly packed weights (they change between calls)."""
        from contextlib import nullcontext

        from grpo.packed import PackedLinears

        if not (self.pack_weights and PackedLinears.supported(self.model)):
            return nullcontext()
        return PackedLinears(self.model)

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
        with torch.no_grad(), self._packed():
            out = model(
                input_ids=enc["input_ids"].to(device),
                attention_mask=prompt_mask,
                position_ids=(prompt_mask.cumsum(1) - 1).clamp(min=0),
                use_cache=True,
                logits_to_keep=1,
            )
            cache = out.past_key_values
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
                    past_key_values=cache,
                    use_cache=True,
                )
                cache = out.past_key_values
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
            completion_ids, completion_mask, truncated, texts,
        )


def _vllm_engine(model, tokenizer) -> RolloutEngine:
    """``vllm``: imported on first use (grpo/rollout_vllm.py), so importing grpo never imports vLLM."""
    from grpo.rollout_vllm import VLLMEngine

    return VLLMEngine(model, tokenizer)


ROLLOUT_ENGINES.setdefault("vllm", _vllm_engine)
