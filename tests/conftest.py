"""Shared fixtures: tiny random-init models built offline from a config (no hub, no downloads)."""

import os

import pytest

# Tests must never reach a model or dataset hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# Tiny models: one thread is faster than two fighting over small matrices (and over the cores
# with subprocesses some tests start).
os.environ.setdefault("OMP_NUM_THREADS", "1")


import torch  # noqa: E402  (after the environment is set)

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A saved 2-layer Llama (hidden 64) with the character-level tokenizer and a chat template."""
    from grpo.tiny import save_tiny

    return save_tiny(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="session")
def ci_lab_model(tmp_path_factory):
    """The lab base model at CI size (about 3 min to build on one core, once per session): the
    default lab world (task, template, corpus habits) with a smaller, shorter-trained model."""
    from grpo.lab import LabSpec, build_lab_model

    spec = LabSpec(name="ci", hidden_size=96, num_layers=3, num_heads=4, corpus_size=8_000, steps=600, batch_size=32)
    return build_lab_model(spec, cache=tmp_path_factory.mktemp("lab"), progress=False, threads=1)
