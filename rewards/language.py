"""Language-consistency reward (DeepSeek-R1): share of chain-of-thought words in the target language.

Words are counted by writing system ("script"), which is what can be told apart reliably without
a language-ID model: CJK ideographs and kana count one word per character (the way word
processors count CJK text, which has no spaces), other scripts count runs of letters. A language
maps to the scripts it is written in (``ja`` -> ideographs + kana, ``fr`` -> Latin, ...), so
English and French are not told apart, but an English CoT drifting into Chinese is.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections import Counter

from .format import prompt_opens_think
from .registry import register_reward
from .text import completion_text

# ------------------------------------------------------------------ languages -> scripts

_LATIN_LANGUAGES = (
    "en fr de es it pt nl sv da no nb nn fi is pl cs sk sl hr bs ro hu tr vi id ms tl ca eu gl et lv lt "
    "ga cy sq af sw uz az la eo mt lb fo yo ha ig zu xh so"
).split()
_CYRILLIC_LANGUAGES = "ru uk be bg mk kk ky tg mn".split()
_SCRIPTS_BY_LANGUAGE: dict[str, frozenset[str]] = {
    **{code: frozenset({"latin"}) for code in _LATIN_LANGUAGES},
    **{code: frozenset({"cyrillic"}) for code in _CYRILLIC_LANGUAGES},
    "sr": frozenset({"cyrillic", "latin"}),  # Serbian is written in both
    "zh": frozenset({"han"}),
    "ja": frozenset({"han", "kana"}),
    "ko": frozenset({"hangul"}),
    "el": frozenset({"greek"}),
    "ar": frozenset({"arabic"}),
    "fa": frozenset({"arabic"}),
    "ur": frozenset({"arabic"}),
    "he": frozenset({"hebrew"}),
    "yi": frozenset({"hebrew"}),
    "hi": frozenset({"devanagari"}),
    "mr": frozenset({"devanagari"}),
    "ne": frozenset({"devanagari"}),
    "bn": frozenset({"bengali"}),
    "pa": frozenset({"gurmukhi"}),
    "gu": frozenset({"gujarati"}),
    "ta": frozenset({"tamil"}),
    "te": frozenset({"telugu"}),
    "kn": frozenset({"kannada"}),
    "ml": frozenset({"malayalam"}),
    "si": frozenset({"sinhala"}),
    "th": frozenset({"thai"}),
    "lo": frozenset({"lao"}),
    "my": frozenset({"myanmar"}),
    "km": frozenset({"khmer"}),
    "ka": frozenset({"georgian"}),
    "hy": frozenset({"armenian"}),
    "am": frozenset({"ethiopic"}),
}
_LANGUAGE_NAMES = {
    "english": "en", "chinese": "zh", "mandarin": "zh", "japanese": "ja", "korean": "ko",
    "russian": "ru", "ukrainian": "uk", "french": "fr", "german": "de", "spanish": "es",
    "italian": "it", "portuguese": "pt", "dutch": "nl", "polish": "pl", "turkish": "tr",
    "vietnamese": "vi", "indonesian": "id", "greek": "el", "arabic": "ar", "persian": "fa",
    "hebrew": "he", "hindi": "hi", "bengali": "bn", "thai": "th",
}
_KNOWN_SCRIPTS = frozenset().union(*_SCRIPTS_BY_LANGUAGE.values())
_PER_CHARACTER_SCRIPTS = frozenset({"han", "kana"})  # no spaces between words: one char = one word


def scripts_for_language(language: str) -> frozenset[str]:
    """Scripts a language is written in. Accepts ISO 639-1 codes with optional region/script
    subtags (``"zh-CN"``, ``"en_US"``), common English names (``"Chinese"``) and script names
    (``"latin"``, ``"han"``). Unknown values raise ``ValueError``."""
    key = str(language).strip().lower()
    if key in _KNOWN_SCRIPTS:
        return frozenset({key})
    key = _LANGUAGE_NAMES.get(key, key).replace("_", "-").split("-")[0]
    if key not in _SCRIPTS_BY_LANGUAGE:
        raise ValueError(
            f"unknown language {language!r} for language_consistency; use an ISO 639-1 code "
            f"({', '.join(sorted(_SCRIPTS_BY_LANGUAGE))}) or a script name ({', '.join(sorted(_KNOWN_SCRIPTS))})"
        )
    return _SCRIPTS_BY_LANGUAGE[key]


# ------------------------------------------------------------------ what is not prose

_NOT_PROSE = [
    re.compile(r"```.*?(?:```|\Z)", re.DOTALL),  # fenced code (an unclosed fence runs to the end)
    re.compile(r"`[^`\n]*`"),  # inline code
    re.compile(r"(?:https?://|ftp://|www\.)\S+"),  # URLs
    re.compile(r"\$\$.*?\$\$", re.DOTALL),  # display math
    re.compile(r"\\\[.*?\\\]", re.DOTALL),
    re.compile(r"\\begin\{([A-Za-z]+\*?)\}.*?\\end\{\1\}", re.DOTALL),  # LaTeX environments
    re.compile(r"(?<!\\)\$[^$\n]+?(?<!\\)\$"),  # inline math (one line, so a lone currency "$" cannot eat a page)
    re.compile(r"\\\(.*?\\\)", re.DOTALL),
    re.compile(r"\\[A-Za-z]+\*?"),  # stray LaTeX commands
    re.compile(r"</?[A-Za-z][\w-]*(?:\s[^<>]*)?/?>"),  # tags: <think>, </answer>, <br/>
]

# A word: a run of letters, also holding apostrophes between letters ("don't") and combining
# marks (Indic vowel signs, Arabic/Hebrew points, Thai marks), which Python's \w leaves out.
_MARKS = (
    "\u0300-\u036f\u0483-\u0489\u0591-\u05c7\u0610-\u061a\u064b-\u065f\u0670\u06d6-\u06ed"
    "\u0900-\u0963\u0966-\u0dff\u0e31\u0e34-\u0e3a\u0e47-\u0e4e\u0eb1\u0eb4-\u0ebc\u0ec8-\u0ecd"
    "\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\u3099\u309a\ufe20-\ufe2f"
)
_LETTER = rf"(?:[^\W\d_]|[{_MARKS}])"
_WORD = re.compile(rf"{_LETTER}+(?:['’]{_LETTER}+)*")


def strip_non_prose(text: str) -> str:
    """``text`` without code, URLs, LaTeX math and commands, and markup tags."""
    for pattern in _NOT_PROSE:
        text = pattern.sub(" ", text)
    return text


@functools.lru_cache(maxsize=8192)
def _script_of(char: str) -> str | None:
    """Script of a letter, or None for characters that only continue a word (marks, apostrophes,
    digits inside a run) or that are not letters at all (superscripts, ordinals)."""
    if not char.isalpha():
        return None
    if char.isascii():
        return "latin"
    name = unicodedata.name(char, "")
    if name.startswith(("CJK ", "IDEOGRAPHIC ")):
        return "han"
    if name.startswith(("HIRAGANA", "KATAKANA", "HALFWIDTH KATAKANA")):
        return "kana"
    if name.startswith(("HANGUL", "HALFWIDTH HANGUL")):
        return "hangul"
    if name.startswith("FULLWIDTH LATIN"):
        return "latin"
    if name.startswith(("MODIFIER LETTER", "FEMININE ORDINAL", "MASCULINE ORDINAL")):
        return None
    return name.split(" ", 1)[0].lower() or None


def script_word_counts(text: str) -> Counter:
    """Count the words of ``text`` by script, after :func:`strip_non_prose`.

    Numbers are never words. Ideographs and kana count one word per character; in every other
    script a maximal run of same-script letters is one word (so "中文English" is 2 han + 1 latin).
    """
    counts: Counter = Counter()
    for match in _WORD.finditer(strip_non_prose(text)):
        run = match.group()
        if run.isascii():  # fast path: most chains of thought are mostly ASCII
            counts["latin"] += 1
            continue
        current = None
        for char in run:
            script = _script_of(char)
            if script is None:
                continue
            if script in _PER_CHARACTER_SCRIPTS:
                counts[script] += 1
            elif script != current:
                counts[script] += 1
            current = script
    return counts


def language_shares(text: str) -> dict[str, float]:
    """Fraction of the words of ``text`` in each script, largest first (``{}`` if none); for reports."""
    counts = script_word_counts(text)
    total = sum(counts.values())
    return {script: n / total for script, n in counts.most_common()} if total else {}


# ------------------------------------------------------------------ chain of thought

_THINK_BLOCK = re.compile(r"<think>(.*?)(?:</think>|\Z)", re.DOTALL)
_ANSWER_BLOCK = re.compile(r"<answer>.*?(?:</answer>|\Z)", re.DOTALL)


def chain_of_thought(completion: str, *, think_opened: bool = False) -> str:
    """The reasoning part of a completion.

    The text of its ``<think>`` block(s) (an unclosed block runs to the end); if the prompt opened
    ``<think>``, or there is a ``</think>`` without an opening tag, the text before ``</think>``;
    otherwise the whole completion minus its ``<answer>...</answer>``.
    """
    if think_opened and not completion.lstrip().startswith("<think>"):
        completion = "<think>" + completion
    blocks = _THINK_BLOCK.findall(completion)
    if blocks:
        return "\n".join(blocks)
    if "</think>" in completion:
        return completion.split("</think>", 1)[0]
    return _ANSWER_BLOCK.sub(" ", completion)


@register_reward("language_consistency")
def language_consistency_reward(
    prompts: list,
    completions: list,
    *,
    target_language: str = "en",
    think_in_prompt: bool | None = None,
    **kwargs,
) -> list[float]:
    """Share of chain-of-thought words written in the target language (R1's language reward).

    reward = target-language words / all counted words in the chain of thought, in [0, 1].

    The target is the row's ``language`` column when present and non-empty, else
    ``target_language``. The chain of thought is the ``<think>`` block (or the completion minus
    its ``<answer>``). Numbers, LaTeX, code, URLs and tags are ignored; words are counted per
    script (see :func:`script_word_counts`). A chain of thought with no countable words scores
    0.0: there is nothing readable to reward, and scoring it 1.0 would pay the policy for
    emptying its reasoning.
    """
    languages = kwargs.get("language") or [None] * len(completions)
    rewards = []
    for prompt, completion, language in zip(prompts, completions, languages, strict=True):
        target = scripts_for_language(language if language else target_language)
        think_opened = prompt_opens_think(prompt, think_in_prompt)
        thought = chain_of_thought(completion_text(completion), think_opened=think_opened)
        counts = script_word_counts(thought)
        total = sum(counts.values())
        rewards.append(sum(counts[s] for s in target) / total if total else 0.0)
    return rewards
