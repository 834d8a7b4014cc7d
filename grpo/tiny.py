"""Tiny, fully offline models for tests and labs.

Nothing here touches the network. :func:`build_char_tokenizer` makes a
character-level tokenizer from the ``tokenizers`` library, :func:`build_tiny_model`
makes a randomly initialised (but seed-deterministic) Llama of a few tens of
thousands of parameters, and :func:`save_tiny` writes both to a directory so the
result can be passed anywhere a model name is accepted (``resolve_model_path``,
``load_model_and_tokenizer``, the trainer's ``model:`` setting, ...).

The tokenizer understands the reasoning tags used by the R1 recipe
(``<think>``, ``</think>``, ``<answer>``, ``</answer>``) as single tokens. They are
*not* special tokens, so ``decode(..., skip_special_tokens=True)`` keeps them:
format rewards need to see them in decoded completions. The chat-role markers
``<|system|>``, ``<|user|>``, ``<|assistant|>`` and ``<pad>``/``<s>``/``</s>``/``<unk>``
are special tokens.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - typing only
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

__all__ = [
    "SPECIAL_TOKENS",
    "TAG_TOKENS",
    "ROLE_TOKENS",
    "CJK_CHARS",
    "CHAT_TEMPLATE",
    "build_char_tokenizer",
    "build_tiny_model",
    "save_tiny",
]

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"

#: Core special tokens; their ids are 0, 1, 2, 3 in this order.
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK)
#: Reasoning / answer tags: one token each, kept by ``skip_special_tokens``.
TAG_TOKENS: tuple[str, ...] = ("<think>", "</think>", "<answer>", "</answer>")
#: Chat-role markers used by :data:`CHAT_TEMPLATE` (special tokens).
ROLE_TOKENS: tuple[str, ...] = ("<|user|>", "<|assistant|>", "<|system|>")

#: Common Chinese characters and punctuation found in Chinese arithmetic
#: prompts and answers. Order is part of the id assignment: append only.
CJK_CHARS: str = (
    "加减乘除等于多少是的和差积商答案计算结果所以因为首先然后最后我们得到一个数字问题解"
    "请把最终放在里用中文回个步骤先再共总"
    "零一二三四五六七八九十百千万亿两几半倍每只有了不这那为么吗呢还剩买卖元块"
    "比大小正负数值式题求出给定已知设则即可以能会要看想说对错"
    "，。：；？！、（）“”《》—…"
)

#: Jinja chat template: every turn is ``<|role|>\\n{content}</s>\\n``; with
#: ``add_generation_prompt`` an open ``<|assistant|>\\n`` turn is appended.
CHAT_TEMPLATE: str = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{ raise_exception('unsupported chat role: ' + message['role']) }}"
    "{%- endif -%}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '</s>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\n' }}{%- endif -%}"
)


def _printable_ascii() -> list[str]:
    return [chr(c) for c in range(32, 127)] + ["\n", "\t"]


def _vocab(extra_chars: str) -> dict[str, int]:
    """Deterministic token -> id table: specials, tags, roles, ASCII, CJK, extras."""
    vocab: dict[str, int] = {}
    for tok in (*SPECIAL_TOKENS, *TAG_TOKENS, *ROLE_TOKENS, *_printable_ascii(), *CJK_CHARS, *extra_chars):
        if tok not in vocab:
            vocab[tok] = len(vocab)
    return vocab


def build_char_tokenizer(extra_chars: str = "") -> "PreTrainedTokenizerFast":
    """Build a character-level fast tokenizer without downloading anything.

    Vocabulary (ids are deterministic, in this order): ``<pad>`` ``<s>`` ``</s>``
    ``<unk>``, the tags ``<think>`` ``</think>`` ``<answer>`` ``</answer>``, the role
    markers ``<|user|>`` ``<|assistant|>`` ``<|system|>``, printable ASCII
    (space..``~``), newline, tab, :data:`CJK_CHARS`, then any new characters of
    ``extra_chars``. Unknown characters map to ``<unk>``.

    No BOS/EOS is added by ``encode``; ``decode(encode(s)) == s`` for any text made
    of known characters. ``eos_token`` is ``</s>``, ``pad_token`` is ``<pad>`` and
    padding is on the left (ready for batched generation). A chat template
    (:data:`CHAT_TEMPLATE`) is attached.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = _vocab(extra_chars)
    # A BPE model without merges splits every input into single characters, keeping
    # spaces and newlines as ordinary tokens; there is no pre-tokenizer and no
    # normalizer, so nothing is lost or rewritten.
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK, fuse_unk=False))
    tok.decoder = decoders.Fuse()  # join tokens without inserting spaces
    # Tokens already in the vocab keep their ids when registered as added tokens.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (*SPECIAL_TOKENS, *ROLE_TOKENS)])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAG_TOKENS])

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        extra_special_tokens=list(ROLE_TOKENS),
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
        model_max_length=512,
        clean_up_tokenization_spaces=False,
    )


def build_tiny_model(
    tokenizer,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    seed: int = 0,
    max_position_embeddings: int = 512,
) -> "LlamaForCausalLM":
    """Randomly initialise a small float32 :class:`LlamaForCausalLM` for ``tokenizer``.

    The MLP width is ``4 * hidden_size``, embeddings are tied (as in SmolLM2) and
    pad/bos/eos ids come from the tokenizer. Weights depend only on ``seed``: two
    calls with the same arguments give identical parameters. The global torch RNG
    state is left untouched.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    if hidden_size % num_heads:
        raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
        dtype="float32",
    )
    config.architectures = ["LlamaForCausalLM"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model.eval()
    return model


def save_tiny(
    directory: str | os.PathLike,
    *,
    extra_chars: str = "",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    seed: int = 0,
    max_position_embeddings: int = 512,
) -> str:
    """Build the char tokenizer and a tiny model and save both into ``directory``.

    The directory becomes an ordinary Hugging Face model directory
    (``config.json``, ``model.safetensors``, tokenizer files, ``generation_config.json``)
    usable wherever a model name is accepted. Returns the directory as a string.
    """
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    tokenizer = build_char_tokenizer(extra_chars)
    model = build_tiny_model(
        tokenizer,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        seed=seed,
        max_position_embeddings=max_position_embeddings,
    )
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
