"""Pull final answers out of model completions and gold solutions (pure string work, no sympy).

Everything here runs in linear time on the input, so a 100k-character completion costs
milliseconds: brace matching is a single stack pass, never a re-scan per ``\\boxed``.
"""

from __future__ import annotations

import re

_BOXED_COMMAND = re.compile(r"\\(?:boxed|fbox)\s*\{")
_GOLD_HASHES = re.compile(r"####[ \t]*([^\n]*)")

# A number written with thousands separators: "1,234", "-12,345.5", LaTeX "1{,}234" or "1\,234".
_SEPARATOR = r"(?:,|\{,\}|\\,)"
_THOUSANDS_NUMBER = re.compile(rf"[-+]?\d{{1,3}}(?:{_SEPARATOR}\d{{3}})+(?:\.\d+)?")
_SEPARATOR_RE = re.compile(_SEPARATOR)

# Math delimiters that may wrap a whole answer; the longest opener is tried first.
_DELIMITERS = (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$"))


def strip_thousands(text: str) -> str:
    """Remove thousands separators when ``text`` (stripped) is exactly one grouped number.

    ``"1,234,567"`` -> ``"1234567"``, ``"1{,}234"`` -> ``"1234"``; anything else is returned stripped
    but otherwise unchanged, so ``"1,2"`` (a pair or a decimal comma) and ``"(1,234)"`` stay as they are.
    """
    stripped = text.strip()
    if _THOUSANDS_NUMBER.fullmatch(stripped):
        return _SEPARATOR_RE.sub("", stripped)
    return stripped


def last_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced; else None."""
    starts = [m.end() - 1 for m in _BOXED_COMMAND.finditer(text)]  # index of each opening brace
    if not starts:
        return None
    closing = _matching_braces(text, start=starts[0])
    for open_index in reversed(starts):
        close_index = closing.get(open_index)
        if close_index is not None:
            return text[open_index + 1 : close_index].strip()
    return None


_NUMBER = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?|[-+]?\d+(?:\.\d+)?")


def last_number(text: str) -> str | None:
    """The last number written in ``text`` (thousands separators removed), or None.

    A lenient fallback for models that answer in prose ("so 7 + 5 = 12."), as GSM8K evaluations
    of small models often use; the accuracy reward applies it only when asked to.
    """
    found = _NUMBER.findall(text or "")
    return strip_thousands(found[-1]) if found else None


def extract_completion_answer(text: str) -> str | None:
    """The model's final answer in a completion, or None if it gave none.

    Priority: the content of the last ``<answer>...</answer>`` (reduced to its last ``\\boxed{}``
    if it has one); else the last ``\\boxed{...}``; else a GSM8K-style ``#### n`` ending the text.
    An empty answer tag counts as no answer there and falls through to the next rule.
    """
    if not text:
        return None
    content = _last_answer_tag(text)
    if content is not None:
        boxed = last_boxed(content)
        answer = boxed if boxed is not None else content.strip()
        if answer:
            return answer
    boxed = last_boxed(text)
    if boxed:
        return boxed
    return _final_hashes(text)


def _last_answer_tag(text: str) -> str | None:
    """Content of the last ``<answer>...</answer>`` pair, pairing each opener with the next closer.

    (The regex ``<answer>(.*?)</answer>`` finds the same pairs but re-scans the rest of the text
    from every unclosed opener: quadratic, minutes on 100k characters of ``<answer>``.)
    """
    found, pos = None, 0
    while True:
        start = text.find("<answer>", pos)
        if start < 0:
            return found
        end = text.find("</answer>", start + 8)
        if end < 0:  # no closer after this opener, so none after any later one either
            return found
        found, pos = text[start + 8 : end], end + 9


def _final_hashes(text: str) -> str | None:
    """GSM8K's ``#### 72`` when it ends the text (trailing whitespace allowed), else None.

    Linear: only the last line can hold it (a regex search retried from every ``####`` is quadratic).
    """
    body = text.rstrip()
    line = body[body.rfind("\n") + 1 :]
    index = line.find("####")
    if index < 0:
        return None
    return line[index + 4 :].strip() or None


def extract_gold_answer(text: str | int | float | None) -> str | None:
    """The reference answer in a dataset's gold field, or None if it is empty.

    - a worked solution ending in ``#### 1,234`` (GSM8K) -> ``"1234"``;
    - text containing ``\\boxed{...}`` (MATH solutions) -> the last boxed content;
    - a number with thousands separators -> the bare number (``"1,234,567"`` -> ``"1234567"``);
    - anything else (MATH's ``answer`` field: ``\\frac{1}{2}``, ``3\\sqrt{2}``) -> stripped as is.
    """
    if text is None:
        return None
    if isinstance(text, bool):  # bool is an int subclass; True is no math answer
        return None
    if isinstance(text, (int, float)):
        text = str(text)
    if not isinstance(text, str) or not text.strip():
        return None
    hashes = _GOLD_HASHES.findall(text)
    if hashes:
        answer = strip_thousands(hashes[-1])
        return answer or None
    boxed = last_boxed(text)
    if boxed is not None:
        return strip_thousands(boxed) or None
    return strip_thousands(text) or None


def normalize_answer(answer: str) -> str:
    """Light, safe clean-up of an extracted answer before math comparison.

    Removes math delimiters wrapping the whole answer (``$...$``, ``\\(...\\)``, ``\\[...\\]``), a
    final full stop, a leading currency sign (``$18``, ``\\$18``) and thousands separators of a
    bare number. Everything else (units, ``\\text{}``, percent) is left to math-verify.
    """
    text = answer.strip()
    changed = True
    while changed:  # "$\(x\)$" and similar nestings
        changed = False
        for opener, closer in _DELIMITERS:
            if len(text) > len(opener) + len(closer) and text.startswith(opener) and text.endswith(closer):
                text = text[len(opener) : -len(closer)].strip()
                changed = True
                break
    if text.endswith((".", "。")) and not text.endswith(".."):
        text = text[:-1].rstrip()
    text = re.sub(r"^(?:\\\$|\$)\s*(?=[-+]?\d)", "", text)  # currency, not a math delimiter
    return strip_thousands(text)


def _matching_braces(text: str, start: int = 0) -> dict[int, int]:
    """Map each ``{`` at or after ``start`` to its matching ``}`` (escaped ``\\{``/``\\}`` are not braces).

    Starting late is exact: a brace's partner depends only on the text between the two.
    """
    pairs: dict[int, int] = {}
    stack: list[int] = []
    escaped = False
    for index in range(start, len(text)):
        char = text[index]
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "{":
            stack.append(index)
        elif char == "}" and stack:
            pairs[stack.pop()] = index
    return pairs
