"""The GRPO trainer: one step, checkpoints and metrics, readable in one sitting.

One step (``GRPOTrainer.step``):

    B prompts ──rollout──▶ B×G completions (+ masks, + the sampler's log-probs)
              ──rewards──▶ r[B×G, k] ──weights──▶ r[B×G]
              ──π_old forward (μ > 1 or kl_in: reward), π_ref forward (β > 0), no grad
              ──advantages──▶ A[B×G]                (group mean/std; zero-std groups counted)
              μ × { micro-batches: π_θ forward → sampler agreement (once) → policy_loss → backward ;
                    clip ; optimiser step }
              ──▶ one line of metrics.jsonl, a sample in completions.jsonl

Everything random in a step is drawn from generators seeded by (seed, step): the prompts of step
k and its samples do not depend on how the run got to step k, so a resumed run reproduces an
uninterrupted one exactly (on CPU). The math lives in ``advantages.py``, ``loss.py`` and
``rollout_correction.py``; ``precision.py`` says which dtypes the forwards compute in (under
``bf16-mixed``: bf16 autocast over float32 master weights, bf16 rollouts and reference).

With several processes each rank runs this same step on its share of the prompts. The policy's
weights are PyTorch's engines' (``self.parallel``, grpo/parallel.py: DDP or FSDP2, which sum the
gradients during the backward); what only GRPO needs is ours (``self.dist``, grpo/distributed.py),
one collective each, marked "whole batch" where the step makes it:

    rewards   dist.gather_scores        every rank's rewards → the batch's advantages and reward metrics
    counts    dist.whole_batch_shape    every row's token count → the loss normalisation (BatchShape)
    loss      dist.sum                  the ranks' loss shares → the logged loss, the non-finite check
    metrics   dist.gather_lists         per-row lengths, KL/clip/entropy terms, logged completions

In one process those calls return their input.
"""

from __future__ import annotations

import copy
import json
import math
import random
import shutil
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from grpo.advantages import PER_REWARD_ESTIMATORS, compute_advantages, zero_std_groups
from grpo.config import GRPOConfig
from grpo.distill import check_same_vocabulary, reverse_kl, reverse_kl_advantages
from grpo.distributed import DataParallel
from grpo.io import StorageError, append_jsonl, atomic_directory, atomic_write_json, check_free_space, read_jsonl
from grpo.launch import DistributedSettings
from grpo.loss import BatchShape, kl_reward_penalty, policy_loss
from grpo.packed import PackedLinears
from grpo.parallel import head_gathered, state_memory, wrap_policy
from grpo.precision import Precision, bf16_update_warning, precision_of_dtype
from grpo.rollout import Rollout, SamplingParams, cache_kwargs, concat_rollouts, get_rollout_engine, returned_cache, row_seed
from grpo.rollout_correction import mismatch_stats, resolve_rollout_correction, rollout_correction_weights, sampler_differs
from grpo.scoring import RewardError, RewardTerm, Scores, TrainerState, reward_inputs, score_completions

# Metrics that measure the machine rather than the run: left out when comparing runs.
TIMING_KEYS = ("step_time", "tokens_per_second", "timing/rollout", "timing/rewards", "timing/train",
               "memory/params_mib", "memory/grads_mib", "memory/optimizer_mib", "memory/cuda_peak_mib")


def step_seed(seed: int, step: int) -> int:
    """The seed of everything sampled at ``step`` (large odd multiplier keeps seeds apart)."""
    return (seed * 1_000_003 + step) % (2**63)


class PromptSampler:
    """Deterministic prompt order: epoch e visits the rows in a permutation seeded by (seed, e).

    ``batch(step)`` gives the rows of a step by random access, so resuming needs no sampler state.
    """

    def __init__(self, num_rows: int, batch_size: int, seed: int):
        if num_rows < 1:
            raise ValueError("the training set is empty")
        self.num_rows, self.batch_size, self.seed = num_rows, batch_size, seed
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            order = list(range(self.num_rows))
            random.Random(self.seed * 7919 + epoch).shuffle(order)
            self._perms = {epoch: order}  # only the current epoch is ever needed again
        return self._perms[epoch]

    def batch(self, step: int) -> list[int]:
        start = (step - 1) * self.batch_size  # steps count from 1
        return [self._perm(i // self.num_rows)[i % self.num_rows] for i in range(start, start + self.batch_size)]

    def epoch(self, step: int) -> float:
        return step * self.batch_size / self.num_rows


def completion_logprobs(
    model, batch: Rollout, rows: slice, temperature: float, with_entropy: bool = False, group_size: int = 1,
    entropy_grad: bool = False,
    chunk_mib: float = 512.0,
):
    """log π(token | prefix) of each completion token, [n, L] (and the mean-free entropy [n, L]).

    The entropy is detached unless ``entropy_grad`` (the entropy bonus needs its gradient).

    Logits are divided by the sampling temperature so the probabilities are those the tokens were
    sampled from. Positions follow the attention mask, as in ``generate`` with left padding.

    With ``group_size`` G > 1 (``rows`` made of whole groups, each group's G rows sharing one
    prompt), each prompt is run once and its key/value cache repeated for its G completions:

        h[:, 0]  = f(prompt)[last]                 (one forward per group)
        h[:, 1:] = f(completion | cache(prompt))     (the cache repeated G times)

    The same numbers as running every row's prompt again (to float rounding), with the prompt's
    share of the work divided by G, forward and backward (the gradient flows through the cache).

    The model's forward stops at the final hidden states h (its output head passes them through,
    :func:`_head_passthrough`); the head, log-softmax and entropy then run only on the positions
    of real completion tokens, ``chunk_mib`` MiB of float32 logits at a time
    (:func:`token_logprobs`), so the peak does not grow with rows × L × vocabulary. Positions
    past a completion's end get log p = 0 and entropy 0.
    """
    prompt_ids, completion_ids = batch.prompt_ids[rows], batch.completion_ids[rows]
    prompt_mask, completion_mask = batch.prompt_mask[rows], batch.completion_mask[rows]
    L = completion_ids.shape[1]
    head = model.get_output_embeddings()
    with _head_passthrough(model, head) as head_forward:
        if group_size > 1:
            G = group_size
            if prompt_ids.shape[0] % G:
                raise ValueError(f"completion_logprobs: {prompt_ids.shape[0]} rows are not whole groups of {G}")
            group_mask = prompt_mask[::G]
            first = model(
                input_ids=prompt_ids[::G], attention_mask=group_mask, position_ids=(group_mask.cumsum(1) - 1).clamp(min=0),
                use_cache=True, logits_to_keep=1,
            )
            cache = returned_cache(first)
            cache.batch_repeat_interleave(G)
            attention = torch.cat([prompt_mask, completion_mask], dim=1)
            positions = (attention.cumsum(dim=1) - 1).clamp(min=0)[:, -L:]
            rest = model(
                input_ids=completion_ids, attention_mask=attention, position_ids=positions, use_cache=True,
                logits_to_keep=L, **cache_kwargs(model, cache),
            ).logits
            hidden = torch.cat([first.logits[:, -1:].repeat_interleave(G, dim=0), rest[:, :-1]], dim=1)
        else:
            input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
            attention = torch.cat([prompt_mask, completion_mask], dim=1)
            positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
            # logits_to_keep=L+1: only the positions that predict completion tokens come out.
            hidden = model(input_ids=input_ids, attention_mask=attention, position_ids=positions, logits_to_keep=L + 1).logits
            hidden = hidden[:, :-1]
    vocab = getattr(head, "out_features", None) or model.config.vocab_size
    chunk_tokens = max(1, int(chunk_mib * 2**20 // (4 * vocab)))
    with head_gathered(model, head):  # FSDP: a frozen model's head shards gathered again after its forward
        return token_logprobs(
            head_forward, hidden, completion_ids, completion_mask.bool(), temperature, with_entropy, chunk_tokens, entropy_grad
        )


def token_logprobs(
    head_forward, hidden, token_ids, mask, temperature: float, with_entropy: bool, chunk_tokens: int, entropy_grad: bool = False
):
    """log p of ``token_ids`` [n, L] given final hidden states ``hidden`` [n, L, H], and the entropy.

    Only the positions where ``mask`` is true are projected, ``chunk_tokens`` positions at a time:

        logits = head(h) / T ;  log p = logits[token] − logsumexp(logits) ;  H = logsumexp − Σ softmax·logits

    With a gradient and more than one chunk, each chunk's logits are recomputed in the backward
    pass (activation checkpointing of the head), so at most one chunk of logits is alive at once.
    The entropy is detached unless ``entropy_grad``.
    """
    picked = mask.nonzero(as_tuple=True)
    h, ids = hidden[picked], token_ids[picked]
    chunks = [(i, min(i + chunk_tokens, ids.shape[0])) for i in range(0, ids.shape[0], chunk_tokens)]
    recompute = torch.is_grad_enabled() and hidden.requires_grad and len(chunks) > 1
    logps, entropies = [], []
    for a, b in chunks:
        if recompute:
            from torch.utils.checkpoint import checkpoint

            lp, ent = checkpoint(_chunk_logprobs, head_forward, h[a:b], ids[a:b], temperature, with_entropy, entropy_grad, use_reentrant=False)
        else:
            lp, ent = _chunk_logprobs(head_forward, h[a:b], ids[a:b], temperature, with_entropy, entropy_grad)
        logps.append(lp)
        entropies.append(ent)
    logp = hidden.new_zeros(token_ids.shape, dtype=torch.float32)
    logp = logp.index_put(picked, torch.cat(logps) if logps else logp.new_zeros(0))
    if not with_entropy:
        return logp, None
    entropy = hidden.new_zeros(token_ids.shape, dtype=torch.float32)
    entropy = entropy.index_put(picked, torch.cat(entropies) if entropies else entropy.new_zeros(0))
    return logp, entropy


def _chunk_logprobs(head_forward, h, ids, temperature: float, with_entropy: bool, entropy_grad: bool = False):
    logits = head_forward(h).float() / temperature
    log_norm = torch.logsumexp(logits, dim=-1)
    logp = logits.gather(-1, ids.unsqueeze(-1)).squeeze(-1) - log_norm
    entropy = None
    if with_entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):  # the entropy bonus needs its gradient
            entropy = log_norm - (torch.softmax(logits, dim=-1) * logits).sum(-1)
    return logp, entropy


class _head_passthrough:
    """Inside ``with``, the model's output head returns its input, so the model's forward yields
    the final hidden states (as ``.logits``); ``as`` gives the head's real forward (whatever was
    in place: a packed one under grpo/packed.py included).

    Models whose forward post-processes the logits (Gemma's ``final_logit_softcapping``, Cohere's
    ``logit_scale``) are left alone: their head's forward stays, ``.logits`` are real logits, and
    the forward given back is the identity, so nothing is chunked for them.
    """

    def __init__(self, model, head):
        config = getattr(model, "config", None)
        self.head = head
        self.passthrough = not (getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None))
        self._saved = None

    def __enter__(self):
        if not self.passthrough:
            return lambda x: x
        self._saved = self.head.__dict__.get("forward")
        real = self.head.forward
        self.head.forward = lambda x: x
        return real

    def __exit__(self, *exc):
        if not self.passthrough:
            return
        if self._saved is None:
            self.head.__dict__.pop("forward", None)
        else:
            self.head.forward = self._saved


@dataclass
class TrainResult:
    steps_done: int
    metrics: list[dict]
    final_dir: Path | None


class GRPOTrainer:
    """GRPO on a causal LM. ``rows`` are dataset rows whose ``prompt`` is the rendered model input;
    their other columns (``solution``, ``language``, …) are passed to the reward functions."""

    def __init__(
        self,
        model,
        tokenizer,
        rewards: list[RewardTerm],
        rows: list[dict],
        config: GRPOConfig,
        output_dir: str | Path,
        seed: int = 0,
        ref_model=None,
        precision: Precision | None = None,
        on_step=None,
        teacher=None,
        distributed: DistributedSettings | None = None,
        device: str | torch.device | None = None,
    ):
        """``distributed``: how several processes share the policy (ignored in one process);
        ``device``: where the policy trains (default: where ``model`` is; FSDP moves each rank's
        shards there, so a large model can arrive on the CPU)."""
        if not rewards:
            raise ValueError("rewards: at least one reward function is needed")
        self.config, self.tokenizer, self.rewards, self.rows = config, tokenizer, rewards, rows
        self.seed, self.output_dir = seed, Path(output_dir)
        # Precision (grpo/precision.py): by default the pure precision of the weights as loaded.
        self.precision = precision or precision_of_dtype(next(model.parameters()).dtype, "the model's dtype")
        self._check_precision(model)
        # on_step(step, metrics, samples): called on rank 0 after each step's lines are written
        # (experiment trackers, grpo/tracking.py); the step itself knows nothing of it.
        self.on_step = on_step
        torch.manual_seed(seed)  # LoRA initialisation draws from the global RNG
        self.model = self._prepare_model(model)
        self.device = torch.device(device) if device is not None else next(self.model.parameters()).device
        distributed = distributed or DistributedSettings()
        self.dist = DataParallel.from_environment(config, self.device, distributed)  # rank, world size, collectives
        self.dist.broadcast_parameters(self.model)  # every rank starts from rank 0's weights
        self.ref_model = self._prepare_reference(ref_model)
        # DDP / FSDP / one process; FSDP's MixedPrecisionPolicy from self.precision
        self.parallel = wrap_policy(self.model, self.ref_model, self.dist, distributed, self.device, self.precision)
        if self.ref_model is not None:
            # CPU: the frozen reference runs on prepacked oneDNN weights in the compute dtype, packed
            # once (grpo/packed.py); the copy we made keeps only the packed weights (no extra memory).
            # Not for FSDP shards.
            self.ref_packed = PackedLinears(self.ref_model, release=ref_model is None, dtype=self.precision.compute_dtype)
        self.teacher = self._prepare_teacher(teacher)  # on-policy distillation (grpo/distill.py), or None
        self.sampler = PromptSampler(len(rows), config.prompts_per_step, seed)
        # Rollouts multiply in the compute dtype (bf16 weights under bf16-mixed).
        self.engine = get_rollout_engine(config.rollout_engine, self.model, tokenizer, compute_dtype=self.precision.compute_dtype)
        differs = sampler_differs(config.rollout_engine, config.top_p, config.top_k, self.precision.compute_dtype,
                                  self.precision.param_dtype, self.precision.mixed)
        self.rollout_correction, self.rollout_correction_reason = resolve_rollout_correction(config.rollout_correction, differs)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            params, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2), weight_decay=config.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.step_done = 0
        self.nonfinite_steps = 0  # updates skipped for NaN/inf (training stops past max_nonfinite_steps)
        self.failing_steps = 0  # steps in which a reward failed on every row (on_reward_error: skip)
        self.reward_state = TrainerState(0, config.steps)  # what reward functions get as trainer_state
        self.num_tokens = 0  # cumulative prompt + completion tokens seen (TRL: num_tokens)

    # --- setup ----------------------------------------------------------------------------

    def _check_precision(self, model) -> None:
        dtype, p = next(model.parameters()).dtype, self.precision
        if dtype != p.param_dtype:
            raise ValueError(
                f"precision: {p.name} trains {str(p.param_dtype).removeprefix('torch.')} weights, but the model was loaded in "
                f"{str(dtype).removeprefix('torch.')}; load it with dtype={str(p.param_dtype).removeprefix('torch.')}"
            )
        if p.name == "bf16" and self.config.lora is None:  # (peft keeps LoRA adapters in float32)
            message = bf16_update_warning(model.parameters(), self.config.learning_rate)
            if message:
                warnings.warn(message, stacklevel=3)

    def _prepare_model(self, model):
        lora = self.config.lora
        if lora is not None:
            import warnings

            from peft import LoraConfig, get_peft_model

            with warnings.catch_warnings():
                # peft reads a property transformers 5 deprecated; nothing a user can act on.
                warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
                model = get_peft_model(
                    model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules)
                )
        if self.config.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            model.config.use_cache = False
        return model

    def _prepare_reference(self, ref_model):
        if self.config.beta == 0.0:
            return None  # no KL term: no reference forward, no copy in memory
        if self.config.lora is not None:
            return None  # the adapter-disabled model is the reference
        ours = ref_model is None
        if ours:
            ref_model = copy.deepcopy(self.model)
        ref_model.eval().requires_grad_(False)
        compute = self.precision.compute_dtype
        if ours and self.precision.mixed and not PackedLinears.supported(ref_model, compute):
            ref_model.to(compute)  # not packed (a GPU): a reference held in the compute dtype, half the memory
        return ref_model

    def precision_info(self) -> dict:
        """What ``precision.json`` in the run directory holds: the precision, the rollout correction, and why."""
        return {
            **self.precision.to_json(),
            "rollout_correction": self.rollout_correction,
            "rollout_correction_cap": self.config.rollout_correction_cap,
            "rollout_correction_reason": self.rollout_correction_reason,
        }

    def describe_precision(self) -> str:
        """The lines printed at the start of a run."""
        cap = f", cap {self.config.rollout_correction_cap:g}" if self.rollout_correction != "none" else ""
        return f"{self.precision.describe()}\nrollout_correction: {self.rollout_correction}{cap} — {self.rollout_correction_reason}"

    def _prepare_teacher(self, teacher):
        if teacher is None:
            return None
        if teacher.tokenizer is not None:  # its log-probabilities of our token ids must mean the same tokens
            check_same_vocabulary(self.tokenizer, teacher.tokenizer, teacher.model.get_output_embeddings().weight.shape[0])
        teacher.model.eval().requires_grad_(False)
        self.parallel.shard_frozen(teacher.model)  # FSDP: sharded like the reference
        self.teacher_packed = PackedLinears(teacher.model, dtype=self.precision.compute_dtype)  # (as the reference)
        return teacher

    def _lr_factor(self, opt_step: int) -> float:
        cfg = self.config
        total = cfg.steps * cfg.num_iterations
        if opt_step < cfg.warmup_steps:
            return (opt_step + 1) / (cfg.warmup_steps + 1)
        progress = (opt_step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
        if cfg.lr_scheduler == "linear":
            return max(0.0, 1.0 - progress)
        if cfg.lr_scheduler == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    # --- one GRPO step --------------------------------------------------------------------

    def step(self, step: int) -> tuple[dict, list[dict]]:
        """Run GRPO step ``step`` (1-based); returns its metrics and a sample of its completions."""
        cfg, G = self.config, self.config.group_size
        t0 = time.perf_counter()
        torch.manual_seed(step_seed(self.seed, step))
        self.reward_state = TrainerState(global_step=step - 1, max_steps=cfg.steps, epoch=self.sampler.epoch(step - 1))  # TRL's trainer_state
        batch_rows = [self.rows[i] for i in self.sampler.batch(step)]
        first, batch_rows = self.dist.shard(batch_rows)  # this rank's prompts (all of them in one process)

        # 1-2. Rollouts (G completions per prompt, grouped contiguously) and their rewards.
        rollout, expanded, scores, timing = self._rollout_and_score(batch_rows, step_seed(self.seed, step), first)
        refill = {}
        if cfg.dynamic_sampling:
            rollout, expanded, scores, refill = self._dynamic_sampling(step, rollout, expanded, scores, timing)
        rollout = rollout.to(self.device)  # (engines return CPU tensors)
        batch_scores = self.dist.gather_scores(scores)  # whole batch
        self._check_failing_rewards(step, batch_scores)
        rewards = torch.tensor(batch_scores.total, dtype=torch.float32)
        t_rollout = t0 + timing["rollout"]
        t_rewards = t_rollout + timing["rewards"]

        # 3. Which tokens get a gradient.
        loss_mask = rollout.completion_mask.clone()
        if cfg.mask_truncated_completions:
            loss_mask[rollout.truncated] = 0
        N, L = rollout.completion_ids.shape
        shape = BatchShape(
            num_sequences=N,
            num_tokens=int(loss_mask.sum()),
            num_micro_batches=cfg.gradient_accumulation_steps,
            max_completion_length=cfg.max_new_tokens,
        )
        micro = N // cfg.gradient_accumulation_steps
        if self.dist.active:  # the batch is every rank's rows: its sizes, and this rank's micro-batches
            shape, micro = self.dist.whole_batch_shape(shape, loss_mask)
        chunks = [slice(i, i + micro) for i in range(0, N, micro)]
        # Each prompt once per group in the forwards below, when micro-batches hold whole groups.
        shared = G if cfg.share_prompt and micro % G == 0 and not cfg.gradient_checkpointing else 1

        # 4. Log-probabilities that stay fixed during the μ passes (no grad), in the compute precision.
        kl_in_reward = cfg.beta != 0.0 and cfg.kl_in == "reward"
        kls = []
        with torch.no_grad(), self.precision.autocast(self.device):
            self.model.eval()
            old_logp = None
            # With μ = 1, π_old is π_θ itself (ratio 1, same gradient); kl_in: reward needs it before the advantages.
            if cfg.num_iterations > 1 or kl_in_reward:
                old_logp = torch.cat([self._logprobs(self.model, rollout, c, shared)[0] for c in chunks])
            ref_logp = None
            if cfg.beta != 0.0:
                ref_logp = torch.cat([self._reference_logprobs(rollout, c, shared) for c in chunks])
            teacher_logp = None
            if self.teacher is not None:  # the teacher scores every token the student sampled
                with self.teacher_packed:
                    teacher_logp = torch.cat(
                        [self._logprobs(self.teacher.model, rollout, c, shared)[0] for c in chunks]
                    )

        # 5. Group-relative advantages (of the whole batch; this rank keeps its rows). With kl_in:
        #    reward, of the rewards less β·Σ k1 (grpo/loss.py: kl_reward_penalty); the loss has no KL then.
        advantage_rewards = rewards
        if kl_in_reward:
            penalty = kl_reward_penalty(old_logp, ref_logp, rollout.completion_mask, cfg.beta)
            advantage_rewards = rewards - torch.tensor(self.dist.gather(penalty.cpu().tolist()), dtype=torch.float32)
            m = rollout.completion_mask.float()
            kls.append((float(((old_logp - ref_logp) * m).sum() / m.sum().clamp(min=1)), int(m.sum())))
        per_reward = weights = None
        if cfg.advantage_estimator in PER_REWARD_ESTIMATORS:  # e.g. gdpo: each reward normalised on its own
            per_reward = torch.tensor([batch_scores.per_reward[t.name] for t in self.rewards], dtype=torch.float32).T
            weights = torch.tensor([t.weight for t in self.rewards], dtype=torch.float32)
        advantages, adv_stats = compute_advantages(
            advantage_rewards, G, cfg.advantage_estimator, cfg.reward_std_eps, per_reward, weights
        )
        advantages = self.dist.local(advantages).to(self.device)

        # 6. μ optimisation passes over this batch of rollouts.
        self.model.train()
        losses, clip = [], {"low": [], "high": [], "region": []}
        entropies, grad_norms, distill_kl = [], [], []
        entropy_bonus = cfg.entropy_coef != 0.0  # then every micro-batch needs the entropy, with its graph
        agreement: dict = {"weights": {}, "kl": [], "max_abs": [], "stats": []}  # sampler vs trainer, per micro-batch
        for _ in range(cfg.num_iterations):
            self.optimizer.zero_grad(set_to_none=True)
            pass_loss = 0.0
            for k, c in enumerate(chunks):
                self.parallel.sync_gradients(k == len(chunks) - 1)  # DDP: gradients summed in the last backward only
                with self.precision.autocast(self.device):  # bf16-mixed: bf16 matmuls; log-softmax and loss in float32
                    logp, entropy = self.parallel.forward(
                        self._logprobs, rollout, c, shared, with_entropy=entropy_bonus or not entropies, entropy_grad=entropy_bonus
                    )
                if k not in agreement["weights"]:  # π_old is fixed for the μ passes: weights once per micro-batch
                    agreement["weights"][k] = self._sampler_agreement(rollout, c, logp if old_logp is None else old_logp[c], agreement)
                chunk_advantages = advantages[c]
                if teacher_logp is not None:  # per-token: −λ_KL·(log π_old − log π_T − r̄) + λ_R·A_i
                    sampler_logp = logp if old_logp is None else old_logp[c]
                    chunk_advantages = reverse_kl_advantages(
                        sampler_logp, teacher_logp[c], loss_mask[c], advantages[c],
                        self.teacher.kl_weight, self.teacher.reward_weight, self.teacher.baseline,
                    )
                    m = rollout.completion_mask[c].float()
                    distill_kl.append((((reverse_kl(sampler_logp.detach(), teacher_logp[c]) * m).sum() / m.sum().clamp(min=1)).item(), int(m.sum())))
                loss, stats = policy_loss(
                    logp,
                    None if old_logp is None or cfg.num_iterations == 1 else old_logp[c],
                    chunk_advantages,
                    loss_mask[c],
                    policy=cfg.policy_loss,
                    epsilon_low=cfg.epsilon_low,
                    epsilon_high=cfg.epsilon_high,
                    sapo_temperature_pos=cfg.sapo_temperature_pos,
                    sapo_temperature_neg=cfg.sapo_temperature_neg,
                    ref_logp=None if ref_logp is None or kl_in_reward else ref_logp[c],
                    beta=0.0 if kl_in_reward else cfg.beta,
                    kl_estimator=cfg.kl_estimator,
                    entropy=entropy,
                    entropy_coef=cfg.entropy_coef,
                    aggregation=cfg.loss_aggregation,
                    batch=shape,
                    rollout_weights=agreement["weights"][k],
                )
                loss.backward()
                pass_loss += loss.item()
                if stats.kl is not None:
                    kls.append((stats.kl, stats.num_tokens))
                for key in clip:
                    clip[key].append((getattr(stats, f"clip_{key}"), stats.num_tokens))
                if entropy is not None and not entropies:  # logged from the first micro-batch
                    m = rollout.completion_mask[c].float()
                    entropies.append((((entropy.detach() * m).sum() / m.sum().clamp(min=1)).item(), int(m.sum())))
            # The gradients are the whole batch's already: the engine summed the ranks' shares in the backward.
            params = [p for p in self.model.parameters() if p.requires_grad]
            pass_loss = self.dist.sum(pass_loss)  # whole batch
            max_norm = cfg.max_grad_norm if cfg.max_grad_norm is not None else float("inf")
            grad_norm = self.parallel.clip_grad_norm(params, max_norm)
            if not (math.isfinite(pass_loss) and math.isfinite(grad_norm)):
                # A NaN/inf would poison the weights and Adam's moments: skip this update, count it.
                self.optimizer.zero_grad(set_to_none=True)
                self.nonfinite_steps += 1
                if self.nonfinite_steps > cfg.max_nonfinite_steps:
                    raise FloatingPointError(
                        f"step {step}: {self.nonfinite_steps} optimiser steps had a non-finite loss or gradient "
                        f"(max_nonfinite_steps={cfg.max_nonfinite_steps}); lower the learning rate or check the rewards"
                    )
                continue
            grad_norms.append(grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            losses.append(pass_loss)
        t_end = time.perf_counter()

        # 7. Metrics, named as TRL names them where it has a name (of the whole batch).
        sample = self._completion_sample(step, expanded, rollout, scores, advantages)  # this rank's rows of it
        whole = self.dist.gather_lists({  # whole batch: every per-row figure below, in one exchange
            "kl": kls, **{f"clip_{k}": v for k, v in clip.items()}, "entropy": entropies[:1], "distill_kl": distill_kl,
            "lengths": rollout.lengths.tolist(), "truncated": rollout.truncated.tolist(),
            "prompt_tokens": [int(rollout.prompt_mask.sum())], "sample": sample,
            "memory": [state_memory(self.model, self.optimizer)],
            **{f"mismatch_{k}": agreement[k] for k in ("kl", "max_abs", "stats")},
        })
        kls, clip = whole["kl"], {k: whole[f"clip_{k}"] for k in clip}
        agreement = {k: whole[f"mismatch_{k}"] for k in ("kl", "max_abs", "stats")}
        lengths = torch.tensor(whole["lengths"], dtype=torch.float32)
        truncated = torch.tensor(whole["truncated"], dtype=torch.float32)
        completion_tokens = int(lengths.sum())
        self.num_tokens += sum(whole["prompt_tokens"]) + completion_tokens
        metrics = {
            "step": step,
            "epoch": round(self.sampler.epoch(step), 4),
            "reward": rewards.mean().item(),
            "reward_std": adv_stats.reward_std,
            "frac_reward_zero_std": adv_stats.frac_reward_zero_std,
        }
        for term in self.rewards:
            metrics[f"rewards/{term.name}/mean"] = batch_scores.mean(term.name)
            metrics[f"rewards/{term.name}/std"] = batch_scores.std(term.name)
        metrics.update(batch_scores.extra_metrics)
        metrics.update(refill)
        if kls:
            metrics["kl"] = _weighted_mean(kls)
        if kl_in_reward:
            metrics["kl_penalty"] = float((rewards - advantage_rewards).mean())
        if agreement["kl"]:
            metrics["mismatch/kl"] = _weighted_mean(agreement["kl"])
            metrics["mismatch/max_abs_logp"] = max(agreement["max_abs"])
        for key in sorted({k for stats, _ in agreement["stats"] for k in stats}):
            metrics[key] = _weighted_mean([(stats[key], n) for stats, n in agreement["stats"] if key in stats])
        if whole["distill_kl"]:  # mean per-token reverse KL(student ‖ teacher) on the sampled tokens
            metrics["distill/reverse_kl"] = _weighted_mean(whole["distill_kl"])
        metrics.update(
            {
                "loss": sum(losses) / len(losses) if losses else None,
                "clip_ratio/low_mean": _weighted_mean(clip["low"]),
                "clip_ratio/high_mean": _weighted_mean(clip["high"]),
                "clip_ratio/region_mean": _weighted_mean(clip["region"]),
                "entropy": self.dist.first_micro_batch_mean(whole["entropy"], cfg.gradient_accumulation_steps),
                "grad_norm": sum(grad_norms) / len(grad_norms) if grad_norms else None,
                "nonfinite_skipped": self.nonfinite_steps,
                "learning_rate": self.scheduler.get_last_lr()[0],
                "completions/mean_length": lengths.mean().item(),
                "completions/max_length": lengths.max().item(),
                "completions/min_length": lengths.min().item(),
                "completions/clipped_ratio": truncated.mean().item(),
                "num_tokens": self.num_tokens,
                "step_time": t_end - t0,
                "tokens_per_second": completion_tokens / (t_end - t0),
                "timing/rollout": t_rollout - t0,
                "timing/rewards": t_rewards - t_rollout,
                "timing/train": t_end - t_rewards,
                # per rank, the largest over the ranks: what FSDP divides by N
                **{key: max(m[key] for m in whole["memory"]) for key in whole["memory"][0]},
            }
        )
        return metrics, whole["sample"]

    def _rollout_and_score(self, batch_rows: list[dict], seed: int, first: int = 0):
        """G completions for each row and their rewards (every dataset column repeated per group).
        Prompt ``i`` of the batch samples with seed ``row_seed(seed, i)``; ``batch_rows`` start at
        prompt ``first`` of the batch (a rank's share)."""
        cfg, G = self.config, self.config.group_size
        t0 = time.perf_counter()
        sampling = SamplingParams(G, cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.top_k)
        seeds = [row_seed(seed, first + i) for i in range(len(batch_rows))]
        with self.parallel.generation(self.engine):  # FSDP: every layer gathered for the rollout, resharded after
            rollout = self.engine.generate([r["prompt"] for r in batch_rows], sampling, seeds=seeds)
        t1 = time.perf_counter()
        expanded = [r for r in batch_rows for _ in range(G)]
        prompts, completions, columns = reward_inputs(expanded, rollout.texts, rollout.completion_id_lists)
        scores = score_completions(self.rewards, prompts, completions, columns, cfg.on_reward_error, state=self.reward_state)
        return rollout, expanded, scores, {"rollout": t1 - t0, "rewards": time.perf_counter() - t1}

    def _check_failing_rewards(self, step: int, scores: Scores) -> None:
        """``on_reward_error: skip``: a reward that failed on every row of this step is a warning
        with its first error; in ``max_failing_steps`` such steps the run stops."""
        failing = {name: f for name, f in scores.failures.items() if f.all_failed}
        if not failing:
            return
        self.failing_steps += 1
        cfg = self.config
        for name, f in failing.items():
            if self.dist.is_main:
                from tqdm.auto import tqdm

                tqdm.write(
                    f"warning: step {step}: reward {name!r} failed on all {f.scored} rows it scored (on_reward_error: skip, "
                    f"scored as None; {self.failing_steps} of max_failing_steps={cfg.max_failing_steps}); first error: {f.first_error}",
                    file=sys.stderr,
                )
        if self.failing_steps >= cfg.max_failing_steps:
            name, f = next(iter(failing.items()))
            raise RewardError(
                f"step {step}: a reward failed on every row in {self.failing_steps} steps "
                f"(grpo.max_failing_steps={cfg.max_failing_steps}; on_reward_error: skip): {f.first_error}"
            )

    def _dynamic_sampling(self, step, rollout, expanded, scores, timing):
        """DAPO's dynamic sampling: keep only groups whose rewards differ, refilling with new prompts.

        Each extra round samples ``prompts_per_step`` more prompts (drawn from a permutation seeded
        by (seed, step, round), so a resumed run draws the same ones), up to
        ``dynamic_sampling_max_rounds`` rounds. The batch keeps its size: when the bound is hit,
        the remaining places are filled with equal-reward groups, which carry zero advantage.
        """
        cfg, G, B = self.config, self.config.group_size, self.config.prompts_per_step
        parts = [(rollout, expanded, scores)]

        def informative(part_scores):
            totals = torch.tensor(part_scores.total, dtype=torch.float32)
            return (~zero_std_groups(totals, G)).tolist()

        flags = [informative(scores)]
        rounds = 0
        while sum(sum(f) for f in flags) < B and rounds < cfg.dynamic_sampling_max_rounds:
            rounds += 1
            sampler = PromptSampler(len(self.rows), B, step_seed(self.seed, step) + 7_777 * rounds)
            extra = self._rollout_and_score([self.rows[i] for i in sampler.batch(1)], sampler.seed)
            timing["rollout"] += extra[3]["rollout"]
            timing["rewards"] += extra[3]["rewards"]
            parts.append(extra[:3])
            flags.append(informative(extra[2]))
        ranked = [(p, g) for p, f in enumerate(flags) for g, ok in enumerate(f) if ok]
        ranked += [(p, g) for p, f in enumerate(flags) for g, ok in enumerate(f) if not ok]
        chosen = ranked[:B]
        picked = []
        for p, (part_rollout, part_rows, part_scores) in enumerate(parts):
            groups = [g for q, g in chosen if q == p]
            if groups:
                rows = [g * G + j for g in groups for j in range(G)]
                picked.append((part_rollout.select(rows), [part_rows[i] for i in rows], part_scores.select(rows)))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        merged = concat_rollouts([r for r, _, _ in picked], pad)
        stats = {
            "dynamic_sampling/rounds": rounds,
            "dynamic_sampling/refill_prompts": rounds * B,
            "dynamic_sampling/informative_groups": sum(1 for p, g in chosen if flags[p][g]) / B,
        }
        return merged, [r for _, rows, _ in picked for r in rows], Scores.concat([s for _, _, s in picked]), stats

    def _logprobs(self, model, rollout: Rollout, rows: slice, group_size: int, with_entropy: bool = False, entropy_grad: bool = False):
        return completion_logprobs(model, rollout, rows, self.config.temperature, with_entropy=with_entropy,
                                   group_size=group_size, chunk_mib=self.config.logits_chunk_mib, entropy_grad=entropy_grad)

    def _reference_logprobs(self, rollout: Rollout, rows: slice, group_size: int) -> torch.Tensor:
        if self.ref_model is not None:
            with self.ref_packed:
                return self._logprobs(self.ref_model, rollout, rows, group_size)[0]
        with self.model.disable_adapter():  # LoRA: the frozen base is the reference
            return self._logprobs(self.model, rollout, rows, group_size)[0]

    def _sampler_agreement(self, rollout: Rollout, rows: slice, old_logp: torch.Tensor, out: dict) -> torch.Tensor | None:
        """Compare the engine's log-probs of these rows with the trainer's π_old (``mismatch/*``) and
        return their rollout-correction weights (None: no correction); stats are appended to ``out``."""
        sampler = rollout.sampling_logprobs
        if sampler is None:
            if self.rollout_correction != "none" and self.config.rollout_correction != "auto":
                raise ValueError(
                    f"rollout_correction: {self.rollout_correction} needs the sampler's log-probs, and rollout_engine "
                    f"{self.config.rollout_engine!r} returns none; use rollout_correction: none"
                )
            return None
        mask = rollout.completion_mask[rows]
        kl, max_abs, n = mismatch_stats(old_logp, sampler[rows], mask)
        out["kl"].append((kl, n))
        out["max_abs"].append(max_abs)
        if self.rollout_correction == "none":
            return None
        weights, stats = rollout_correction_weights(old_logp, sampler[rows], mask, self.rollout_correction, self.config.rollout_correction_cap)
        out["stats"].append((stats, n))
        return weights

    def _completion_sample(self, step, expanded, rollout, scores, advantages) -> list[dict]:
        # Rows picked evenly over the whole batch; each rank writes up those it holds (gathered by the caller).
        n, first = len(expanded) * self.dist.world_size, len(expanded) * self.dist.rank
        k = min(self.config.log_completions, n)
        picks = sorted({round(i * n / k) for i in range(k)}) if k else []
        out = []
        for i in [i - first for i in picks if first <= i < first + len(expanded)]:
            out.append(
                {
                    "step": step,
                    "prompt": expanded[i]["prompt"],
                    "completion": rollout.texts[i],
                    "solution": expanded[i].get("solution"),
                    "rewards": {name: (None if math.isnan(v[i]) else v[i]) for name, v in scores.per_reward.items()},
                    "reward": scores.total[i],
                    "advantage": advantages[i].item(),
                    "length": int(rollout.lengths[i]),
                    "truncated": bool(rollout.truncated[i]),
                    **({"extra": {k: _jsonable(v[i]) for k, v in scores.extra_columns.items()}} if scores.extra_columns else {}),
                }
            )
        return out

    # --- the loop -------------------------------------------------------------------------

    def train(self, resume: bool = False) -> TrainResult:
        """Train ``config.steps`` steps, resuming from the last complete checkpoint when asked."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        metrics_path = self.output_dir / "metrics.jsonl"
        samples_path = self.output_dir / "completions.jsonl"
        if resume:
            self.step_done = self.load_last_checkpoint()
        elif self.checkpoints():
            raise FileExistsError(f"{self.output_dir} already holds checkpoints; resume it or choose another output_dir")
        # Lines past the checkpoint were written by the interrupted run: they will be redone.
        history = [r for r in read_jsonl(metrics_path) if r["step"] <= self.step_done]
        samples = [r for r in read_jsonl(samples_path) if r["step"] <= self.step_done]
        main = self.dist.is_main  # only rank 0 writes files; the others compute the same metrics
        if main:
            _rewrite_jsonl(metrics_path, history)
            _rewrite_jsonl(samples_path, samples)
            self.check_disk_space()
            atomic_write_json(self.output_dir / "precision.json", self.precision_info())
        if history:
            self.num_tokens = history[-1]["num_tokens"]

        cfg = self.config
        bar = _progress(cfg.steps, self.step_done, enabled=cfg.progress and main)
        for step in range(self.step_done + 1, cfg.steps + 1):
            metrics, sample = self.step(step)
            if main:
                for row in sample:
                    append_jsonl(samples_path, row)
                append_jsonl(metrics_path, metrics)
                if self.on_step is not None:
                    self.on_step(step, metrics, sample)
            history.append(metrics)
            self.step_done = step
            if step % cfg.save_every == 0 or step == cfg.steps:
                self.save_checkpoint(step)  # every rank writes its shards
                if main and step != cfg.steps:  # the final plot is drawn once, after the loop
                    self._plot(history)
            bar.update(1)
            bar.set_postfix(
                reward=f"{metrics['reward']:.3f}",
                kl=f"{metrics.get('kl', 0.0):.4f}",
                len=f"{metrics['completions/mean_length']:.0f}",
                tok_s=f"{metrics['tokens_per_second']:.0f}",
            )
        bar.close()
        self.save_final_model()  # gathered once onto rank 0, which writes it
        if main:
            self._plot(history)
        self.dist.barrier()  # the final model is complete when any rank returns
        return TrainResult(self.step_done, history, self.output_dir / "final")

    def _plot(self, history: list[dict]) -> None:
        if history:
            from grpo.plots import plot_training_curves

            plot_training_curves(history, self.output_dir / "curves.png", title=self.output_dir.name)

    # --- checkpoints ----------------------------------------------------------------------

    def checkpoint_bytes(self) -> tuple[int, int]:
        """Rough sizes of one checkpoint and of the final model, in bytes.

        A checkpoint holds the trainable weights and AdamW's two moments of each (3 × their bytes);
        the final model holds every weight once.
        """
        trainable = sum(p.numel() * p.element_size() for p in self.model.parameters() if p.requires_grad)
        every = sum(p.numel() * p.element_size() for p in self.model.parameters())
        return 3 * trainable, every

    def check_disk_space(self) -> None:
        """Fail before step 1, with the numbers, when the output directory clearly cannot hold a
        checkpoint and the final model (``StorageError``)."""
        checkpoint, final = self.checkpoint_bytes()
        check_free_space(self.output_dir, checkpoint + final, "a checkpoint (trainable weights + 2 AdamW moments) and the final model")

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first (a directory exists only once fully written)."""
        root = self.output_dir / "checkpoints"
        if not root.is_dir():
            return []
        return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / "trainer_state.json").exists())

    def save_checkpoint(self, step: int) -> Path:
        """Trainable weights and AdamW state (``state/``: torch.distributed.checkpoint, every rank
        writing its own shards), RNG state (``rng.pt``), learning-rate schedule and step
        (``trainer_state.json``). Atomic: rank 0 renames the directory into place once every
        rank's files are in it. Every rank calls this."""
        path = self.output_dir / "checkpoints" / f"step-{step:06d}"
        main = self.dist.is_main
        if main:
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # pause_point: a test hook, inert unless GRPO_TEST_PAUSE_IN=checkpoint_write (tests/test_kill.py)
            with atomic_directory(path, pause_point="checkpoint_write") if main else nullcontext() as tmp:
                tmp = Path(self.dist.broadcast_object(str(tmp) if main else None))  # rank 0 has made it
                self.parallel.save(tmp / "state", self.optimizer)  # returns once every rank's shards are written
                if main:
                    torch.save({"torch": torch.get_rng_state(), "python": random.getstate()}, tmp / "rng.pt")
                    (tmp / "trainer_state.json").write_text(json.dumps({
                        "step": step, "num_tokens": self.num_tokens, "nonfinite_steps": self.nonfinite_steps,
                        "failing_steps": self.failing_steps, "seed": self.seed,
                        "scheduler": self.scheduler.state_dict(), "world_size": self.dist.world_size, "strategy": self.parallel.strategy,
                    }))
        except StorageError as exc:
            last = self.checkpoints()
            kept = f"the last complete checkpoint, {last[-1].name}, is intact: free some space and resume with --resume" if last else "there is no earlier checkpoint"
            raise StorageError(f"checkpoint of step {step} not written: no space left on the device in '{path.parent}'; {kept}") from exc
        self.dist.barrier()  # the checkpoint is in place when any rank goes on
        if main:
            for old in self.checkpoints()[: -self.config.keep_checkpoints]:
                shutil.rmtree(old)
        return path

    def load_last_checkpoint(self) -> int:
        """Restore the newest complete checkpoint, whatever number of processes wrote it; returns
        its step (0 when there is none). Every rank calls this."""
        found = self.checkpoints()
        name = self.dist.broadcast_object(found[-1].name if found else None)  # rank 0's choice, on every rank
        if name is None:
            return 0
        path = self.output_dir / "checkpoints" / name
        if not (path / "state").is_dir():
            raise ValueError(f"checkpoint {path} has no state/ directory (an earlier trainer wrote model.safetensors + optimizer.pt); "
                             "start a new run or resume it with the version that wrote it")
        self.parallel.load(path / "state", self.optimizer)
        state = json.loads((path / "trainer_state.json").read_text())
        self.scheduler.load_state_dict(state["scheduler"])
        rng = torch.load(path / "rng.pt", weights_only=True)
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        self.num_tokens = state["num_tokens"]
        self.nonfinite_steps = state.get("nonfinite_steps", 0)
        self.failing_steps = state.get("failing_steps", 0)
        return int(state["step"])

    def save_final_model(self) -> Path:
        """A plain Hugging Face model directory (LoRA merged) that later stages load by path. The
        weights are gathered once onto rank 0, which writes it; every rank calls this."""
        path = self.output_dir / "final"
        state = self.parallel.full_state_dict()
        if self.dist.is_main:
            base = self.model.get_base_model() if self.config.lora is not None else self.model
            with atomic_directory(path) as tmp:
                base.save_pretrained(tmp, state_dict=state, safe_serialization=True)
                self.tokenizer.save_pretrained(tmp)
        return path


def _jsonable(value):
    """``value`` if JSON can hold it, else its text (what a reward logged with log_extra)."""
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return str(value)


def _weighted_mean(pairs: list[tuple[float, int]]) -> float:
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total if total else 0.0


def _rewrite_jsonl(path: Path, rows: list[dict]) -> None:
    from grpo.io import atomic_write_text

    if rows or path.exists():
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc="grpo", unit="step", dynamic_ncols=True)
