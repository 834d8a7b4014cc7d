"""TRL's ``GRPOConfig`` names in a recipe's ``grpo:`` section: one table, TRL name → ours.

A recipe written by someone who knows TRL should either work or say exactly what to write
instead. Every field of TRL 1.16's ``GRPOConfig`` (its own and the ``TrainingArguments`` it
inherits) has one entry in :data:`TRL_KEYS`, of one of these kinds:

* ``same``: our key has this name and meaning (``beta``, ``temperature``, ``num_iterations``...).
  A ``convert`` adapts TRL-typed values (``log_completions: true`` → a count).
* ``alias``: read as our key ``ours``, with a note (``num_generations`` → ``group_size``);
  ``convert`` maps values and refuses those we do not have (``loss_type: luspo``), or returns
  :class:`Targets` to set other or several keys of ours for some values.
* ``refuse``: an error that names our key (``bf16`` → ``precision``, ``per_device_train_batch_size``
  → ``prompts_per_step``).
* ``ignore``: settings that change nothing here whatever their value (data-loader workers,
  logging cadence): dropped with a note.

An entry's ``noop`` values ask for what happens here anyway (``bf16: false``, ``push_to_hub:
false``, ``max_steps: -1``): whatever the kind, those are dropped with a note.

``tests/test_trl_compat.py`` walks TRL's ``GRPOConfig`` fields and checks each against this table.
When a key of ours is added that TRL has (a precision setting, a policy-loss choice, a
``report_to``), point its entry here at it: the table is the only place that knows.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["TrlKey", "Targets", "TRL_KEYS", "TRL_SCRIPT_KEYS", "translate_trl_keys", "top_level_hint", "note"]


@dataclass(frozen=True)
class TrlKey:
    kind: str  # same | alias | refuse | ignore
    ours: str | None  # the key (recipe path, e.g. "grpo.group_size", "dtype"), flag or variable the entry names
    why: str = ""  # one line: what TRL's setting is, and what to write here
    convert: Callable[[Any], Any] | None = None  # TRL value -> ours; raises ValueError("...") to refuse a value
    noop: tuple = ()  # values that ask for what happens here anyway (TRL's "off"): accepted and dropped


class Targets(dict):
    """What a ``convert`` returns to set other keys than the entry's ``ours``, or several:
    ``Targets({"policy_loss": "cispo"})`` (a TRL value whose meaning lives in another of our keys)."""


def same(convert=None, why: str = "") -> TrlKey:
    return TrlKey("same", None, why, convert)


def alias(ours: str, convert=None, why: str = "") -> TrlKey:
    return TrlKey("alias", ours, why, convert)


def refuse(ours: str | None, why: str, *noop) -> TrlKey:
    return TrlKey("refuse", ours, why, None, noop)


def ignore(ours: str | None, why: str) -> TrlKey:
    return TrlKey("ignore", ours, why)


def choose(mapping: dict, refusal: str) -> Callable[[Any], Any]:
    """A ``convert`` that maps the listed values and refuses the others with ``refusal``."""

    def convert(value):
        for key, ours in mapping.items():
            if _same_value(value, key):
                return ours
        raise ValueError(f"{value!r}: {refusal}")

    return convert


def whole_steps(what: str) -> Callable[[Any], Any]:
    """TrainingArguments counts steps with floats below 1 meaning a ratio of the run; we count steps."""

    def convert(value):
        if isinstance(value, float) and 0 < value < 1:
            raise ValueError(f"{value!r} is a ratio of the run in TRL; give {what} as a number of steps")
        return int(value) if isinstance(value, float) and value.is_integer() else value

    return convert


# Shared reasons, so a group of keys says the same thing.
_HUB = "nothing is pushed to the Hugging Face Hub: the trained model is written to <output_dir>/final"
_REPORT = "experiment trackers are the recipe's top-level report_to (tensorboard, trackio, wandb, mlflow; settings in tracking:)"
_EVAL = "evaluation is a stage of a staged recipe (stages: ... kind: eval, with samples_per_prompt), run by `grpo run`"
_LOGGING = "every step is logged to <output_dir>/metrics.jsonl; the progress bar is grpo.progress"
_LOADER = "there is no data loader: the rows are in memory and each step draws grpo.prompts_per_step of them"
_PROCESSES = "data-parallel runs are `grpo train --num-processes N` (or accelerate launch; docs/distributed.md)"
_FSDP = "several processes share the policy by the recipe's distributed: section (strategy: ddp | fsdp, cpu_offload, reshard_after_forward) with `grpo train --num-processes N` (docs/distributed.md)"
_CHECKPOINTS = "checkpoints are written every grpo.save_every steps and hold what --resume needs"
_RESUME = "continue a run with `grpo train --resume` (from its last complete checkpoint, drawing the same prompts)"
_ADAMW = "the optimiser is AdamW (torch), set by grpo.learning_rate, adam_beta1, adam_beta2 and weight_decay"
_SAMPLING = "sampling is set by grpo.temperature, top_p, top_k and max_new_tokens"
_ROLLOUT = "completions are sampled by grpo.rollout_engine (shared_prefix, hf or vllm)"
_VLLM = "grpo.rollout_engine: vllm runs vLLM in the trainer's process (colocated)"
_POLICY_LOSS = "the policy loss is grpo.policy_loss (clip, gspo, cispo, sapo), aggregated by grpo.loss_aggregation (grpo, bnpo, dr_grpo, dapo)"
_NO_KERNELS = "no compiled or fused kernels are set from the recipe; the speed-ups are grpo.rollout_engine's (shared_prefix, vllm)"
_PRECISION = (
    "the numerics are the recipe's top-level precision (auto, fp32, bf16-mixed: float32 master weights with bf16 compute "
    "and float32 log-softmax, bf16): write precision: bf16-mixed for TRL's bf16: true; there is no fp16 (no loss scaling)"
)
_CORRECTION = "the sampler-trainer correction is grpo.rollout_correction (auto, none, tis, mis; grpo/rollout_correction.py)"
_STEP_BATCH = (
    "every step samples its own batch of grpo.prompts_per_step prompts × grpo.group_size completions "
    "and trains on it grpo.num_iterations times"
)
_LOSS_TYPES = choose(
    {
        "grpo": "grpo", "bnpo": "bnpo", "dr_grpo": "dr_grpo", "dapo": "dapo",
        # TRL's cispo and sapo are policy losses with TRL's aggregation for each (token mean, sequence mean)
        "cispo": Targets({"policy_loss": "cispo", "loss_aggregation": "dapo"}),
        "sapo": Targets({"policy_loss": "sapo", "loss_aggregation": "grpo"}),
    },
    "not available here; grpo.loss_aggregation takes grpo, bnpo, dr_grpo or dapo, grpo.policy_loss clip, gspo, cispo or sapo",
)
_SCHEDULERS = choose(
    {"constant": "constant", "constant_with_warmup": "constant", "linear": "linear", "cosine": "cosine"},
    "not available here; grpo.lr_scheduler takes constant, linear or cosine (after grpo.warmup_steps)",
)
_SCALE_REWARDS = choose(
    {True: "grpo", "group": "grpo", "batch": "batch_std", False: "dr_grpo", "none": "dr_grpo"},
    "grpo.advantage_estimator takes grpo (group std), batch_std (batch std) or dr_grpo (no scaling)",
)


def _log_completions(value):
    if isinstance(value, bool):  # TRL: whether to log a sample; ours: how many per step
        return 4 if value else 0
    return value


def _use_vllm(value):
    if value is True:
        return "vllm"
    raise ValueError(f"{value!r}: expected true (grpo.rollout_engine: vllm) or false")


#: Every field of TRL 1.16's GRPOConfig.
TRL_KEYS: dict[str, TrlKey] = {
    # --- GRPOConfig's own fields -----------------------------------------------------------
    "model_init_kwargs": refuse("dtype", "the model is loaded from the recipe's model with its dtype and device", None, {}),
    "trust_remote_code": refuse("model", "models that ship their own Python code are not loaded; give a model transformers knows", False),
    "router_aux_loss_coef": refuse(None, "no Mixture-of-Experts load-balancing loss is added", None),
    "disable_dropout": refuse("model", "dropout is the model's own (its config.json); set it to 0 there", False),
    "cast_lm_head_to_fp32": refuse("precision", _PRECISION + "; the head's logits are taken in float32 under every precision", False),
    "num_generations": alias("grpo.group_size"),
    "num_generations_eval": refuse("stages", _EVAL, None),
    "max_completion_length": alias("grpo.max_new_tokens"),
    "ds3_gather_for_generation": refuse(
        "distributed.rollout_weights", "FSDP rollouts gather every layer at once (distributed.rollout_weights: gathered, the default); false is distributed.rollout_weights: per_layer", True
    ),
    "shuffle_dataset": refuse("seed", "each step draws its prompts in a random order fixed by seed", True),
    "pad_to_multiple_of": ignore(None, "padding is the rollout engine's"),
    "generation_batch_size": refuse("grpo.prompts_per_step", _STEP_BATCH, None),
    "steps_per_generation": refuse("grpo.num_iterations", _STEP_BATCH, None),
    "temperature": same(),
    "top_p": same(),
    "top_k": same(),
    "min_p": refuse("grpo.top_p", _SAMPLING, None),
    "generation_kwargs": refuse("grpo.temperature", _SAMPLING, None, {}),
    "chat_template_kwargs": refuse("template", "prompts are rendered by the recipe's template (kind: chat uses the tokenizer's chat template)", None, {}),
    "repetition_penalty": refuse("grpo.temperature", _SAMPLING, 1.0),
    "cache_implementation": ignore("grpo.rollout_engine", _ROLLOUT),
    "use_vllm": TrlKey("alias", "grpo.rollout_engine", _VLLM, _use_vllm, (False,)),
    "vllm_mode": refuse("grpo.rollout_engine", _VLLM + "; server mode is not built", "colocate"),
    "vllm_model_impl": refuse("grpo.rollout_engine", _VLLM + " with its own model implementation", "vllm"),
    "vllm_enable_sleep_mode": refuse("grpo.rollout_engine", _VLLM + "; sleep mode is not built", False),
    "vllm_structured_outputs_regex": refuse("grpo.rollout_engine", _VLLM + "; structured outputs are not built", None),
    "vllm_server_base_url": ignore("grpo.rollout_engine", _VLLM + "; there is no server to connect to"),
    "vllm_server_host": ignore("grpo.rollout_engine", _VLLM + "; there is no server to connect to"),
    "vllm_server_port": ignore("grpo.rollout_engine", _VLLM + "; there is no server to connect to"),
    "vllm_server_timeout": ignore("grpo.rollout_engine", _VLLM + "; there is no server to connect to"),
    "vllm_group_port": ignore("grpo.rollout_engine", _VLLM + "; there is no server to connect to"),
    "vllm_gpu_memory_utilization": refuse(
        "GRPO_VLLM_GPU_MEMORY_UTILIZATION", "the colocated vLLM engine's share of GPU memory is the environment variable GRPO_VLLM_GPU_MEMORY_UTILIZATION (default 0.3)", 0.3
    ),
    "vllm_max_model_length": refuse("grpo.max_new_tokens", "vLLM's context is the model's; completions are cut at grpo.max_new_tokens", None),
    "vllm_tensor_parallel_size": refuse("grpo.rollout_engine", _VLLM + " on one GPU per process", 1),
    "beta": same(why="the default differs: 0.04 here (DeepSeekMath, R1), 0.0 in TRL"),
    "num_iterations": same(),
    "epsilon": alias("grpo.epsilon_low"),
    "delta": refuse("grpo.epsilon_high", "two-sided clipping (INTELLECT-2's delta) is not available; grpo.epsilon_high is the upper clip of the ratio", None),
    "epsilon_high": same(),
    "sapo_temperature_neg": same(),
    "sapo_temperature_pos": same(),
    "vespo_k_pos": refuse("grpo.policy_loss", _POLICY_LOSS + "; VESPO is not available", 2.0),
    "vespo_lambda_pos": refuse("grpo.policy_loss", _POLICY_LOSS + "; VESPO is not available", 3.0),
    "vespo_k_neg": refuse("grpo.policy_loss", _POLICY_LOSS + "; VESPO is not available", 3.0),
    "vespo_lambda_neg": refuse("grpo.policy_loss", _POLICY_LOSS + "; VESPO is not available", 2.0),
    "importance_sampling_level": TrlKey(
        "alias", "grpo.policy_loss", "GSPO's sequence ratio and clip", choose(
            {"sequence": Targets({"policy_loss": "gspo"})}, "grpo.policy_loss takes clip (token ratios), gspo (sequence ratios), cispo or sapo"
        ), ("token",),
    ),
    # A list of weights, one per reward in order: applied to the recipe's rewards by the recipe
    # loader (pipelines/recipe.py); what reaches GRPOConfig has nowhere to go.
    "reward_weights": refuse("rewards", "give each reward its weight in rewards: (accuracy: 1.0, format: 0.5)", None),
    "multi_objective_aggregation": TrlKey(
        "alias", "grpo.advantage_estimator", "GDPO: each reward normalised in its group, then weighted and summed", choose(
            {"normalize_then_sum": Targets({"advantage_estimator": "gdpo"})}, "grpo.advantage_estimator: gdpo is normalize_then_sum; the others sum first"
        ), ("sum_then_normalize",),
    ),
    "scale_rewards": alias("grpo.advantage_estimator", _SCALE_REWARDS),
    "loss_type": alias("grpo.loss_aggregation", _LOSS_TYPES, why="the default differs: grpo here, dapo in TRL"),
    "mask_truncated_completions": same(),
    "sync_ref_model": refuse("grpo.beta", "the KL reference stays the initial model (grpo.beta: 0 drops it)", False),
    "ref_model_mixup_alpha": ignore("grpo.beta", "used only with sync_ref_model, which is not available"),
    "ref_model_sync_steps": ignore("grpo.beta", "used only with sync_ref_model, which is not available"),
    "top_entropy_quantile": refuse("grpo.loss_aggregation", _POLICY_LOSS + " over every completion token (no entropy mask)", 1.0),
    # Ours is aggregated like the rest of the loss (grpo.loss_aggregation); TRL's is the token mean
    # whatever its loss_type: the same under dapo.
    "entropy_coef": same(),
    "use_adaptive_entropy": refuse("grpo.entropy_coef", "adaptive entropy control is not available; grpo.entropy_coef is a constant bonus", False),
    "entropy_coef_min": ignore("grpo.entropy_coef", "used only with use_adaptive_entropy, which is not available"),
    "entropy_coef_max": ignore("grpo.entropy_coef", "used only with use_adaptive_entropy, which is not available"),
    "entropy_coef_delta": ignore("grpo.entropy_coef", "used only with use_adaptive_entropy, which is not available"),
    "entropy_target": ignore("grpo.entropy_coef", "used only with use_adaptive_entropy, which is not available"),
    "max_tool_calling_iterations": refuse(None, "tool calling (agent training) is not supported", None),
    # TRL corrects vLLM's samples only; grpo.rollout_correction corrects whatever sampler differs
    # from the trainer (vLLM, bf16 rollouts, top-p/top-k), so true is its default, auto.
    "vllm_importance_sampling_correction": TrlKey("alias", "grpo.rollout_correction", _CORRECTION, choose({False: "none"}, "expected true or false"), (True,)),
    "vllm_importance_sampling_mode": alias("grpo.rollout_correction", choose(
        {"token_truncate": "tis", "sequence_mask": "mis"},
        "not available here; grpo.rollout_correction takes tis (token_truncate: per-token weights min(r, C)) or mis "
        "(sequence_mask: sequences whose ratio leaves [1/C, C] are dropped)"), why=_CORRECTION),
    "vllm_importance_sampling_clip_max": alias("grpo.rollout_correction_cap", why="the default differs: 2.0 here, 3.0 in TRL"),
    "vllm_importance_sampling_clip_min": refuse("grpo.rollout_correction_cap", "the lower bound is 1/grpo.rollout_correction_cap under mis; tis has none", None),
    "vllm_importance_sampling_cap": TrlKey("alias", "grpo.rollout_correction_cap", "TRL's deprecated name of vllm_importance_sampling_clip_max", None, (None,)),
    "off_policy_mask_threshold": refuse("grpo.mask_truncated_completions", "no off-policy sequence masking; grpo.mask_truncated_completions masks cut completions", None),
    "use_bias_correction_kl": refuse(
        "grpo.kl_estimator", "the KL term (grpo.kl_estimator, in the loss) is not multiplied by the importance ratio: write nothing, or use_bias_correction_kl: false", False
    ),
    "log_completions": same(_log_completions, why="here a count per step (default 4), written to completions.jsonl"),
    "log_multimodal": ignore("grpo.log_completions", "completions are logged as text"),
    "num_completions_to_print": ignore("grpo.log_completions", "grpo.log_completions completions per step go to completions.jsonl; none are printed"),
    "log_unique_prompts": ignore("grpo.log_completions", "grpo.log_completions completions per step go to completions.jsonl"),
    "log_completions_hub_repo": refuse("output_dir", _HUB, None),
    "use_transformers_continuous_batching": refuse("grpo.rollout_engine", _ROLLOUT, False),
    "transformers_continuous_batching_config": ignore("grpo.rollout_engine", _ROLLOUT),
    "use_transformers_paged": refuse("grpo.rollout_engine", _ROLLOUT, False),
    # --- TrainingArguments ---------------------------------------------------------------
    "output_dir": refuse("output_dir", "the run directory is the recipe's top-level output_dir (default runs/<name>)", None),
    "per_device_train_batch_size": refuse(
        "grpo.prompts_per_step",
        "TRL counts completions per device per micro-batch; here a step samples grpo.prompts_per_step prompts × grpo.group_size "
        "completions (TRL's per_device_train_batch_size × gradient_accumulation_steps × processes / num_generations prompts), "
        "split into grpo.gradient_accumulation_steps micro-batches",
    ),
    "num_train_epochs": refuse("grpo.steps", "the run length is grpo.steps GRPO steps, each drawing grpo.prompts_per_step prompts"),
    "max_steps": TrlKey("alias", "grpo.steps", "", whole_steps("max_steps"), (-1,)),
    "learning_rate": same(),
    "lr_scheduler_type": alias("grpo.lr_scheduler", _SCHEDULERS, why="the default differs: constant here, linear in TRL"),
    "lr_scheduler_kwargs": refuse("grpo.lr_scheduler", "grpo.lr_scheduler's schedules (constant, linear, cosine) take no arguments", None, {}),
    "warmup_steps": same(whole_steps("warmup_steps")),
    "optim": refuse("grpo.learning_rate", _ADAMW, "adamw_torch", "adamw_torch_fused"),
    "optim_args": refuse("grpo.learning_rate", _ADAMW, None),
    "weight_decay": same(),
    "adam_beta1": same(),
    "adam_beta2": same(why="the default differs: 0.99 here, 0.999 in TRL"),
    "adam_epsilon": refuse("grpo.adam_beta2", _ADAMW + "; its epsilon is 1e-8", 1e-8),
    "optim_target_modules": refuse("grpo.lora", "every parameter is trained, or LoRA adapters (grpo.lora)", None),
    "gradient_accumulation_steps": same(why="here the B×G rows of a step are split into this many micro-batches; it does not change the rollout batch"),
    "average_tokens_across_devices": refuse("grpo.loss_aggregation", "grpo.loss_aggregation always counts the whole batch's tokens, across processes", True),
    "max_grad_norm": same(),
    "label_smoothing_factor": refuse(None, "GRPO has no labels to smooth", 0.0),
    "bf16": refuse("precision", _PRECISION, None, False),
    "fp16": refuse("precision", _PRECISION, False),
    "bf16_full_eval": refuse("precision", _PRECISION, False),
    "fp16_full_eval": refuse("precision", _PRECISION, False),
    "tf32": refuse("precision", _PRECISION, None),
    "activation_checkpointing": refuse("grpo.gradient_checkpointing", "write grpo.gradient_checkpointing: true", None, False),
    "activation_checkpointing_kwargs": refuse("grpo.gradient_checkpointing", "grpo.gradient_checkpointing takes no arguments", None, {}),
    "gradient_checkpointing": same(why="the default differs: false here, true in TRL"),
    "gradient_checkpointing_kwargs": refuse("grpo.gradient_checkpointing", "grpo.gradient_checkpointing takes no arguments", None, {}),
    "torch_compile": refuse("grpo.rollout_engine", _NO_KERNELS, False),
    "torch_compile_backend": refuse("grpo.rollout_engine", _NO_KERNELS, None),
    "torch_compile_mode": refuse("grpo.rollout_engine", _NO_KERNELS, None),
    "use_liger_kernel": refuse("grpo.rollout_engine", _NO_KERNELS, False),
    "liger_kernel_config": refuse("grpo.rollout_engine", _NO_KERNELS, None),
    "use_cache": ignore("grpo.rollout_engine", "rollouts always use the KV cache; training forwards do not"),
    "neftune_noise_alpha": refuse(None, "no NEFTune noise is added to embeddings", None),
    "torch_empty_cache_steps": ignore(None, "the CUDA cache is left to torch"),
    "auto_find_batch_size": refuse("grpo.gradient_accumulation_steps", "set the micro-batch count with grpo.gradient_accumulation_steps", False),
    "logging_strategy": ignore("grpo.progress", _LOGGING),
    "logging_steps": ignore("grpo.progress", _LOGGING),
    "logging_first_step": ignore("grpo.progress", _LOGGING),
    "log_on_each_node": ignore("grpo.progress", _LOGGING + " (by the first process)"),
    "logging_nan_inf_filter": ignore("grpo.max_nonfinite_steps", "a step with a NaN/inf loss is skipped and counted (nonfinite_skipped; grpo.max_nonfinite_steps)"),
    "include_num_input_tokens_seen": ignore("grpo.progress", _LOGGING + " (num_tokens included)"),
    "log_level": ignore("grpo.progress", _LOGGING),
    "log_level_replica": ignore("grpo.progress", _LOGGING),
    "disable_tqdm": TrlKey("alias", "grpo.progress", "inverted: progress: false hides the bar", lambda v: not v, (None,)),
    "report_to": refuse("report_to", _REPORT + "; write it there", "none", None, [], "None"),
    "run_name": refuse("name", "the run is named by the recipe's name", None),
    "project": refuse("tracking.project", "the trackers' project is the recipe's tracking.project (default: the recipe's name)", "huggingface"),
    "trackio_space_id": refuse("report_to", _REPORT + "; runs are logged locally, not to a Space", None, "trackio"),
    "trackio_bucket_id": refuse("report_to", _REPORT + "; runs are logged locally", None),
    "trackio_static_space_id": refuse("report_to", _REPORT + "; runs are logged locally", None),
    "eval_strategy": refuse("stages", _EVAL, "no"),
    "eval_steps": ignore("stages", _EVAL),
    "eval_delay": ignore("stages", _EVAL),
    "per_device_eval_batch_size": ignore("stages", _EVAL),
    "prediction_loss_only": ignore("stages", _EVAL),
    "eval_on_start": refuse("stages", _EVAL, False),
    "eval_do_concat_batches": ignore("stages", _EVAL),
    "eval_use_gather_object": ignore("stages", _EVAL),
    "eval_accumulation_steps": ignore("stages", _EVAL),
    "include_for_metrics": ignore("stages", _EVAL),
    "batch_eval_metrics": ignore("stages", _EVAL),
    "load_best_model_at_end": refuse("stages", _EVAL + "; the final model is the last step's", False),
    "metric_for_best_model": refuse("stages", _EVAL + "; the final model is the last step's", None),
    "greater_is_better": ignore("stages", _EVAL),
    "save_only_model": refuse("--resume", _CHECKPOINTS, False),
    "save_strategy": refuse("grpo.save_every", _CHECKPOINTS, "steps"),
    "save_steps": alias("grpo.save_every", whole_steps("save_steps")),
    "save_on_each_node": ignore("grpo.save_every", _CHECKPOINTS + " (every process writes its shards into the one directory)"),
    "save_total_limit": TrlKey("alias", "grpo.keep_checkpoints", "", None, (None,)),
    "enable_jit_checkpoint": refuse("grpo.save_every", _CHECKPOINTS, False),
    "push_to_hub": refuse("output_dir", _HUB, False),
    "hub_token": refuse("output_dir", _HUB, None),
    "hub_private_repo": refuse("output_dir", _HUB, None),
    "hub_model_id": refuse("output_dir", _HUB, None),
    "hub_strategy": ignore("output_dir", _HUB),
    "hub_always_push": refuse("output_dir", _HUB, False),
    "hub_revision": refuse("output_dir", _HUB, None),
    "restore_callback_states_from_checkpoint": refuse("--resume", _RESUME, False),
    "full_determinism": refuse("seed", "runs are reproducible from seed (on CPU, exactly)", False),
    "seed": refuse("seed", "the seed is the recipe's top-level seed (data order, sampling, initialisation); default 0"),
    "data_seed": refuse("data.train.seed", "the order in which steps draw prompts follows seed; data.train.seed shuffles the file (with data.train.shuffle)", None),
    "use_cpu": refuse("device", "write device: cpu at the recipe's top level", False),
    "accelerator_config": refuse("--num-processes", _PROCESSES, None),
    "parallelism_config": refuse("--num-processes", _PROCESSES, None),
    "dataloader_drop_last": ignore("grpo.prompts_per_step", _LOADER),
    "dataloader_num_workers": ignore("grpo.prompts_per_step", _LOADER),
    "dataloader_pin_memory": ignore("grpo.prompts_per_step", _LOADER),
    "dataloader_persistent_workers": ignore("grpo.prompts_per_step", _LOADER),
    "dataloader_prefetch_factor": ignore("grpo.prompts_per_step", _LOADER),
    "dataloader_multiprocessing_context": ignore("grpo.prompts_per_step", _LOADER),
    "dataloader_in_order": ignore("grpo.prompts_per_step", _LOADER),
    "remove_unused_columns": ignore("rewards", "every dataset column reaches the reward functions"),
    "label_names": ignore(None, "GRPO has no labels"),
    "train_sampling_strategy": refuse("seed", "each step draws its prompts in a random order fixed by seed", "random"),
    "length_column_name": ignore(None, "GRPO has no length grouping"),
    "ddp_find_unused_parameters": ignore("--num-processes", _PROCESSES),
    "ddp_bucket_cap_mb": ignore("--num-processes", _PROCESSES),
    "ddp_broadcast_buffers": ignore("--num-processes", _PROCESSES),
    "ddp_static_graph": ignore("--num-processes", _PROCESSES),
    "ddp_backend": ignore("--num-processes", _PROCESSES + " (gloo on CPU, NCCL on GPUs)"),
    "ddp_timeout": ignore("--num-processes", _PROCESSES),
    "fsdp": refuse("distributed.strategy", "write distributed: {strategy: fsdp} (FSDP2, each decoder layer sharded); " + _FSDP, None, "", [], False),
    "fsdp_config": refuse("distributed", _FSDP, None, {}),
    "deepspeed": refuse("distributed.strategy", "DeepSpeed is not one of the engines; " + _FSDP, None),
    "debug": ignore(None, "no Trainer debug modes"),
    "skip_memory_metrics": ignore(None, "memory figures (memory/params_mib, grads_mib, optimizer_mib, cuda_peak_mib) are in every step's metrics"),
    "do_train": ignore(None, "`grpo train` trains"),
    "do_eval": refuse("stages", _EVAL, False),
    "do_predict": refuse("stages", _EVAL, False),
    "resume_from_checkpoint": refuse("--resume", _RESUME, None),
    "local_rank": ignore("--num-processes", _PROCESSES),
    "ignore_data_skip": refuse("--resume", _RESUME, False),
}

#: Keys of TRL's command-line scripts (``trl grpo``) a recipe has elsewhere: unknown-key hints.
TRL_SCRIPT_KEYS: dict[str, str] = {
    "model_name_or_path": "model",
    "dataset_name": "data.train.source",
    "dataset_config": "data.train.subset",
    "dataset_train_split": "data.train.split",
    "reward_funcs": "rewards",
    "torch_dtype": "dtype",
    "dtype": "dtype",
}


def _same_value(a, b) -> bool:
    """Equal, and both bools or neither (``False`` is not ``0`` here)."""
    if isinstance(a, bool) != isinstance(b, bool):
        return False
    try:
        return a == b
    except Exception:
        return False


_NOTED: set[str] = set()


def note(message: str) -> None:
    """Print ``note: message`` on stderr once per process (by the first process only)."""
    import os

    if message in _NOTED or os.environ.get("RANK", "0") != "0":
        return
    _NOTED.add(message)
    print(f"note: {message}", file=sys.stderr)


def translate_trl_keys(section: dict, path: str) -> dict:
    """A ``grpo:`` mapping with TRL's names read as ours (with a note each) and the ones we do
    not have refused (a ``ConfigError`` that names our key). Keys not in the table pass through."""
    from grpo.schema import ConfigError

    out: dict = {}
    here = f"{path}." if path else ""
    for key, value in section.items():
        entry = TRL_KEYS.get(key)
        if entry is None:
            out[key] = value
            continue
        where = f"{here}{key}"
        if entry.kind == "ignore":
            note(f"{where}: TRL setting ignored here: {entry.why}")
            continue
        if any(_same_value(value, v) for v in entry.noop):
            note(f"{where}: {value!r} is what happens here anyway; ignored" + (f" ({entry.why})" if entry.why else ""))
            continue
        if entry.kind == "refuse":
            raise ConfigError(f"{where}: TRL's setting; {entry.why}")
        try:
            converted = entry.convert(value) if entry.convert is not None else value
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if entry.kind == "same":
            out[key] = converted
            if not _same_value(converted, value):
                note(f"{where}: {value!r} read as {converted!r} ({entry.why})")
            continue
        targets = converted if isinstance(converted, Targets) else {entry.ours.removeprefix("grpo."): converted}
        for target, ours in targets.items():
            if target in section:
                raise ConfigError(f"{where}: TRL's name for {here}{target}, which is also given; keep {target}")
            if target in out and not _same_value(out[target], ours):
                raise ConfigError(f"{where}: sets {here}{target} to {ours!r}, another of TRL's keys set it to {out[target]!r}; give {target} once")
            out[target] = ours
        extra = f"; {entry.why}" if entry.why else ""
        read = ", ".join(f"{here}{t}: {v!r}" for t, v in targets.items())
        note(f"{where} is TRL's name: read as {read}{extra}")
    if _same_value(section.get("loss_type"), "cispo") and isinstance(out.get("epsilon_high"), (int, float)):
        # TRL's cispo bounds its weights at epsilon_high itself (ε_max); ours at 1 + epsilon_high.
        out["epsilon_high"] = section["epsilon_high"] - 1
        note(f"{here}epsilon_high: TRL's bound of cispo's weights; read as {here}epsilon_high: {out['epsilon_high']!r} (the bound is 1 + epsilon_high here)")
    return out


def top_level_hint(key: str) -> str | None:
    """For an unknown top-level recipe key that is one of TRL's: where it goes in a recipe."""
    if key in TRL_SCRIPT_KEYS:
        return f"TRL's script argument; in a recipe it is {TRL_SCRIPT_KEYS[key]}"
    entry = TRL_KEYS.get(key)
    if entry is None:
        return None
    if entry.kind == "same":
        return f"TRL's GRPOConfig key; in a recipe it goes in the grpo: section (grpo.{key})"
    if entry.kind == "alias":
        return f"TRL's GRPOConfig key; in a recipe it is {entry.ours}"
    return f"TRL's GRPOConfig key: {entry.why}"
