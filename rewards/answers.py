"""Pull final answers out of model completions and gold solutions (pure string work, no sympy).

A completion's final answer is a :class:`FinalAnswer`: the text math-verify compares with the gold,
and the separate candidates it offers (``alternatives``), so that the accuracy reward can refuse a
hedge ("17 or 18", ``\\boxed{17}\\boxed{18}``) without losing answers that are lists by nature
(a set, a tuple, ``x = 1, y = 2``).

Everything here runs in linear time on the input, so a 100k-character completion costs
milliseconds: brace matching is a single stack pass, never a re-scan per ``\\boxed``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_BOXED_COMMAND = re.compile(r"\\(?:boxed|fbox)\s*\{")
_GOLD_HASHES = re.compile(r"####[ \t]*([^\n]*)")

# A number written with thousands separators: "1,234", "-12,345.5", LaTeX "1{,}234", "1\,234",
# "1,\!234", "1 234".
_SEPARATOR = r"(?:,\\!\s?|\{,\}|\\,|,|\\ | )"
_THOUSANDS_NUMBER = re.compile(rf"[-+]?[1-9]\d{{0,2}}(?:{_SEPARATOR}\d{{3}})+(?:\.\d+)?")
_SEPARATOR_RE = re.compile(_SEPARATOR)
# Separators only LaTeX thousands use ("14{,}916", "32,\! 349"): joined wherever they appear.
_LATEX_THOUSANDS = re.compile(r"(?<=\d)(?:\{,\}|,\\!\s?|\\,)(?=\d{3}(?!\d))")

# Math delimiters that may wrap a whole answer; the longest opener is tried first.
_DELIMITERS = (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$"))

#: ``answer_extraction`` modes of the accuracy reward.
EXTRACTION_MODES = ("strict", "any")


@dataclass(frozen=True)
class FinalAnswer:
    """A final answer as the accuracy reward judges it.

    ``text`` is compared with the gold as a whole (several boxes of one answer are joined with
    ", ", so ``\\boxed{1}, \\boxed{2}`` reads as the list ``1, 2``). ``alternatives`` are the
    separate candidates it offers (one entry when it offers one): its boxes, answer tags, and the
    items of a short list or a disjunction. ``disjunctive`` says some of them are offered as
    alternatives to each other ("or", ``\\lor``, several answer tags that disagree) rather than
    as the items of one answer. ``source`` says where it was found: ``answer_tag``, ``boxed``,
    ``hashes`` (GSM8K's ``#### n``), ``line`` (``answer_extraction: any``) or ``text``.
    """

    text: str
    alternatives: tuple[str, ...]
    disjunctive: bool = False
    source: str = "text"

    @classmethod
    def from_text(cls, text: str, source: str = "text") -> FinalAnswer:
        """An answer given as plain text (a bare prediction, an answer tag's content)."""
        alternatives, disjunctive = split_alternatives(text)
        return cls(text.strip(), tuple(alternatives), disjunctive, source)


def strip_thousands(text: str) -> str:
    """Remove thousands separators when ``text`` (stripped) is exactly one grouped number.

    ``"1,234,567"`` -> ``"1234567"``, ``"1{,}234"`` -> ``"1234"``, ``"1 000"`` -> ``"1000"``;
    anything else is returned stripped but otherwise unchanged, so ``"1,2"`` (a pair or a decimal
    comma) and ``"(1,234)"`` stay as they are.
    """
    stripped = text.strip()
    if _THOUSANDS_NUMBER.fullmatch(stripped):
        return _SEPARATOR_RE.sub("", stripped)
    return stripped


def last_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced; else None."""
    boxes = _boxes(text)
    return text[boxes[-1][1] : boxes[-1][2]].strip() if boxes else None


_NUMBER = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?|[-+]?\d+(?:\.\d+)?")


def last_number(text: str) -> str | None:
    """The last number written in ``text`` (thousands separators removed), or None.

    A lenient fallback for models that answer in prose ("so 7 + 5 = 12."), as GSM8K evaluations
    of small models often use; the accuracy reward applies it only when asked to.
    """
    found = _NUMBER.findall(text or "")
    return strip_thousands(found[-1]) if found else None


# --------------------------------------------------------------------------------------------
# the final answer of a completion


def final_answer(text: str, mode: str = "strict") -> FinalAnswer | None:
    """The completion's final answer, or None if it gave none.

    ``strict`` (R1's rule) reads only delimited answers, in this order:

    1. the ``<answer>...</answer>`` tags: the last tag's answer (its boxes, if it has any, else
       its text); several tags that disagree are kept as alternatives to each other;
    2. else the final group of ``\\boxed{}`` answers: the last box and the boxes before it that
       only short connectors separate (``\\boxed{1}, \\boxed{2}``, ``\\boxed{17} or \\boxed{18}``,
       ``$\\boxed{(2,2)} \\quad \\text{and} \\quad \\boxed{(6,2)}$``); a box followed by more
       reasoning and then another box is a corrected answer, and only the last group counts;
    3. else a GSM8K-style ``#### n`` ending the text.

    ``any`` falls back, when none of these is present, to the end of the text as plain
    math-verify reads it (its "final answer is" anchors, else the last expression), with the
    candidates of the final clause (after the last "the answer is" / "therefore", else the last
    sentence with math).
    An empty answer tag counts as no answer there and falls through to the next rule.
    """
    if mode not in EXTRACTION_MODES:
        raise ValueError(f"answer_extraction must be one of {', '.join(EXTRACTION_MODES)}, got {mode!r}")
    if not text:
        return None
    tagged = [a for a in (_tag_answer(content) for content in _answer_tags(text)) if a is not None]
    if tagged:
        last = tagged[-1]
        distinct = list(dict.fromkeys(normalize_answer(a.text) for a in tagged))
        if len(distinct) > 1:  # several answer tags that say different things
            return FinalAnswer(last.text, tuple(distinct), True, "answer_tag")
        return last
    group = _final_box_group(text)
    if group is not None:
        return _from_boxes(*group, "boxed")
    hashes = _final_hashes(text)
    if hashes is not None:
        return FinalAnswer.from_text(strip_thousands(hashes), "hashes")
    if mode == "any" and _MATH_CHARS.search(text):
        # math-verify's own extraction reads the end of the text (its "final answer is" anchors,
        # else the last expression); the candidates are those of the final clause.
        anchors = [m.start() for m in _ANSWER_ANCHOR.finditer(text, max(0, len(text) - 4 * _ANY_MODE_TAIL))]
        start = anchors[-1] if anchors else len(text) - _ANY_MODE_TAIL
        tail = text[max(0, start) :][:_ANY_MODE_TAIL].strip()
        alternatives, disjunctive = split_alternatives(tail)
        return FinalAnswer(tail, tuple(alternatives), disjunctive, "text")
    return None


def extract_completion_answer(text: str, mode: str = "strict") -> str | None:
    """The text of the completion's :func:`final_answer` (what is compared with the gold), or None."""
    answer = final_answer(text, mode)
    return answer.text if answer is not None else None


def _tag_answer(content: str) -> FinalAnswer | None:
    """The answer inside one answer tag: all its boxes if it has any, else its text."""
    boxes = _boxes(content)
    if boxes:
        parts = [content[start:close].strip() for _, start, close in boxes]
        gaps = [content[boxes[i][2] + 1 : boxes[i + 1][0]] for i in range(len(boxes) - 1)]
        if any(parts):
            return _from_boxes(parts, any(_DISJUNCTION.search(g) for g in gaps), "answer_tag")
    if not content.strip():
        return None
    return FinalAnswer.from_text(content, "answer_tag")


def _from_boxes(parts: list[str], disjunctive_gaps: bool, source: str) -> FinalAnswer | None:
    parts = [p for p in parts if p]
    if not parts:
        return None
    alternatives: list[str] = []
    disjunctive = disjunctive_gaps
    for part in parts:
        split, part_disjunctive = split_alternatives(part)
        alternatives.extend(split)
        disjunctive = disjunctive or part_disjunctive
    text = parts[0] if len(parts) == 1 else ", ".join(parts)
    return FinalAnswer(text, tuple(alternatives), disjunctive, source)


def _boxes(text: str) -> list[tuple[int, int, int]]:
    """Outermost complete boxes as ``(command start, content start, closing brace)``."""
    starts = [(m.start(), m.end() - 1) for m in _BOXED_COMMAND.finditer(text)]
    if not starts:
        return []
    closing = _matching_braces(text, start=starts[0][1])
    boxes: list[tuple[int, int, int]] = []
    for command, brace in starts:
        close = closing.get(brace)
        if close is None or (boxes and command < boxes[-1][2]):  # unclosed, or inside the previous box
            continue
        boxes.append((command, brace + 1, close))
    return boxes


# What may stand between two boxes of one answer: spaces, punctuation, math delimiters, spacing
# commands, a short \text{...}, "and"/"or", a short name with "=" ("x = \boxed{1}, y = \boxed{2}")
# and at most two other words ("\boxed{1} papers and \boxed{2} bins").
_CONNECTOR = re.compile(
    r"(?:\s|[,;:.&]|\$|\\[()\[\]]|\\\\|\\[,;!]|\\q?quad\b|\\(?:text|textrm|mbox|mathrm)\s*\{[^{}]*\}"
    r"|\b(?:and|or)\b|\\(?:lor|vee|wedge|land)\b|和|或|及|以及|、|，|；"
    r"|[A-Za-z](?:_\{?\w{1,3}\}?)?\s*=)*"
)
_MAX_CONNECTOR = 60
_MAX_CONNECTOR_WORDS = 2
_CONNECTOR_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,12}\b")


def _final_box_group(text: str) -> tuple[list[str], bool] | None:
    """The contents of the final group of boxes, and whether "or" joins any two of them."""
    boxes = _boxes(text)
    if not boxes:
        return None
    first, disjunctive = len(boxes) - 1, False
    while first > 0:
        gap = text[boxes[first - 1][2] + 1 : boxes[first][0]]
        if len(gap) > _MAX_CONNECTOR or "\n\n" in gap or not _is_connector(gap):
            break
        disjunctive = disjunctive or bool(_DISJUNCTION.search(gap))
        first -= 1
    parts = [text[start:close].strip() for _, start, close in boxes[first:]]
    return (parts, disjunctive) if any(parts) else None


def _is_connector(gap: str) -> bool:
    words = [w for w in _CONNECTOR_WORD.findall(gap) if w.lower() not in ("and", "or")]
    if len(words) > _MAX_CONNECTOR_WORDS:
        return False
    return _CONNECTOR.fullmatch(_CONNECTOR_WORD.sub(lambda m: " " if m.group().lower() not in ("and", "or") else m.group(), gap)) is not None


def _answer_tags(text: str) -> list[str]:
    """Contents of the ``<answer>...</answer>`` pairs, pairing each opener with the next closer.

    (The regex ``<answer>(.*?)</answer>`` finds the same pairs but re-scans the rest of the text
    from every unclosed opener: quadratic, minutes on 100k characters of ``<answer>``.)
    """
    found: list[str] = []
    pos = 0
    while True:
        start = text.find("<answer>", pos)
        if start < 0:
            return found
        end = text.find("</answer>", start + 8)
        if end < 0:  # no closer after this opener, so none after any later one either
            return found
        found.append(text[start + 8 : end])
        pos = end + 9


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


_MATH_CHARS = re.compile(r"\d|\\[A-Za-z]+|\$[^$]")
# How much of the end of an undelimited completion ``answer_extraction: any`` hands to math-verify.
_ANY_MODE_TAIL = 1500
# "The final answer is", "Answer:": where an undelimited answer is stated.
_ANSWER_ANCHOR = re.compile(r"final answer|answer\s*(?:is|:)|答案", re.IGNORECASE)


# --------------------------------------------------------------------------------------------
# the candidates an answer offers


# "or" in any notation: words, logic, \text{ or }; Chinese 或(者).
_DISJUNCTION = re.compile(r"\bor\b|\\lor\b|\\vee\b|或者?|\bou\b|\boder\b", re.IGNORECASE)
_ASIDE_OR = re.compile(r"\(\s*(?:or|either)\b", re.IGNORECASE)
_TEXT_CONNECTIVE = re.compile(r"\\(?:text|textrm|textbf|mbox|mathrm)\s*\{\s*(and|or|,)\s*\}", re.IGNORECASE)
# Separators of the items of a short list (top level only): commas not inside a number, ";",
# newlines, "and", LaTeX line breaks and quads, Chinese list punctuation.
_LIST_SEPARATOR = re.compile(
    r"(?<!\d),|,(?!\d)|;|\n|\\\\|\\q?quad\b|\band\b|\\land\b|\\wedge\b|和|及|、|，|；|\bet\b|\bund\b",
    re.IGNORECASE,
)
# Phrases after which the rest of a sentence is the answer itself.
_FINAL_MARKER = re.compile(
    r"(?:final answer|answer|result)\s*(?:is|:|=|would be|will be)|\btherefore\b|\bthus\b|\bhence\b|\\therefore"
    r"|答案(?:是|为|：|:)|所以|因此|故",
    re.IGNORECASE,
)
_LATEX_WORD = re.compile(r"\\[A-Za-z]+")
# A sentence ends at a full stop before a space and a capital, at a blank line or a 。 (decimals, "e.g."
# and "$x.$" mid-sentence do not end one).
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+(?=[A-Z\u3400-\u9fff])|[.!?]\s*$|\n\s*\n|。")
_LONG_TEXT = 200
_WORD = re.compile(r"[A-Za-z]{2,}")
_CJK = re.compile(r"[\u3400-\u9fff]")
_SEPARATOR_WORDS = frozenset({"and", "or", "et", "ou", "und", "oder"})
# A short answer ("17 and 18", "x = 3 or x = -3", "18 dollars") has at most this many words; a
# longer one is prose, where commas and "and" join clauses rather than answers.
_MAX_SHORT_WORDS = 3
_MAX_SHORT_CJK = 6


def split_alternatives(text: str) -> tuple[list[str], bool]:
    """The candidates a piece of answer text offers, and whether "or" offers any of them.

    The answer is first cut to what follows its last "the answer is" / "therefore" / "所以" (when
    something follows), so a sentence of working before the answer does not count as candidates.
    A short answer is split at top-level list separators (commas not inside a number, ";", newlines,
    "and", ``\\quad``, 、) and at "or" in any notation (``or``, ``\\lor``, ``\\vee``, 或); prose is split
    at "or" only. Brackets, braces and ``\\{...\\}`` protect what they hold: ``(1, 2)`` and
    ``\\{1, 2\\}`` stay whole. ``"17 and 18"`` -> ``(["17", "18"], False)``; ``"17 \\lor 18"`` ->
    ``(["17", "18"], True)``; ``"\\frac{1}{2}"`` -> ``(["\\frac{1}{2}"], False)``.
    """
    text = _TEXT_CONNECTIVE.sub(lambda m: f" {m.group(1)} ", _LATEX_THOUSANDS.sub("", text))
    text = _ASIDE_OR.sub(r" or (", text)  # "18 (or maybe 17)": the aside offers an alternative
    text = _final_clause(text)
    bare = _LATEX_WORD.sub(" ", text)
    words = [w for w in _WORD.findall(bare) if w.lower() not in _SEPARATOR_WORDS]
    prose = len(words) > _MAX_SHORT_WORDS or len(_CJK.findall(bare)) > _MAX_SHORT_CJK
    pieces, disjunctive = _split_top_level(text, lists=not prose)
    pieces = [p for p in (_strip_piece(p) for p in pieces) if p]
    return (pieces or [text.strip()]), disjunctive and len(pieces) > 1


def offers_alternatives(text: str) -> bool:
    """True when ``text`` says "or" in some notation (``or``, ``\\lor``, ``\\vee``, 或)."""
    return _DISJUNCTION.search(_TEXT_CONNECTIVE.sub(lambda m: f" {m.group(1)} ", text)) is not None


def _final_clause(text: str) -> str:
    """The sentence that states the answer: what follows the last final-answer marker up to the
    end of its sentence, when that holds a number or some math; else the text itself, or, for a
    long text, its last sentence that holds math."""
    last = None
    for last in _FINAL_MARKER.finditer(text):
        pass
    if last is not None:
        rest = _SENTENCE_END.split(text[last.end() :], maxsplit=1)[0]
        if _MATH_CHARS.search(rest):
            return rest
    if len(text) <= _LONG_TEXT:
        return text
    sentences = [s for s in _SENTENCE_END.split(text) if _MATH_CHARS.search(s)]
    return sentences[-1] if sentences else text


def _split_top_level(text: str, *, lists: bool) -> tuple[list[str], bool]:
    """Split at separators outside every bracket pair; True when an "or" was among them."""
    depth_at = _depths(text)
    separators = [(m.start(), m.end(), True) for m in _DISJUNCTION.finditer(text)]
    if lists:
        separators += [(m.start(), m.end(), False) for m in _LIST_SEPARATOR.finditer(text)]
    pieces, start, disjunctive = [], 0, False
    for begin, end, is_or in sorted(separators):
        if begin < start or depth_at[begin] != 0:
            continue
        pieces.append(text[start:begin])
        start = end
        disjunctive = disjunctive or is_or
    pieces.append(text[start:])
    return pieces, disjunctive


def _depths(text: str) -> list[int]:
    """Bracket depth at each character: ``( [ {`` and ``\\{`` open, ``) ] }`` and ``\\}`` close
    (an interval's mixed ``[0, 1)`` balances too)."""
    depths, depth, index = [0] * (len(text) + 1), 0, 0
    while index < len(text):
        depths[index] = depth
        char = text[index]
        if char == "\\" and index + 1 < len(text) and text[index + 1] in "{}":
            depth += 1 if text[index + 1] == "{" else -1 if depth else 0
            depths[index + 1] = depth
            index += 2
            continue
        if char in "([{":
            depth += 1
        elif char in ")]}" and depth:
            depth -= 1
        index += 1
    depths[len(text)] = depth
    return depths


_PIECE_EDGES = re.compile(r"^(?:\s|[,;:.]|\\q?quad\b|\$\s*\$|\\[,;!]|\beither\b)+|(?:\s|[,;:.]|\\q?quad\b|\\[,;!])+$", re.IGNORECASE)


def _strip_piece(piece: str) -> str:
    piece = _PIECE_EDGES.sub("", piece)
    # Unbalanced math delimiters left over from "$17$ or $18$" -> "17$", "$18"
    if piece.count("$") % 2:
        piece = piece.replace("$", "")
    piece = piece.strip()
    return piece if re.search(r"[^\s,;:.$]", piece) else ""


# --------------------------------------------------------------------------------------------
# text answers ("\text{odd}", "\text{(C)}", "Evelyn")

_TEXT_COMMAND = re.compile(r"\\(?:text|textbf|textit|textrm|textsf|texttt|mathrm|mathbf|mathit|mbox|emph)\s*\{([^{}]*)\}")
_MATH_WORDS = frozenset(
    "sqrt sin cos tan cot sec csc arcsin arccos arctan sinh cosh tanh log ln exp pi mod gcd lcm max min det inf "
    "infty infinity frac dfrac tfrac".split()
)


def text_answer(answer: str) -> str | None:
    """The normalised words of an answer that is text, not math; None for a math answer.

    Text answers are a ``\\text{...}`` (or ``\\mathrm{}``, ``\\textbf{}``...) group with no digits
    (``\\text{odd}``, ``\\text{(C)}``, ``\\text{Evelyn}``) or plain words (``odd``, ``neither``).
    Normalising lower-cases, drops the LaTeX wrappers, math delimiters, a final full stop and the
    parentheses of a lone choice letter: ``\\text{(C)}`` -> ``"c"``.
    """
    text = _strip_delimiters(answer)
    wrapped = _TEXT_COMMAND.fullmatch(text) is not None
    if wrapped:
        text = _TEXT_COMMAND.sub(lambda m: m.group(1), text)
    if re.search(r"[\d\\^_=+*/<>]", text):
        return None
    words = re.findall(r"[^\W\d_]+", text)
    if not words:
        return None
    if not wrapped and (max(len(w) for w in words) < 2 or any(w.lower() in _MATH_WORDS for w in words)):
        return None  # "x" or "pi" is math
    if not wrapped and len(words) > _MAX_SHORT_WORDS:
        return None  # a sentence is an explanation, not an answer
    return normalize_text_answer(text)


def normalize_text_answer(answer: str) -> str:
    """Words of an answer, compared for text golds: wrappers, delimiters, case and punctuation gone."""
    text = _TEXT_COMMAND.sub(lambda m: m.group(1), _strip_delimiters(answer))
    text = text.replace("{", "").replace("}", "").replace("~", " ")
    text = re.sub(r"\s+", " ", text).strip().rstrip(".。").strip().lower()
    lone_letter = re.fullmatch(r"\(\s*([^\W\d_])\s*\)", text)
    return lone_letter.group(1) if lone_letter else text


# --------------------------------------------------------------------------------------------
# gold answers and normalisation


def extract_gold_answer(text: str | int | float | None) -> str | None:
    """The reference answer in a dataset's gold field, or None if it is empty.

    - a worked solution ending in ``#### 1,234`` (GSM8K) -> ``"1234"``;
    - text containing ``\\boxed{...}`` (MATH solutions) -> the final group of boxes, joined with
      ", " when there are several (``$\\boxed{1}$ and $\\boxed{-2}$`` -> ``"1, -2"``);
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
    group = _final_box_group(text)
    if group is not None:
        parts = [strip_thousands(p) for p in group[0] if p]
        return ", ".join(parts) or None
    return strip_thousands(text) or None


def _strip_delimiters(answer: str) -> str:
    text = answer.strip()
    changed = True
    while changed:  # "$\(x\)$" and similar nestings
        changed = False
        for opener, closer in _DELIMITERS:
            if len(text) > len(opener) + len(closer) and text.startswith(opener) and text.endswith(closer):
                text = text[len(opener) : -len(closer)].strip()
                changed = True
                break
    return text


def normalize_answer(answer: str) -> str:
    """Light, safe clean-up of an extracted answer before math comparison.

    Removes math delimiters wrapping the whole answer (``$...$``, ``\\(...\\)``, ``\\[...\\]``), a
    final full stop, a leading currency sign (``$18``, ``\\$18``) and thousands separators of a
    bare number (``1,000``, ``1 000``). Everything else (units, ``\\text{}``, percent) is left to
    math-verify.
    """
    text = _strip_delimiters(answer)
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
