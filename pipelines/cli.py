"""The ``grpo`` command.

    grpo train RECIPE [--set key=value ...] [--resume] [--num-processes N]   one GRPO run (N processes: ddp | fsdp)
    grpo run RECIPE [--from STAGE] [--only STAGE] [--dry-run] [--num-processes N]   a staged recipe
      (both: --nnodes M --node-rank R --master-addr HOST [--master-port P] for several machines)
    grpo ablate RECIPE [--set key=value ...]                 arms × seeds, compared
    grpo eval MODEL [MODEL ...] --data SPEC [--samples k]    models against benchmarks, side by side
    grpo rewards list                                        registered reward functions
    grpo data list                                           named data sources (gsm8k, mgsm_en, ...)
    grpo models fetch [ALIAS] | grpo models list             embedded default models
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def _launch(args):
    from grpo.launch import Launch

    return Launch(args.num_processes, args.nnodes, args.node_rank, args.master_addr, args.master_port)


def _cmd_train(args) -> int:
    from grpo.launch import is_main_process
    from pipelines.recipe import load_recipe
    from pipelines.train import format_summary, train_from_recipe

    recipe = load_recipe(args.recipe, args.set)
    if args.num_processes != 1 or args.nnodes != 1:
        return _relaunch_train(args, recipe)
    result, summary = train_from_recipe(recipe, resume=args.resume)
    if not is_main_process():
        return 0
    print(f"\nrun directory: {recipe.run_dir}  ({result.steps_done} steps, {summary['wall_time_s']:.0f} s)")
    print(format_summary(summary))
    print(f"curves: {recipe.run_dir / 'curves.png'}")
    if args.summary_json:
        with open(args.summary_json, "w") as f:
            json.dump(summary, f, indent=2)
    return 0


def _relaunch_train(args, recipe) -> int:
    """``--num-processes N`` (and ``--nnodes``...): check what can be checked once, then run this
    same command (without the flags) in the launch's processes through torchrun; see grpo/launch.py."""
    from grpo.distributed import check_data_parallel
    from pipelines.train import check_run_dir

    launch = _launch(args)
    launch.check()
    check_data_parallel(recipe.grpo, launch.world_size, recipe.distributed)
    check_run_dir(recipe.run_dir, args.resume)
    argv = ["train", args.recipe, *(a for kv in args.set for a in ("--set", kv))]
    argv += ["--resume"] * args.resume + (["--summary-json", args.summary_json] if args.summary_json else [])
    return _run_launch(launch, argv, "training")


def _run_launch(launch, argv: list[str], what: str) -> int:
    code = subprocess.run(launch.command(argv)).returncode
    if code:
        print(f"error: {what} stopped in one of the {launch.world_size} processes (the lines above say which and why); "
              "what was complete is kept: continue with --resume", file=sys.stderr)
    return code


def _single_process(command: str) -> None:
    from grpo.launch import launched_world_size
    from grpo.schema import ConfigError

    if launched_world_size() > 1:
        raise ConfigError(f"grpo {command}: runs in one process; only `grpo train` and `grpo run` use several (docs/distributed.md)")


def _cmd_run(args) -> int:
    from grpo.launch import is_main_process
    from pipelines.recipe import load_recipe
    from pipelines.runner import Runner, dry_run

    recipe = load_recipe(args.recipe, args.set)
    if args.dry_run:
        print(dry_run(recipe))
        return 0
    launch = _launch(args)
    if args.num_processes != 1 or args.nnodes != 1:
        launch.check()
        _check_grpo_stages(recipe, launch.world_size)
        argv = ["run", args.recipe, *(a for kv in args.set for a in ("--set", kv))]
        argv += (["--from", args.from_stage] if args.from_stage else []) + (["--only", args.only] if args.only else [])
        return _run_launch(launch, argv, "the run")
    runner = Runner(recipe)
    started = time.perf_counter()
    runner.run(from_stage=args.from_stage, only=args.only)
    if not is_main_process():
        return 0
    print(f"\nrun directory: {runner.run_dir}  ({time.perf_counter() - started:.0f} s)")
    print(f"manifest: {runner.run_dir / 'manifest.json'}\nreport:   {runner.run_dir / 'report.md'}")
    return 0


def _check_grpo_stages(recipe, world_size: int) -> None:
    """Every GRPO stage splits over the processes (checked before any stage runs)."""
    from grpo.distributed import check_data_parallel
    from grpo.schema import ConfigError
    from pipelines.runner import plan_stages
    from pipelines.stages.grpo import stage_grpo_config

    for stage in plan_stages(recipe):
        if stage.kind == "grpo":
            path = f"stages.{stage.name}.grpo"
            try:
                check_data_parallel(stage_grpo_config(recipe, stage.config.grpo, path), world_size, recipe.distributed)
            except ConfigError as exc:
                raise ConfigError(f"stages.{stage.name}.{exc}") from None


def _cmd_ablate(args) -> int:
    from pipelines.ablation import run_ablation

    _single_process("ablate")
    report = run_ablation(args.recipe, args.set)
    print(f"\n{report.read_text()}")
    print(f"table: {report}\nplot:  {report.with_suffix('.png')}")
    return 0


def _cmd_eval(args) -> int:
    from grpo.schema import ConfigError
    from grpo.templates import TemplateSpec
    from pipelines.evaluate import EvalSettings, evaluate_models, main_table, parse_data_spec, parse_rewards

    _single_process("eval")
    try:
        template = TemplateSpec(kind=args.template, system=args.system, instruction=args.instruction)
    except ValueError as exc:
        raise ConfigError(f"--template: {str(exc).removeprefix('kind: ')}") from None
    settings = EvalSettings(
        samples=args.samples, rewards=parse_rewards(args.rewards), template=template,
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
        max_prompts=args.max_prompts, batch_prompts=args.batch_prompts, seed=args.seed, dtype=args.dtype, device=args.device,
    )
    out = args.out or f"runs/eval-{time.strftime('%Y%m%d-%H%M%S')}"
    started = time.perf_counter()
    results = evaluate_models(args.models, [parse_data_spec(d) for d in args.data], settings, out)
    print(f"\n{main_table(results)}\n\nresults: {out}/eval.md, {out}/eval.json  ({time.perf_counter() - started:.0f} s)")
    return 0


def _cmd_rewards_list(args) -> int:
    from rewards import list_rewards

    for name, doc in sorted(list_rewards().items()):
        print(f"{name:<24} {doc}")
    return 0


def _cmd_data_list(args) -> int:
    from grpo.data import list_data_sources

    for name, doc in list_data_sources().items():
        print(f"{name:<24} {doc}")
    return 0


def _cmd_models(args) -> int:
    from grpo.models import main as models_main

    return models_main([args.action] + ([args.alias] if args.alias else []))


def _add_launch_arguments(parser) -> None:
    group = parser.add_argument_group("processes (torchrun underneath; docs/distributed.md)")
    group.add_argument("--num-processes", type=int, default=1, metavar="N",
                       help="processes on this machine (one per GPU; gloo on CPU); the recipe's distributed.strategy: ddp | fsdp")
    group.add_argument("--nnodes", type=int, default=1, metavar="M", help="machines taking part (run the same command on each)")
    group.add_argument("--node-rank", type=int, default=0, metavar="R", help="this machine's rank, 0 … M-1")
    group.add_argument("--master-addr", metavar="HOST", help="address of machine 0, reachable from every machine")
    group.add_argument("--master-port", type=int, default=29500, metavar="P", help="a free port on machine 0 (default 29500)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grpo", description="GRPO post-training toolkit (DeepSeek-R1 recipe)")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="run GRPO training from a recipe")
    train.add_argument("recipe", help="recipe YAML file")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe value, e.g. grpo.steps=10")
    train.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    train.add_argument("--summary-json", help="also write the first/last-steps summary to this file")
    _add_launch_arguments(train)
    train.set_defaults(func=_cmd_train)

    run = sub.add_parser("run", help="run a staged recipe (cold start → RL → rejection sampling → SFT → RL → eval)")
    run.add_argument("recipe", help="recipe YAML file with stages")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe value")
    run.add_argument("--from", dest="from_stage", metavar="STAGE", help="rerun this stage and every later one")
    run.add_argument("--only", metavar="STAGE", help="run only this stage (its inputs must be complete)")
    run.add_argument("--dry-run", action="store_true", help="validate the recipe, data, rewards and models; print the plan")
    _add_launch_arguments(run)
    run.set_defaults(func=_cmd_run)

    ablate = sub.add_parser("ablate", help="run an ablation recipe: arms × seeds → ablation.md + plots")
    ablate.add_argument("recipe", help="ablation recipe YAML (base, arms, seeds)")
    ablate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a value, e.g. seeds=[0,1]")
    ablate.set_defaults(func=_cmd_ablate)

    ev = sub.add_parser("eval", help="evaluate models on data sets: pass@1, pass@k, maj@k, format and language rates")
    ev.add_argument("models", nargs="+", metavar="MODEL", help="model alias, Hugging Face id or directory (several: side by side)")
    ev.add_argument("--data", action="append", required=True, metavar="SPEC",
                    help="named source (grpo data list), file, synthetic:<task>, hub id or a YAML DataSpec mapping; repeatable")
    ev.add_argument("--samples", type=int, default=4, metavar="K", help="samples per prompt (default 4)")
    ev.add_argument("--rewards", help="NAME[=WEIGHT],... or a YAML mapping; the first is the correctness reward "
                    "(default accuracy,format,language_consistency; code for data with tests)")
    ev.add_argument("--max-prompts", type=int, metavar="N", help="evaluate the first N prompts of each data set")
    ev.add_argument("--template", default="chat", help="prompt template kind: chat, r1, plain (default chat)")
    ev.add_argument("--system", help="system text of the template")
    ev.add_argument("--instruction", help="text appended to every prompt")
    ev.add_argument("--max-new-tokens", type=int, default=256)
    ev.add_argument("--temperature", type=float, default=0.6)
    ev.add_argument("--top-p", type=float, default=0.95)
    ev.add_argument("--top-k", type=int, default=0)
    ev.add_argument("--batch-prompts", type=int, default=8, help="prompts sampled together (default 8)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--dtype", default="float32")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--out", metavar="DIR", help="output directory (default runs/eval-<time>)")
    ev.set_defaults(func=_cmd_eval)

    rewards = sub.add_parser("rewards", help="reward functions")
    rewards_sub = rewards.add_subparsers(dest="action", required=True)
    rewards_sub.add_parser("list", help="list registered reward functions").set_defaults(func=_cmd_rewards_list)

    data = sub.add_parser("data", help="named data sources")
    data_sub = data.add_subparsers(dest="action", required=True)
    data_sub.add_parser("list", help="list named data sources (source: <name> in a recipe)").set_defaults(func=_cmd_data_list)

    models = sub.add_parser("models", help="embedded default models")
    models.add_argument("action", choices=["fetch", "list"])
    models.add_argument("alias", nargs="?")
    models.set_defaults(func=_cmd_models)
    return parser


def quiet_libraries() -> None:
    """Our own progress bar and messages only: no per-file loading bars from transformers."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    import datasets

    datasets.disable_progress_bars()
    # CRITICAL, not ERROR: a file the builders cannot parse is logged by them *and* raised; we
    # report the raised error as one line (grpo.data.DataError), the log would repeat it.
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)


def _user_errors() -> tuple[type[BaseException], ...]:
    from grpo.data import DataError
    from grpo.io import StorageError
    from grpo.models import ModelError
    from grpo.schema import ConfigError
    from grpo.scoring import RewardError

    # FloatingPointError: training stopped after grpo.max_nonfinite_steps NaN/inf updates.
    return (ConfigError, DataError, ModelError, RewardError, StorageError, FloatingPointError, FileNotFoundError, FileExistsError)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries()
    USER_ERRORS = _user_errors()
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted; resume with --resume", file=sys.stderr)
        return 130
    except USER_ERRORS as exc:
        # Configuration, data and model errors are for the user to fix: one line, no traceback
        # (set GRPO_DEBUG=1 to see it).
        if os.environ.get("GRPO_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
