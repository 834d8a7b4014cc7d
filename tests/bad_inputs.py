"""Every bad input the error tests try, in one place: one table per group, counted by test_error_count.

A case says how to make the bad input (``make``; its meaning depends on the group, see the test
module that runs the group), the distinctive part of the message expected (``expect``) and what
the message must name so the user can find the problem (``names``: a key path, a file, a row, a
model). Every message must also be one line. Cases with ``warn=True`` are survivable inputs: a
warning or a printed count, and the run goes on.

    group     run by                          make
    recipe    tests/test_errors_recipe.py     (recipe dict, Ctx) -> recipe dict, or the YAML text
    stages    tests/test_errors_recipe.py     (recipe dict with stages, Ctx) -> recipe dict
    data      tests/test_errors_data.py       Ctx -> the data.train value
    model     tests/test_errors_model.py      Ctx -> the model value
    reward    tests/test_faults.py            a reward function that breaks its contract
    storage   tests/test_faults.py            (documented in the test; make is None)
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

ARITH = {"max_value": 9, "ops": "+"}


@dataclass(frozen=True)
class Case:
    group: str
    id: str
    expect: str  # distinctive part of the message
    names: tuple[str, ...]  # what the message must name (field, file, row, model); "{tmp}" = the test's tmp dir
    make: Callable | None = None
    argv: tuple[str, ...] = ()  # extra command-line arguments (--set ...)
    command: tuple[str, ...] = ("train",)
    warn: bool = False  # survivable: a warning with a count, not an error

    def __repr__(self) -> str:  # pytest ids
        return f"{self.group}:{self.id}"


@dataclass
class Ctx:
    tmp: Path
    model: str  # the tiny model directory

    def write(self, name: str, text: str | bytes) -> str:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
        return str(path)


# --------------------------------------------------------------------------- recipe


def base_recipe(ctx: Ctx) -> dict:
    return {
        "name": "bad",
        "model": ctx.model,
        "seed": 0,
        "output_dir": str(ctx.tmp / "run"),
        "data": {"train": {"source": "synthetic:arithmetic", "size": 8, "options": dict(ARITH)}},
        "template": {"kind": "chat"},
        "rewards": {"accuracy": 1.0, "format": 0.5},
        "grpo": {"steps": 1, "prompts_per_step": 2, "group_size": 4, "max_new_tokens": 4, "save_every": 100, "progress": False},
    }


def _set(path: str, value: Any) -> Callable:
    """An edit that sets (or, with value=DELETE, removes) a dotted key of the recipe."""

    def edit(recipe: dict, ctx: Ctx) -> dict:
        *parents, last = path.split(".")
        node = recipe
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        if value is DELETE:
            del node[last]
        else:
            node[last] = value(ctx) if callable(value) else value
        return recipe

    return edit


DELETE = object()

USER_REWARDS = "THRESHOLD = 0.5\n\ndef brevity(prompts, completions, *, limit=5, **kwargs):\n    return [1.0] * len(completions)\n"


def _user_module(name: str, text: str) -> Callable:
    """The recipe names a reward in a module written (into the test's tmp dir, on sys.path) first."""

    def edit(recipe: dict, ctx: Ctx) -> dict:
        ctx.write(f"{name}.py", text)
        return recipe

    return edit


def _both(*edits: Callable) -> Callable:
    def edit(recipe: dict, ctx: Ctx) -> dict:
        for e in edits:
            recipe = e(recipe, ctx)
        return recipe

    return edit


R = "recipe"
RECIPE_CASES = [
    Case(R, "not_yaml", "not valid YAML (line 2, column 6): expected ',' or ']', but got ':'", ("r.yaml",), lambda r, c: "name: [unclosed\nmodel: x\n"),
    Case(R, "top_level_list", "expected a mapping of recipe keys at the top level, got list", ("r.yaml",), lambda r, c: "- name\n- data\n"),
    Case(R, "empty_file", "the recipe is empty; expected a mapping with at least name and data", ("r.yaml",), lambda r, c: ""),
    Case(R, "missing_file", "recipe file '{tmp}/nowhere.yaml' does not exist", ("nowhere.yaml",), None),
    Case(R, "unknown_top_key", "modle: unknown key; did you mean 'model'?", ("modle",), _set("modle", "x")),
    Case(R, "unknown_grpo_key", "grpo.group_sise: unknown key; did you mean 'group_size'?", ("grpo.group_sise",), _set("grpo.group_sise", 4)),
    Case(R, "unknown_data_key", "data.train.sorce: unknown key; did you mean 'source'?", ("data.train.sorce",), _set("data.train.sorce", "x.jsonl")),
    Case(R, "unknown_template_key", "template.sytem: unknown key; did you mean 'system'?", ("template.sytem",), _set("template.sytem", "Be brief.")),
    Case(R, "int_as_text", "grpo.steps: expected an integer, got 'three'", ("grpo.steps",), _set("grpo.steps", "three")),
    Case(R, "float_as_text", "grpo.learning_rate: expected a number, got 'fast'", ("grpo.learning_rate",), _set("grpo.learning_rate", "fast")),
    Case(R, "bool_as_text", "grpo.mask_truncated_completions: expected true or false, got 'sometimes'", ("grpo.mask_truncated_completions",),
         _set("grpo.mask_truncated_completions", "sometimes")),
    Case(R, "section_not_mapping", "grpo: expected a mapping, got 5", ("grpo",), _set("grpo", 5)),
    Case(R, "list_as_text", "grpo.lora.target_modules: expected a list of a string, got 'q_proj'", ("grpo.lora.target_modules",),
         _set("grpo.lora", {"target_modules": "q_proj"})),
    Case(R, "missing_name", "name: required key is missing", ("name",), _set("name", DELETE)),
    Case(R, "missing_data", "data: required key is missing", ("data",), _set("data", DELETE)),
    Case(R, "missing_source", "data.train.source: required key is missing", ("data.train.source",), _set("data.train", {"size": 3})),
    Case(R, "literal_choice", "grpo.kl_estimator: expected one of 'k1', 'k2', 'k3', got 'k4'", ("grpo.kl_estimator",), _set("grpo.kl_estimator", "k4")),
    Case(R, "registry_choice", "grpo.advantage_estimator: expected one of 'grpo', 'dr_grpo', 'batch_std', 'rloo', 'reinforce_pp', 'gdpo', got 'grpoo'",
         ("grpo.advantage_estimator",), _set("grpo.advantage_estimator", "grpoo")),
    Case(R, "policy_loss_choice", "grpo.policy_loss: expected one of 'clip', 'gspo', 'cispo', 'sapo', got 'gpso'", ("grpo.policy_loss",),
         _set("grpo.policy_loss", "gpso")),
    Case(R, "sapo_temperature", "grpo.sapo_temperature_neg: must be > 0, got 0.0", ("grpo.sapo_temperature_neg",), _set("grpo.sapo_temperature_neg", 0)),
    Case(R, "template_kind", "template.kind: unknown template 'chatt'; known templates: chat, plain, r1", ("template.kind",), _set("template.kind", "chatt")),
    Case(R, "group_size_1", "grpo.group_size: must be ≥ 2 (the group mean is the baseline), got 1", ("grpo.group_size",), _set("grpo.group_size", 1)),
    Case(R, "batch_not_divisible", "grpo.gradient_accumulation_steps: must divide prompts_per_step × group_size = 8, got 3",
         ("grpo.gradient_accumulation_steps",), _set("grpo.gradient_accumulation_steps", 3)),
    Case(R, "steps_zero", "grpo.steps: must be ≥ 1, got 0", ("grpo.steps",), _set("grpo.steps", 0)),
    Case(R, "temperature_zero", "grpo.temperature: must be > 0, got 0.0", ("grpo.temperature",), _set("grpo.temperature", 0)),
    Case(R, "on_reward_error", "grpo.on_reward_error: expected one of 'fail', 'skip', got 'ignore'", ("grpo.on_reward_error",),
         _set("grpo.on_reward_error", "ignore")),
    Case(R, "dtype", "dtype: expected one of float32, bfloat16, float16, auto, got 'float8'", ("dtype",), _set("dtype", "float8")),
    Case(R, "precision", "precision: expected one of 'auto', 'fp32', 'bf16-mixed', 'bf16', got 'bf16_mixed'; did you mean 'bf16-mixed'?",
         ("precision",), _set("precision", "bf16_mixed")),
    Case(R, "k1_in_loss", "grpo.kl_estimator: 'k1' in the loss has zero expected gradient", ("grpo.kl_estimator",),
         _set("grpo.kl_estimator", "k1")),
    Case(R, "device", "device: expected auto, cpu, cuda, cuda:<index> or mps, got 'gpu0'", ("device",), _set("device", "gpu0")),
    Case(R, "size_zero", "data.train.size: must be ≥ 1 (or null for all rows), got 0", ("data.train.size",), _set("data.train.size", 0)),
    Case(R, "options_without_synthetic", "data.train.options: only used with synthetic:<task> sources", ("data.train.options",),
         _set("data.train", {"source": "x.jsonl", "options": {"max_value": 3}})),
    Case(R, "no_rewards", "rewards: at least one reward function is needed", ("rewards",), _set("rewards", {})),
    Case(R, "unknown_reward", "rewards.accurcy: unknown reward 'accurcy'; did you mean 'accuracy'?", ("rewards.accurcy",),
         _set("rewards", {"accurcy": 1.0})),
    Case(R, "reward_module_missing", "rewards.no_such_module_xyz:fn: cannot import module 'no_such_module_xyz'", ("rewards.no_such_module_xyz:fn",),
         _set("rewards", {"no_such_module_xyz:fn": 1.0})),
    Case(R, "reward_module_fails_on_import", "rewards.broken_rewards:fn: cannot import module 'broken_rewards': RuntimeError: half-written module",
         ("rewards.broken_rewards:fn",),
         _both(_user_module("broken_rewards", "raise RuntimeError('half-written module')\n"), _set("rewards", {"broken_rewards:fn": 1.0}))),
    Case(R, "reward_attribute_missing", "module 'my_rewards' has no attribute 'brevty'", ("rewards.my_rewards:brevty",),
         _both(_user_module("my_rewards", USER_REWARDS), _set("rewards", {"my_rewards:brevty": 1.0}))),
    Case(R, "reward_not_callable", "'my_rewards:THRESHOLD' is not callable (it is a float)", ("rewards.my_rewards:THRESHOLD",),
         _both(_user_module("my_rewards", USER_REWARDS), _set("rewards", {"my_rewards:THRESHOLD": 1.0}))),
    Case(R, "reward_param_typo", "rewards.my_rewards:brevity.limt: unknown parameter; did you mean 'limit'?", ("rewards.my_rewards:brevity.limt",),
         _both(_user_module("my_rewards", USER_REWARDS), _set("rewards", {"my_rewards:brevity": {"weight": 1.0, "limt": 3}}))),
    Case(R, "builtin_param_typo", "rewards.accuracy.fallbak: unknown parameter; did you mean 'fallback'? parameters: gold_column, answer_extraction, fallback",
         ("rewards.accuracy.fallbak",), _set("rewards", {"accuracy": {"weight": 1.0, "fallbak": "last_number"}})),
    Case(R, "required_param_missing", "rewards.reward_model.model: required parameter is missing", ("rewards.reward_model.model",),
         _set("rewards", {"reward_model": 1.0})),
    Case(R, "weight_text", "rewards.format: expected a number or a mapping, got 'lots'", ("rewards.format",), _set("rewards.format", "lots")),
    Case(R, "weight_in_mapping_text", "rewards.format.weight: expected a finite number, got 'heavy'", ("rewards.format.weight",),
         _set("rewards.format", {"weight": "heavy"})),
    Case(R, "weight_nan", "rewards.format: expected a finite number (the weight) or a mapping, got nan", ("rewards.format",),
         _set("rewards.format", math.nan)),
    Case(R, "weight_bool", "rewards.format.weight: expected a finite number, got True", ("rewards.format.weight",),
         _set("rewards.format", {"weight": True})),
    Case(R, "when_not_mapping", "rewards.accuracy.when: expected a mapping of column: value, got 'reasoning'", ("rewards.accuracy.when",),
         _set("rewards.accuracy", {"weight": 1.0, "when": "reasoning"})),
    Case(R, "set_without_value", "--set grpo.steps: expected key=value, e.g. --set grpo.steps=10", ("grpo.steps",), None, argv=("--set", "grpo.steps")),
    Case(R, "set_unknown_key", "grpo.stepz: unknown key; did you mean 'steps'?", ("grpo.stepz",), None, argv=("--set", "grpo.stepz=3")),
    Case(R, "set_wrong_type", "grpo.group_size: expected an integer, got 'eight'", ("grpo.group_size",), None, argv=("--set", "grpo.group_size=eight")),
]


# --------------------------------------------------------------------------- stages


def staged_recipe(ctx: Ctx) -> dict:
    recipe = base_recipe(ctx)
    recipe["data"]["eval"] = {"source": "synthetic:arithmetic", "size": 4, "seed": 1, "options": dict(ARITH)}
    recipe["stages"] = [
        {"name": "cold_start", "kind": "sft", "data": {"source": "synthetic:arithmetic", "size": 8, "options": {**ARITH, "worked": True}}},
        {"name": "reasoning_rl", "kind": "grpo", "init": "stages.cold_start"},
        {"name": "rejection_sampling", "kind": "rejection_sampling", "init": "stages.reasoning_rl", "keep": {"accuracy": 1.0}},
        {"name": "sft_rs", "kind": "sft", "data": "stages.rejection_sampling"},
        {"name": "final_rl", "kind": "grpo", "init": "stages.sft_rs"},
        {"name": "eval", "kind": "eval", "init": "stages.final_rl"},
    ]
    return recipe


def _stage(index: int, **changes) -> Callable:
    def edit(recipe: dict, ctx: Ctx) -> dict:
        for key, value in changes.items():
            if value is DELETE:
                del recipe["stages"][index][key]
            else:
                recipe["stages"][index][key] = value
        return recipe

    return edit


def _append_stage(stage: dict, init_of: dict[int, str] | None = None) -> Callable:
    """Append ``stage``; ``init_of`` re-points earlier stages' init (index -> reference)."""

    def edit(recipe: dict, ctx: Ctx) -> dict:
        recipe["stages"].append(stage)
        for index, init in (init_of or {}).items():
            recipe["stages"][index]["init"] = init
        return recipe

    return edit


S = "stages"
DRY = ("run", "--dry-run")
STAGE_CASES = [
    Case(S, "ref_missing", "stages[1].init: refers to stage 'cold_strat', which does not exist; did you mean 'stages.cold_start'?", ("stages[1].init",),
         _stage(1, init="stages.cold_strat"), command=DRY),
    Case(S, "ref_later", "stages[1].init: refers to stage 'late', which runs later (stage 6); a stage can only use earlier stages' outputs",
         ("stages[1].init",), _append_stage({"name": "late", "kind": "grpo"}, {1: "stages.late"}), command=DRY),
    Case(S, "cycle", "stages[1].init: stages form a cycle: reasoning_rl → sft_rs → rejection_sampling → reasoning_rl", ("stages[1].init",),
         _stage(1, init="stages.sft_rs"), command=DRY),
    Case(S, "self_reference", "stages[0].init: stage 'cold_start' refers to itself", ("stages[0].init",), _stage(0, init="stages.cold_start"), command=DRY),
    Case(S, "unknown_kind", "stages[1].kind: unknown stage kind 'gpro'; did you mean 'grpo'?", ("stages[1].kind",), _stage(1, kind="gpro"), command=DRY),
    Case(S, "missing_kind", "stages[0].kind: required key is missing", ("stages[0].kind",), _stage(0, kind=DELETE), command=DRY),
    Case(S, "duplicate_name", "stages[2].name: stage name 'cold_start' is used twice", ("stages[2].name",), _stage(2, name="cold_start"), command=DRY),
    Case(S, "produces_no_model", "stages[6].init: stage 'eval' (eval) produces no model; it produces: data", ("stages[6].init",),
         _append_stage({"name": "more_rl", "kind": "grpo", "init": "stages.eval"}), command=DRY),
    Case(S, "produces_no_data", "stages[3].data: stage 'reasoning_rl' (grpo) produces no data; it produces: model", ("stages[3].data",),
         _stage(3, data="stages.reasoning_rl"), command=DRY),
    Case(S, "stage_unknown_key", "stages[2].samples_per_promt: unknown key; did you mean 'samples_per_prompt'?", ("stages[2].samples_per_promt",),
         _stage(2, samples_per_promt=3), command=DRY),
    Case(S, "stage_grpo_override", "stages[4].grpo.group_size: must be ≥ 2 (the group mean is the baseline), got 1", ("stages[4].grpo.group_size",),
         _stage(4, grpo={"group_size": 1}), command=DRY),
    Case(S, "stage_unknown_reward", "stages[2].rewards.acuracy: unknown reward 'acuracy'; did you mean 'accuracy'?", ("stages[2].rewards.acuracy",),
         _stage(2, rewards={"acuracy": 1.0}, keep={}), command=DRY),
    Case(S, "keep_unknown_reward", "stages[2].keep.acuracy: not one of this stage's rewards (accuracy, format)", ("stages[2].keep.acuracy",),
         _stage(2, keep={"acuracy": 1.0}), command=DRY),
    Case(S, "stage_not_mapping", "stages[0]: expected a mapping, got 'cold_start'", ("stages[0]",),
         lambda r, c: {**r, "stages": ["cold_start"]}, command=DRY),
    Case(S, "eval_without_data", "stages.eval.data: an eval stage needs data (or a recipe-level data.eval)", ("stages.eval.data",),
         lambda r, c: {**r, "data": {"train": r["data"]["train"]}}, command=DRY),
    Case(S, "from_unknown_stage", "--from final_lr: no such stage; did you mean 'final_rl'?", ("final_lr",), None, command=("run", "--from", "final_lr")),
    Case(S, "only_before_inputs", "stage 'rejection_sampling' has not completed; run it first (without --only)", ("rejection_sampling",), None,
         command=("run", "--only", "sft_rs")),
    Case(S, "set_bad_index", "--set stages.9.kind: expected an index below 6 for a list of 6 items, got '9'", ("stages.9.kind",), None,
         argv=("--set", "stages.9.kind=sft"), command=DRY),
]


# --------------------------------------------------------------------------- data


def _file(name: str, text: str | bytes, **spec) -> Callable:
    def make(ctx: Ctx) -> dict:
        return {"source": ctx.write(name, text), **spec}

    return make


def _jsonl(*rows: dict) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def _dataset_dict(ctx: Ctx) -> dict:
    import datasets

    path = ctx.tmp / "saved"
    datasets.DatasetDict({"test": datasets.Dataset.from_list([{"prompt": "1+1?", "solution": "2"}])}).save_to_disk(str(path))
    return {"source": str(path)}


GOOD = {"prompt": "What is 2+2?", "solution": "4"}
LONG = "What is " + " + ".join(["1"] * 200) + "?"  # 800 characters: 800 tokens of the tiny char tokenizer

D = "data"
DATA_CASES = [
    Case(D, "file_missing", "data file '{tmp}/nope.jsonl' does not exist", ("nope.jsonl",), lambda c: {"source": str(c.tmp / "nope.jsonl")}),
    Case(D, "unsupported_format", "unsupported format; expected .json, .jsonl, .parquet, .csv or .tsv", ("rows.txt",), _file("rows.txt", "2+2? 4\n")),
    Case(D, "empty_file", "data file '{tmp}/empty.jsonl' has no rows", ("empty.jsonl",), _file("empty.jsonl", "")),
    Case(D, "blank_lines", "data file '{tmp}/blank.jsonl' has no rows", ("blank.jsonl",), _file("blank.jsonl", "\n\n  \n")),
    Case(D, "csv_header_only", "data file '{tmp}/head.csv' has no rows", ("head.csv",), _file("head.csv", "prompt,solution\n")),
    Case(D, "broken_json_line", "cannot be read as jsonl: line 2: Expecting property name enclosed in double quotes (column 2)", ("broken.jsonl", "line 2"),
         _file("broken.jsonl", _jsonl(GOOD) + "{not json\n")),
    Case(D, "ragged_csv", "cannot be read as csv: Error tokenizing data. C error: Expected 2 fields in line 3, saw 4", ("ragged.csv",),
         _file("ragged.csv", "prompt,solution\na,1\nb,2,3,4\n")),
    Case(D, "corrupt_parquet", "cannot be read as parquet: Parquet magic bytes not found in footer", ("bad.parquet",), _file("bad.parquet", b"PAR1 not really")),
    Case(D, "no_prompt_column", "has no prompt column; its columns are: q, solution; map one with columns: {<column>: prompt}", ("noprompt.jsonl",),
         _file("noprompt.jsonl", _jsonl({"q": "2+2?", "solution": "4"}))),
    Case(D, "no_solution_column", "has no solution column; its columns are: prompt, label; map one with columns: {<column>: solution}", ("nosol.jsonl",),
         _file("nosol.jsonl", _jsonl({"prompt": "2+2?", "label": "4"}))),
    Case(D, "mapped_column_missing", "column 'quesiton' given in columns: does not exist; its columns are: question, answer", ("qa.jsonl", "quesiton"),
         _file("qa.jsonl", _jsonl({"question": "2+2?", "answer": "4"}), columns={"quesiton": "prompt"})),
    Case(D, "prompt_not_text", "line 2: prompt must be text or chat messages, got list", ("mixed.jsonl", "line 2"),
         _file("mixed.jsonl", _jsonl(GOOD, {"prompt": ["a", "b"], "solution": "1"}))),
    Case(D, "no_gold_parses", "none of the 2 gold answers in column 'solution' could be parsed (line 1: '')", ("nogold.jsonl", "line 1"),
         _file("nogold.jsonl", _jsonl({"prompt": "a?", "solution": ""}, {"prompt": "b?", "solution": "#### "}))),
    Case(D, "some_golds_unparseable", "skipped 1 of 3 rows whose gold answer in column 'solution' could not be parsed (first: line 2: None)",
         ("somegold.jsonl", "line 2"), _file("somegold.jsonl", _jsonl(GOOD, {"prompt": "b?", "solution": None}, GOOD)), warn=True),
    Case(D, "all_prompts_over_max_prompt_length", "data: all 3 prompts are longer than 8 tokens (grpo.max_prompt_length=8)", ("grpo.max_prompt_length",),
         _file("p.jsonl", _jsonl(GOOD, GOOD, GOOD)), argv=("--set", "grpo.max_prompt_length=8")),
    Case(D, "some_prompts_over_max_prompt_length", "data: dropped 1 of 3 prompts longer than 40 tokens (grpo.max_prompt_length=40)",
         ("grpo.max_prompt_length",), _file("p.jsonl", _jsonl(GOOD, {"prompt": LONG, "solution": "200"}, GOOD)),
         argv=("--set", "grpo.max_prompt_length=40"), warn=True),
    Case(D, "all_prompts_over_model_limit",
         "data: all 2 prompts are longer than 312 tokens (the model's max_position_embeddings=512 minus grpo.max_new_tokens=200)",
         ("max_position_embeddings", "grpo.max_new_tokens"), _file("long.jsonl", _jsonl({"prompt": LONG, "solution": "200"}, {"prompt": LONG, "solution": "200"})),
         argv=("--set", "grpo.max_new_tokens=200")),
    Case(D, "some_prompts_over_model_limit",
         "data: dropped 1 of 3 prompts longer than 312 tokens (the model's max_position_embeddings=512 minus grpo.max_new_tokens=200)",
         ("max_position_embeddings", "grpo.max_new_tokens"), _file("long.jsonl", _jsonl(GOOD, {"prompt": LONG, "solution": "200"}, GOOD)),
         argv=("--set", "grpo.max_new_tokens=200"), warn=True),
    Case(D, "completion_budget_over_model_limit", "grpo.max_new_tokens: must leave room for a prompt within the model's max_position_embeddings=512, got 600",
         ("grpo.max_new_tokens",), _file("p.jsonl", _jsonl(GOOD, GOOD)), argv=("--set", "grpo.max_new_tokens=600")),
    Case(D, "unknown_synthetic_task", "source 'synthetic:arithmatic': unknown task 'arithmatic'", ("synthetic:arithmatic",),
         lambda c: {"source": "synthetic:arithmatic"}),
    Case(D, "missing_split", "has no split 'train'; splits: test", ("saved",), _dataset_dict),
    Case(D, "sft_without_completion", "has neither a messages column nor a completion column for SFT; its columns are: prompt, solution",
         ("cold.jsonl",), _file("cold.jsonl", _jsonl(GOOD)), command=("run", "--dry-run")),
]


# --------------------------------------------------------------------------- model


def _model_copy(*, drop: tuple[str, ...] = (), edit: Callable[[Path], None] | None = None, name: str = "model") -> Callable:
    """A copy of the tiny model directory with files left out or damaged."""

    def make(ctx: Ctx) -> str:
        target = ctx.tmp / name
        shutil.copytree(ctx.model, target, ignore=lambda d, names: [n for n in names if n in drop or n.startswith(drop)])
        if edit:
            edit(target)
        return str(target)

    return make


def _no_chat_template(path: Path) -> None:
    config = json.loads((path / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    (path / "chat_template.jinja").unlink(missing_ok=True)


def _truncate_weights(path: Path) -> None:
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])


def _bert(ctx: Ctx) -> str:
    from transformers import BertConfig

    path = ctx.tmp / "bert"
    BertConfig(vocab_size=16, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8, architectures=["BertModel"]).save_pretrained(path)
    return str(path)


M = "model"
MODEL_CASES = [
    Case(M, "path_missing", "model path '{tmp}/no-model' does not exist", ("no-model",), lambda c: str(c.tmp / "no-model")),
    Case(M, "path_is_file", "is a file, not a Hugging Face model directory", ("weights.bin",), lambda c: c.write("weights.bin", b"\0" * 16)),
    Case(M, "no_config", "has no config.json — not a Hugging Face model directory", ("empty-dir",),
         lambda c: (c.tmp / "empty-dir").mkdir() or str(c.tmp / "empty-dir")),
    Case(M, "corrupt_config", "cannot read its config.json: It looks like the config file at", ("bad-config",),
         _model_copy(name="bad-config", edit=lambda p: (p / "config.json").write_text("{not json"))),
    Case(M, "not_causal_lm", "is not a causal language model (got BertModel)", ("bert",), _bert),
    Case(M, "no_weights", "cannot load its weights: Error no file named model.safetensors", ("no-weights",),
         _model_copy(name="no-weights", drop=("model.safetensors",))),
    Case(M, "truncated_weights", "cannot load its weights: Error while deserializing header", ("truncated",),
         _model_copy(name="truncated", edit=_truncate_weights)),
    Case(M, "no_tokenizer", "cannot load its tokenizer (tokenizer.json / tokenizer_config.json missing or unreadable)", ("no-tokenizer",),
         _model_copy(name="no-tokenizer", drop=("tokenizer", "special_tokens_map.json", "chat_template.jinja"))),
    Case(M, "no_chat_template", "template 'chat' needs a tokenizer with a chat template; model '{tmp}/no-template' has none — use template: r1 or plain",
         ("no-template",), _model_copy(name="no-template", edit=_no_chat_template)),
    Case(M, "unknown_name", "unknown model 'smollm3': not an embedded alias (", ("smollm3",), lambda c: "smollm3"),
]


# --------------------------------------------------------------------------- reward functions that break the contract


# The reward tests score COMPLETIONS; row 2 is the bad one.
COMPLETIONS = ["c0", "c1", "bad2", "c3", "c4", "c5", "c6", "c7"]


def _raises(prompts, completions, **_):
    for c in completions:
        if c.startswith("bad"):
            raise ValueError(f"cannot score {c!r}\n(second line of the message)")
    return [1.0] * len(completions)


def _short(prompts, completions, **_):
    return [1.0] * (len(completions) - 1)


def _value_for_bad(value) -> Callable:
    def fn(prompts, completions, **_):
        return [value if c.startswith("bad") else 1.0 for c in completions]

    return fn


def _not_a_list(prompts, completions, **_):
    return {"score": 1.0}


W = "reward"
REWARD_CASES = [
    Case(W, "raises", "reward 'r' raised ValueError on row 2: cannot score 'bad2' (second line of the message)", ("'r'", "row 2"), _raises),
    Case(W, "wrong_length", "reward 'r' returned 7 values for 8 completions; expected a list of 8", ("'r'",), _short),
    Case(W, "nan", "reward 'r' returned nan for row 2; expected a finite float or None", ("'r'", "row 2"), _value_for_bad(math.nan)),
    Case(W, "inf", "reward 'r' returned inf for row 2; expected a finite float or None", ("'r'", "row 2"), _value_for_bad(math.inf)),
    Case(W, "wrong_type", "reward 'r' returned str for row 2; expected a float or None", ("'r'", "row 2"), _value_for_bad("1.0")),
    Case(W, "not_a_list", "reward 'r' returned dict values for 8 completions; expected a list of 8", ("'r'",), _not_a_list),
]


# --------------------------------------------------------------------------- storage

T = "storage"
STORAGE_CASES = [
    Case(T, "train_dir_unwritable", "run directory '{tmp}/a-file/run' is not writable: Not a directory; choose another output_dir", ("a-file/run",)),
    Case(T, "run_dir_unwritable", "run directory '{tmp}/a-file/run' is not writable: Not a directory; choose another output_dir", ("a-file/run",),
         command=("run",)),
    Case(T, "disk_too_small", "has 1.0 MB free, but a checkpoint (trainable weights + 2 AdamW moments) and the final model needs about", ("run",)),
    Case(T, "file_write_disk_full", "no space left on the device while writing '{tmp}/stats.json'; free some space and rerun", ("stats.json",)),
    Case(T, "append_disk_full", "no space left on the device while writing '{tmp}/metrics.jsonl'; free some space and rerun", ("metrics.jsonl",)),
    Case(T, "disk_full_mid_checkpoint", "checkpoint of step 2 not written: no space left on the device in '{tmp}/run/checkpoints'; "
         "the last complete checkpoint, step-000001, is intact: free some space and resume with --resume", ("step-000001",)),
]


ALL_CASES: list[Case] = [*RECIPE_CASES, *STAGE_CASES, *DATA_CASES, *MODEL_CASES, *REWARD_CASES, *STORAGE_CASES]


def check_message(message: str, case: Case, tmp: Path) -> None:
    """The message is one line, holds the expected text and names what it must name."""
    assert "\n" not in message, f"{case!r}: not one line: {message!r}"
    expect = case.expect.replace("{tmp}", str(tmp))
    assert expect in message, f"{case!r}:\n  expected {expect!r}\n  in       {message!r}"
    for name in case.names:
        assert name.replace("{tmp}", str(tmp)) in message, f"{case!r}: does not name {name!r}: {message!r}"


def cli_error(argv: list[str], capsys) -> str:
    """Run the ``grpo`` command; it must exit 2 with exactly one ``error: ...`` line on stderr."""
    from pipelines.cli import main

    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, f"exit code {code}; stderr: {err!r}"
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("error: "), f"not one error line: {err!r}"
    return lines[0][len("error: ") :]


__all__ = ["Case", "Ctx", "ALL_CASES", "RECIPE_CASES", "STAGE_CASES", "DATA_CASES", "MODEL_CASES", "REWARD_CASES", "STORAGE_CASES",
           "base_recipe", "staged_recipe", "check_message", "cli_error", "skip_plots"]


def skip_plots(monkeypatch) -> None:
    """curves.png costs a second or more per write; tests that only check errors and state skip it."""
    import grpo.plots

    monkeypatch.setattr(grpo.plots, "plot_training_curves", lambda *args, **kwargs: None)
