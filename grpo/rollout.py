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


    def select(self, rows: list[int]) -> "Rollout":
        """The rollout restricted to ``rows`` (in that order)."""
        idx = torch.tensor(rows, dtype=torch.long)
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
    def __init__(self, model, tokenizer):
        self.model = model
        self.tokenizer = tokenizer

    def generate(self, prompts: list[str], params: SamplingParams) -> Rollout:  # pragma: no cover - interface
        raise NotImplementedError


@register_rollout_engine("hf")
class HFGenerateEngine(RolloutEngine):
    """transformers ``generate`` with sampling, all B×G rows in one batch (the global torch RNG)."""

    def generate(self, prompts: list[str], params: SamplingParams) -> Rollout:
        tok = self.tokenizer
        enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
        G = params.group_size
        prompt_ids = enc["input_ids"].repeat_interleave(G, dim=0)
        prompt_mask = enc["attention_mask"].repeat_interleave(G, dim=0)
        eos = eos_token_ids(tok, self.model)
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            out = self.model.generate(
                input_ids=prompt_ids,
                attention_mask=prompt_mask,
                do_sample=True,
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=params.top_k or None,
                max_new_tokens=params.max_new_tokens,
                eos_token_id=eos,
                pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else eos[0],
            )
        self.model.train(was_training)
        completion_ids = out[:, prompt_ids.shape[1] :]
        mask, truncated = completion_mask_from_ids(completion_ids, eos)
        pad = tok.pad_token_id if tok.pad_token_id is not None else eos[0]
        completion_ids = torch.where(mask.bool(), completion_ids, torch.full_like(completion_ids, pad))
        texts = decode_completions(tok, completion_ids, mask, truncated)
        return Rollout(prompt_ids, prompt_mask, completion_ids, mask, truncated, texts)
