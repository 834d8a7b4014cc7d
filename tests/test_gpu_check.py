"""The GPU check (benchmarks/gpu_check.py) without a GPU: it refuses to invent figures, and the
recipes it runs are valid recipes of this toolkit (the dry run itself, `--dry-run`, takes a minute
and is run by hand; see the README)."""

import torch
import pytest

from benchmarks import gpu_check
from pipelines.recipe import load_recipe


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: make gpu-check measures it")
def test_without_a_gpu_nothing_is_measured(capsys):
    assert gpu_check.main([]) == 2
    assert "no CUDA GPU here; nothing measured" in capsys.readouterr().err


@pytest.mark.parametrize("dry_run", [True, False])
def test_its_recipes_load(tmp_path, dry_run):
    import yaml

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(gpu_check.recipe(tmp_path / "model", tmp_path / "out", dry_run=dry_run)))
    recipe = load_recipe(path, ["grpo.rollout_engine=hf", "distributed.strategy=fsdp"])
    assert recipe.grpo.rollout_engine == "hf" and recipe.distributed.strategy == "fsdp"
    assert recipe.device == ("cpu" if dry_run else "auto")
    assert recipe.precision == "auto"  # grpo/precision.py decides on the machine it runs on
    assert recipe.grpo.prompts_per_step % 2 == 0  # the 2-rank run splits it


def test_the_model_has_qwen25_05b_shape():
    from transformers import Qwen2Config

    config = Qwen2Config(vocab_size=49152, **gpu_check.QWEN25_05B)
    with torch.device("meta"):
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_config(config)
    params = sum(p.numel() for p in model.parameters())
    # Qwen2.5-0.5B has 494M parameters with its 151,936-row vocabulary; ours has the embedded tokenizer's 49,152 rows.
    assert params + (151_936 - 49_152) * 896 == pytest.approx(494_032_768, rel=1e-6)
