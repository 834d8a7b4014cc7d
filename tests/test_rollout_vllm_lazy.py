"""The ``vllm`` rollout engine is registered without importing vLLM (its own tests: tests/vllm_backend, `make test-vllm`)."""

import importlib.util
import subprocess
import sys

import pytest

from grpo.rollout import ROLLOUT_ENGINES, get_rollout_engine


def test_vllm_is_a_registered_engine_and_importing_grpo_does_not_import_vllm():
    assert "vllm" in ROLLOUT_ENGINES
    code = "import sys, grpo.rollout, grpo.trainer; assert 'vllm' in grpo.rollout.ROLLOUT_ENGINES; assert 'vllm' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def vllm_installed() -> bool:
    spec = importlib.util.find_spec("vllm")
    return spec is not None and spec.origin is not None  # not a bare directory named vllm on sys.path


@pytest.mark.skipif(vllm_installed(), reason="vllm is installed here")
def test_without_vllm_the_error_says_how_to_install_it(tiny_model_dir):
    from grpo.models import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(tiny_model_dir)
    with pytest.raises(ModuleNotFoundError, match=r"pip install \.\[vllm\].*make install-vllm"):
        get_rollout_engine("vllm", model, tok)
