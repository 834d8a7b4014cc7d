"""GRPOConfig: every knob of the GRPO trainer, documented where it is defined.

Names follow TRL's ``GRPOConfig`` where they mean the same (``beta``, ``num_iterations`` is μ,
``temperature``); TRL's other names are read through :mod:`grpo.trl_compat` (``num_generations``
is our ``group_size``, ``loss_type`` our ``loss_aggregation``) or refused naming our key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class LoraSettings:
    """LoRA via peft. With LoRA the KL reference is the adapter-disabled base: no second model copy."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])

    def __post_init__(self):
        if self.r < 1:
            raise ValueError(f"lora.r: must be ≥ 1, got {self.r}")


@dataclass
class GRPOConfig:
    # --- how much work per step -----------------------------------------------------------
    steps: int = 100  # GRPO steps; each samples a fresh batch of rollouts
    prompts_per_step: int = 4  # B: distinct prompts per step
    group_size: int = 8  # G: completions per prompt (TRL: num_generations); the baseline is their mean

    # --- sampling ---------------------------------------------------------------------------
    max_new_tokens: int = 128  # completion budget; longer ones are cut (and count as truncated)
    temperature: float = 1.0  # also divides the logits when log-probabilities are recomputed
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    max_prompt_length: int | None = None  # prompts longer than this (tokens) are dropped, with a count
    rollout_engine: str = "shared_prefix"  # registered rollout engine (grpo/rollout.py): shared_prefix | hf | vllm
    share_prompt: bool = True  # loss forwards run each prompt once per group (its KV cache shared by the G rows)

    # --- the objective ----------------------------------------------------------------------
    advantage_estimator: str = "grpo"  # grpo | dr_grpo | batch_std | rloo | reinforce_pp | gdpo (grpo/advantages.py)
    reward_std_eps: float = 1e-4  # ε in (r − mean) / (std + ε)
    policy_loss: str = "clip"  # clip | gspo | cispo | sapo: the per-token policy term (grpo/loss.py)
    loss_aggregation: str = "grpo"  # grpo | bnpo | dapo | dr_grpo (grpo/loss.py; TRL: loss_type)
    epsilon_low: float = 0.2  # clip range below 1 for the importance ratio
    epsilon_high: float | None = None  # clip range above 1 (DAPO's clip-higher: 0.28); None = epsilon_low; cispo: weights ≤ 1 + epsilon_high
    sapo_temperature_pos: float = 1.0  # sapo: gate temperature τ for positive advantages
    sapo_temperature_neg: float = 1.05  # sapo: τ for the others (larger: off-policy tokens fade faster)
    entropy_coef: float = 0.0  # entropy bonus: −entropy_coef·H per token in the loss (0: off)
    num_iterations: int = 1  # μ: optimisation passes over each batch of rollouts
    beta: float = 0.04  # KL coefficient; 0 loads no reference model
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"  # in the loss: k3 (gradient of KL(π_ref‖π_θ)) or k2 (of KL(π_θ‖π_ref)); grpo/loss.py
    kl_in: Literal["loss", "reward"] = "loss"  # loss: β·KL per token in the loss (GRPO); reward: β·Σ k1 subtracted from each reward (PPO/verl)
    mask_truncated_completions: bool = False  # completions cut at max_new_tokens get no gradient (DAPO)
    dynamic_sampling: bool = False  # DAPO: replace groups whose rewards are all equal by freshly sampled prompts
    dynamic_sampling_max_rounds: int = 3  # at most this many extra rounds of prompts_per_step prompts per step

    # Sampler–trainer agreement (grpo/rollout_correction.py): importance weights on the policy-gradient
    # term for tokens the engine sampled from a slightly different distribution than the trainer's π_old.
    rollout_correction: Literal["auto", "none", "tis", "mis"] = "auto"  # auto: tis when the sampler differs (vLLM, bf16, top-p/k)
    rollout_correction_cap: float = 2.0  # C: tis weights min(r, C); mis keeps sequences with ratio in [1/C, C]
    logits_chunk_mib: float = 512.0  # float32 logits held at once when computing log-probs/entropy (chunks of rows × positions)

    on_reward_error: Literal["fail", "skip"] = "fail"  # a reward that raises / returns garbage: stop, or score None and count
    max_nonfinite_steps: int = 3  # optimiser steps skipped for NaN/inf loss or gradients before training stops
    max_failing_steps: int = 3  # with on_reward_error: skip, steps in which a reward fails on every row before training stops

    # --- optimisation -----------------------------------------------------------------------
    learning_rate: float = 1e-6
    lr_scheduler: Literal["constant", "linear", "cosine"] = "constant"  # after warmup
    warmup_steps: int = 0  # optimiser steps of linear warmup
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.99
    max_grad_norm: float | None = 1.0  # clip the gradient norm; None = no clipping
    gradient_accumulation_steps: int = 1  # split the B×G rows into this many micro-batches per optimiser step
    gradient_checkpointing: bool = False
    lora: LoraSettings | None = None

    # --- bookkeeping ------------------------------------------------------------------------
    save_every: int = 50  # checkpoint every N steps (and always at the end)
    keep_checkpoints: int = 2  # most recent checkpoints kept on disk
    log_completions: int = 4  # completions per step written to completions.jsonl
    progress: bool = True  # show a progress bar

    def __post_init__(self):
        # Messages are "field: what was expected" so from_dict can prefix the recipe path.
        if self.group_size < 2:
            raise ValueError(f"group_size: must be ≥ 2 (the group mean is the baseline), got {self.group_size}")
        for name in ("steps", "prompts_per_step", "max_new_tokens", "num_iterations", "gradient_accumulation_steps", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be ≥ 1, got {getattr(self, name)}")
        rows = self.prompts_per_step * self.group_size
        if rows % self.gradient_accumulation_steps:
            raise ValueError(
                f"gradient_accumulation_steps: must divide prompts_per_step × group_size = {rows}, got {self.gradient_accumulation_steps}"
            )
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p: must be in (0, 1], got {self.top_p}")
        if self.temperature <= 0:
            raise ValueError(f"temperature: must be > 0, got {self.temperature}")
        if self.beta < 0:
            raise ValueError(f"beta: must be ≥ 0, got {self.beta}")
        if self.epsilon_high is None:
            self.epsilon_high = self.epsilon_low
        for name in ("sapo_temperature_pos", "sapo_temperature_neg"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be > 0, got {getattr(self, name)}")
        if self.kl_estimator == "k1" and self.kl_in == "loss" and self.beta > 0:
            raise ValueError(
                "kl_estimator: 'k1' in the loss has zero expected gradient (its gradient is the score function ∇logπ_θ, "
                "whose mean is 0), so it would not regularise; use k3 (or k2) in the loss, or kl_in: reward for k1 in the reward"
            )
        if self.rollout_correction_cap <= 1.0:
            raise ValueError(f"rollout_correction_cap: must be > 1, got {self.rollout_correction_cap}")
        if self.logits_chunk_mib <= 0:
            raise ValueError(f"logits_chunk_mib: must be > 0, got {self.logits_chunk_mib}")
        # Registries live in their modules; checked here so a typo fails at load, not at step 1.
        from grpo.advantages import ADVANTAGE_ESTIMATORS
        from grpo.loss import AGGREGATIONS, POLICY_LOSSES

        registries = (("advantage_estimator", ADVANTAGE_ESTIMATORS), ("policy_loss", POLICY_LOSSES), ("loss_aggregation", AGGREGATIONS))
        for name, registry in registries:
            value = getattr(self, name)
            if value not in registry:
                raise ValueError(f"{name}: expected one of {', '.join(map(repr, registry))}, got {value!r}")
        from grpo.advantages import PER_REWARD_ESTIMATORS

        if self.advantage_estimator in PER_REWARD_ESTIMATORS and self.kl_in == "reward" and self.beta > 0:
            raise ValueError(
                f"advantage_estimator: {self.advantage_estimator!r} normalises each reward function on its own scale, which "
                "would rescale kl_in: reward's β·KL penalty away; use kl_in: loss with it"
            )

    @classmethod
    def prepare_dict(cls, data: dict, path: str) -> dict:
        """TRL's GRPOConfig names read as ours, or refused naming ours (grpo/trl_compat.py)."""
        from grpo.trl_compat import translate_trl_keys

        return translate_trl_keys(data, path)

    @property
    def rows_per_step(self) -> int:
        return self.prompts_per_step * self.group_size
