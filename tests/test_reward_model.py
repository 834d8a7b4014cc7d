"""A learned reward model beside rule rewards, routed by a per-row column."""

import math

import pytest
import torch

from grpo.scoring import RewardError, score_completions
from pipelines.recipe import reward_terms


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from grpo.tiny import build_char_tokenizer

    tok = build_char_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, num_labels=1, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(cfg)
    path = tmp_path_factory.mktemp("rm") / "rm"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_reward_model_scores_only_routed_rows(rm_dir):
    terms = reward_terms({
        "accuracy": {"weight": 1.0, "when": {"task_type": "reasoning"}},
        "reward_model": {"weight": 0.5, "model": rm_dir, "when": {"task_type": "general"}},
    })
    completions = ["<answer>4</answer>", "Paris is the capital.", "<answer>5</answer>", "A poem."]
    columns = {"solution": ["4", None, "4", None], "task_type": ["reasoning", "general", "reasoning", "general"]}
    scores = score_completions(terms, ["2+2?", "Capital?", "2+2?", "Poem?"], completions, columns)
    acc, rm = scores.per_reward["accuracy"], scores.per_reward["reward_model"]
    assert acc[0] == 1.0 and acc[2] == 0.0 and math.isnan(acc[1]) and math.isnan(acc[3])
    assert math.isnan(rm[0]) and math.isnan(rm[2]) and not math.isnan(rm[1]) and rm[1] != rm[3]
    # Totals: each row gets only its own route's weighted reward.
    assert scores.total == pytest.approx([1.0, 0.5 * rm[1], 0.0, 0.5 * rm[3]])


def test_reward_model_matches_a_direct_forward(rm_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    (term,) = reward_terms({"reward_model": {"model": rm_dir}})
    scores = score_completions([term], ["Q: hi "], ["there"], {})
    tok, model = AutoTokenizer.from_pretrained(rm_dir), AutoModelForSequenceClassification.from_pretrained(rm_dir)
    with torch.no_grad():
        expected = model(**tok(["Q: hi there"], return_tensors="pt", add_special_tokens=False)).logits[0, 0].item()
    assert scores.per_reward["reward_model"][0] == pytest.approx(expected, abs=1e-5)


def test_routing_needs_the_column():
    (term,) = reward_terms({"format": {"when": {"task_type": "reasoning"}}})
    with pytest.raises(RewardError, match="when: needs a dataset column 'task_type'"):
        score_completions([term], ["p"], ["c"], {"solution": ["1"]})
