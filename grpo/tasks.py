"""Built-in synthetic tasks with verifiable answers.

A task turns ``(n, seed, language, **options)`` into ``n`` rows of the form
``{"prompt": str, "solution": str, "language": str, "task": str, ...}``. Rows are a pure
function of the arguments (each task draws from its own ``random.Random(seed)``), so the same
``synthetic:<task>`` data spec always yields the same rows.

Languages: ``"en"`` (English prompts), ``"zh"`` (prompts written in Chinese) and ``"mixed"``
(rows alternate en, zh, en, zh, ...; the ``language`` column says which one each row is).

Built-in tasks:

``arithmetic``
    "What is 23 + 48?" with the exact integer result as the solution.
    With ``worked=True`` rows also carry a ``completion``: a step-by-step solution in the row's
    language in the R1 format (cold-start SFT data, see "Worked solutions" below).
``countdown``
    Reach a target number from 3-4 given numbers with + - * / and parentheses, each number used
    at most once. ``solution`` holds the target, ``numbers`` the list of numbers and
    ``expression`` one expression that reaches the target (the instance is solvable by
    construction). The matching reward is ``countdown`` in ``rewards/countdown.py``.
    ``worked=True`` adds a ``completion`` as for arithmetic.

Worked solutions (``worked=True``) are R1-format completions,
``<think>step-by-step reasoning</think><answer>result</answer>``, written entirely in the row's
language (English words, or Chinese characters; digits and operator symbols are not words), so
the ``format``, ``language_consistency`` and ``accuracy``/``countdown`` rewards all score them
1.0. Their wording is drawn from a few templates with a second generator seeded from ``seed``,
so the rows themselves are exactly those of ``worked=False`` with one more column.

Add your own with the decorator::

    from grpo.tasks import register_task

    @register_task("copy", description="repeat a word")
    def copy_task(n, seed, language="en", **options):
        ...
        return rows
"""

from __future__ import annotations

import inspect
import random
from dataclasses import dataclass
from typing import Callable

__all__ = ["Task", "register_task", "get_task", "list_tasks", "LANGUAGES"]

#: Values accepted for ``language`` by every built-in task.
LANGUAGES = ("en", "zh", "mixed")


@dataclass(frozen=True)
class Task:
    """A registered task: ``generate(n, seed, language="en", **options) -> list[dict]``."""

    name: str
    generate: Callable[..., list[dict]]
    description: str = ""

    def options(self) -> list[str] | None:
        """Names of the keyword options ``generate`` accepts (None when it takes ``**options``)."""
        params = inspect.signature(self.generate).parameters.values()
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            return None
        return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]

    def __call__(self, n: int, seed: int, language: str = "en", **options) -> list[dict]:
        """Generate rows, after checking ``options`` against the generator's signature."""
        valid = self.options()
        if valid is not None:
            unknown = sorted(set(options) - set(valid))
            if unknown:
                raise ValueError(
                    f"task {self.name!r}: unknown option(s) {', '.join(unknown)}; "
                    f"valid options: {', '.join(valid) or '(none)'}"
                )
        return self.generate(n, seed, language, **options)


_TASKS: dict[str, Task] = {}


def register_task(name: str, description: str = "") -> Callable:
    """Decorator that registers ``fn(n, seed, language="en", **options)`` under ``name``.

    Registering a name twice replaces the earlier task (so a user module can override a
    built-in one). The function itself is returned unchanged.
    """

    def decorator(fn: Callable[..., list[dict]]) -> Callable[..., list[dict]]:
        lines = (fn.__doc__ or "").strip().splitlines()
        _TASKS[name] = Task(name=name, generate=fn, description=description or (lines[0] if lines else ""))
        return fn

    return decorator


def get_task(name: str) -> Task:
    """The task registered under ``name``; ``KeyError`` lists the known tasks."""
    try:
        return _TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(list_tasks())}") from None


def list_tasks() -> list[str]:
    """Names of all registered tasks, sorted."""
    return sorted(_TASKS)


# --------------------------------------------------------------------------------------------
# shared helpers


def _languages(n: int, language: str) -> list[str]:
    """The language of each of ``n`` rows: all the same, or alternating for ``"mixed"``."""
    if language not in LANGUAGES:
        raise ValueError(f"language: expected one of {', '.join(LANGUAGES)}, got {language!r}")
    if language == "mixed":
        return ["en" if i % 2 == 0 else "zh" for i in range(n)]
    return [language] * n


def _check_n(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n: expected a non-negative integer, got {n!r}")


# --------------------------------------------------------------------------------------------
# arithmetic

_ZH_OP_WORDS = {"+": "加", "-": "减", "*": "乘以"}


def _evaluate(terms: list[int], ops: list[str]) -> int:
    """Exact value of ``t0 op0 t1 op1 t2 ...`` with the usual precedence (* before + -)."""
    # Fold multiplications first, then add/subtract left to right.
    values, signs = [terms[0]], []
    for op, term in zip(ops, terms[1:]):
        if op == "*":
            values[-1] *= term
        else:
            values.append(term)
            signs.append(op)
    total = values[0]
    for sign, value in zip(signs, values[1:]):
        total = total + value if sign == "+" else total - value
    return total


def _reads_left_to_right(ops: list[str]) -> bool:
    """True when evaluating left to right gives the right value (no * after a + or -)."""
    return len(ops) == 1 or "*" not in ops or set(ops) == {"*"}


def _zh_words(terms: list[int], ops: list[str]) -> str:
    """``23 加 48 减 5``: the expression with Chinese operator words."""
    return str(terms[0]) + "".join(f" {_ZH_OP_WORDS[op]} {t}" for op, t in zip(ops, terms[1:]))


def _arithmetic_prompt(expression: str, terms: list[int], ops: list[str], language: str) -> str:
    if language == "en":
        return f"What is {expression}?"
    # Chinese: operator words read naturally ("23 加 48 等于多少？") as long as reading left to
    # right gives the right value; with mixed precedence the symbols keep it unambiguous.
    if _reads_left_to_right(ops):
        return f"{_zh_words(terms, ops)} 等于多少？"
    return f"请计算 {expression} 的值。"


# --------------------------------------------------------------------------------------------
# worked solutions

# A step is (left, op, right, result) with op one of + - * /.
Step = tuple[int, str, int, int]

_APPLY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a // b}


def _split(x: int) -> tuple[int, int] | None:
    """``47 -> (40, 7)``: a non-negative number of two or more digits with a non-zero last digit."""
    if x >= 10 and x % 10:
        return x - x % 10, x % 10
    return None


def _no_slip(a: int, op: str, b: int) -> tuple[int, int]:
    return a, b


#: ``slip(a, op, b) -> (a, b)``: the operands a step is actually written with.
Slip = Callable[[int, str, int], tuple[int, int]]


def _step(a: int, op: str, b: int, slip: Slip) -> Step:
    a, b = slip(a, op, b)
    return (a, op, b, _APPLY[op](a, b))


def _operation_steps(a: int, op: str, b: int, slip: Slip = _no_slip) -> list[Step]:
    """Steps that compute ``a op b`` the way one does it in one's head (place values).

    ``slip`` may change the operands a step is written with (worked solutions with a mistake:
    a misread number); each written step is still true arithmetic, and later steps build on
    what was written, so the mistake is carried through to the answer.
    """
    if op == "+" and a < 100 and b < 100 and _split(a) and _split(b):  # two two-digit numbers
        (ah, al), (bh, bl) = _split(a), _split(b)
        tens = _step(ah, "+", bh, slip)
        ones = _step(al, "+", bl, slip)
        return [tens, ones, _step(tens[3], "+", ones[3], slip)]
    if op == "-" and a >= b and _split(b):
        bh, bl = _split(b)
        first = _step(a, "-", bh, slip)
        return [first, _step(first[3], "-", bl, slip)]
    if op == "*" and a >= 2 and _split(b):
        bh, bl = _split(b)
        high, low = _step(a, "*", bh, slip), _step(a, "*", bl, slip)
        return [high, low, _step(high[3], "+", low[3], slip)]
    if op == "*" and b >= 2 and _split(a):
        ah, al = _split(a)
        high, low = _step(ah, "*", b, slip), _step(al, "*", b, slip)
        return [high, low, _step(high[3], "+", low[3], slip)]
    return [_step(a, op, b, slip)]


def _arithmetic_steps(terms: list[int], ops: list[str], slip: Slip = _no_slip) -> list[Step]:
    """Steps for ``t0 op0 t1 ...``: every multiplication first, then + and - left to right.

    The value carried from one step to the next is the step's written result, so a ``slip``
    (see :func:`_operation_steps`) propagates to the end."""
    steps: list[Step] = []
    values, signs = [terms[0]], []
    for op, term in zip(ops, terms[1:]):
        if op == "*":
            steps += _operation_steps(values[-1], "*", term, slip)
            values[-1] = steps[-1][3]
        else:
            values.append(term)
            signs.append(op)
    total = values[0]
    for sign, value in zip(signs, values[1:]):
        steps += _operation_steps(total, sign, value, slip)
        total = steps[-1][3]
    return steps


def _misread(x: int, rng: random.Random) -> int:
    """A plausible misreading of ``x``: a round number off by 10, any other off by 1 or 2."""
    if x and x % 10 == 0:
        choices = [x + 10] + ([x - 10] if x > 10 else [])
    else:
        choices = [y for y in (x - 2, x - 1, x + 1, x + 2) if y >= 0 or x < 0]
    return rng.choice(choices)


def _misread_question(terms: list[int], ops: list[str], rng: random.Random) -> list[int]:
    """``terms`` with one uniformly chosen term misread (see :func:`_misread`); a question whose
    value is not negative keeps a misreading that is not negative either."""
    for _ in range(8):
        i = rng.randrange(len(terms))
        misread = terms[:i] + [_misread(terms[i], rng)] + terms[i + 1 :]
        if _evaluate(terms, ops) < 0 or _evaluate(misread, ops) >= 0:
            return misread
    return terms


def _one_slip(terms: list[int], ops: list[str], rng: random.Random) -> Slip:
    """A ``slip`` that misreads one operand of one uniformly chosen step (see :func:`_misread`).
    Subtractions whose true result is not negative stay that way."""
    count = len(_arithmetic_steps(terms, ops))
    target, side, calls = rng.randrange(count), rng.randrange(2), [0]

    def slip(a: int, op: str, b: int) -> tuple[int, int]:
        calls[0] += 1
        if calls[0] - 1 != target:
            return a, b
        for _ in range(8):
            a2, b2 = (_misread(a, rng), b) if side == 0 else (a, _misread(b, rng))
            if op != "-" or a - b < 0 or a2 - b2 >= 0:
                return a2, b2
        return a, b

    return slip


_EN_OPS = {"+": "+", "-": "-", "*": "*", "/": "/"}
_ZH_OPS = {"+": "加", "-": "减", "*": "乘以", "/": "除以"}
# Step connectors by position: first / middle / last of several; a lone step has none.
_CONNECTORS = {
    "en": (("First", "Start with"), ("Then", "Next"), ("So", "Finally")),
    "zh": (("先算", "首先算"), ("再算", "然后算"), ("所以", "最后算")),
}


def _step_sentence(i: int, count: int, step: Step, language: str, rng: random.Random) -> str:
    """Step ``i`` of ``count`` as a sentence, with a connector when there are several steps."""
    first, middle, last = _CONNECTORS[language]
    lead = "" if count == 1 else rng.choice(first if i == 0 else last if i == count - 1 else middle)
    a, op, b, result = step
    if language == "en":
        body = f"{a} {_EN_OPS[op]} {b} = {result}."
    else:
        body = f"{a} {_ZH_OPS[op]} {b} 等于 {result}。"
    return f"{lead} {body}" if lead else body


def _step_sentences(steps: list[Step], language: str, rng: random.Random) -> list[str]:
    return [_step_sentence(i, len(steps), step, language, rng) for i, step in enumerate(steps)]


def _join(sentences: list[tuple[str, str]]) -> str:
    """``(language, sentence)`` pairs as one text: Chinese sentences follow each other directly,
    a space separates any pair that involves English."""
    text = ""
    for i, (language, sentence) in enumerate(sentences):
        if i and not (language == "zh" and sentences[i - 1][0] == "zh"):
            text += " "
        text += sentence
    return text


def _r1(thought_parts: list[str], answer: str, language: str) -> str:
    return f"<think>{(' ' if language == 'en' else '').join(thought_parts)}</think><answer>{answer}</answer>"


_OTHER_LANGUAGE = {"en": "zh", "zh": "en"}


def _worked_arithmetic(
    terms: list[int],
    ops: list[str],
    expression: str,
    value: int,
    language: str,
    rng: random.Random,
    *,
    noise: random.Random | None = None,
    language_mix: float = 0.0,
    format_rate: float = 1.0,
    error_rate: float = 0.0,
    error_at: str = "step",
) -> str:
    """A step-by-step solution of an arithmetic row: by default R1-format and single-language.

    ``rng`` picks the wording. ``noise`` (needed when an option below is not its default) draws
    the imperfections of a base model's pretraining text: each sentence is written in the other
    language with probability ``language_mix``; the solution is in the R1 format with
    probability ``format_rate`` and otherwise ends in a free-form answer sentence with no tags;
    with probability ``error_rate`` a number is misread: by one step (``error_at="step"``) or
    when the question is restated (``error_at="question"``, and then solved as misread); the
    arithmetic written is right, the answer it leads to is wrong.
    """
    mixed = not _reads_left_to_right(ops)
    slip = _no_slip
    if noise is not None and error_rate and noise.random() < error_rate:
        if error_at == "question":
            terms = _misread_question(terms, ops, noise)
            expression = str(terms[0]) + "".join(f" {op} {t}" for op, t in zip(ops, terms[1:]))
        else:
            slip = _one_slip(terms, ops, noise)
    steps = _arithmetic_steps(terms, ops, slip)
    value = steps[-1][3]  # the true value unless a step slipped

    def lang() -> str:
        if noise is not None and language_mix and noise.random() < language_mix:
            return _OTHER_LANGUAGE[language]
        return language

    sentences: list[tuple[str, str]] = []
    opening = lang()
    if opening == "en":
        sentences.append(("en", rng.choice(("We need {e}.", "Let's work out {e}.", "We want the value of {e}.")).format(e=expression)))
    else:
        shown = expression if mixed else _zh_words(terms, ops)
        sentences.append(("zh", rng.choice(("我们要计算 {e}。", "这个问题要求 {e} 的值。", "要算出 {e} 等于多少。")).format(e=shown)))
    if mixed:
        note = lang()
        if note == "en":
            sentences.append(("en", rng.choice(("Multiplication comes before addition and subtraction.", "Do the multiplication first."))))
        else:
            sentences.append(("zh", "要先算乘，再算加减。"))
    for i, step in enumerate(steps):
        step_language = lang()
        sentences.append((step_language, _step_sentence(i, len(steps), step, step_language, rng)))
    closing = lang()
    if closing == "en":
        sentences.append(("en", rng.choice(("The answer is {v}.", "The result is {v}.", "Therefore the value is {v}.")).format(v=value)))
    else:
        sentences.append(("zh", rng.choice(("答案是 {v}。", "最终结果是 {v}。", "因此答案是 {v}。")).format(v=value)))
    if noise is not None and format_rate < 1.0 and noise.random() >= format_rate:
        return _join(sentences)
    return f"<think>{_join(sentences)}</think><answer>{value}</answer>"


@register_task("arithmetic", description="integer arithmetic: 'What is 23 + 48?' -> '71'")
def arithmetic(
    n: int,
    seed: int,
    language: str = "en",
    *,
    min_value: int = 1,
    max_value: int = 100,
    num_terms: int = 2,
    ops: str = "+-",
    allow_negative: bool = True,
    worked: bool = False,
    language_mix: float = 0.0,
    format_rate: float = 1.0,
    error_rate: float = 0.0,
    error_at: str = "step",
) -> list[dict]:
    """Integer expressions over ``num_terms`` numbers in ``[min_value, max_value]``.

    ``ops`` is a string of operators drawn from ``+``, ``-`` and ``*`` (``*`` binds tighter, as
    usual). With ``allow_negative=False`` results below zero are redrawn. Rows carry an extra
    ``expression`` column (``"23 + 48"``). ``worked=True`` adds a ``completion`` column with a
    step-by-step solution in the R1 format, e.g. ``<think>We need 23 + 48. First 20 + 40 = 60.
    Then 3 + 8 = 11. So 60 + 11 = 71. The answer is 71.</think><answer>71</answer>``.

    Three options (with ``worked=True`` only) make the worked solutions look like the raw text a
    base model learns from rather than curated cold-start data (``grpo.lab`` pretrains on them):
    ``language_mix`` is the probability that each sentence is written in the other language
    (English <-> Chinese), ``format_rate`` the share of solutions in the R1 format (the others
    end in a free-form answer sentence, "The answer is 71." / "答案是 71。", with no tags), and
    ``error_rate`` the share of solutions that misread a number (``23`` as ``24`` or ``25``, ``40``
    as ``50``): with ``error_at="step"`` one step works on it (``3 + 9`` for ``3 + 8``), with
    ``error_at="question"`` the question is restated with it ("We need 24 + 48.") and solved as
    misread. Either way every ``a op b = c`` written stays true arithmetic and the final answer
    is wrong. The ``solution`` column always holds the true value.
    """
    _check_n(n)
    for name, rate in (("language_mix", language_mix), ("format_rate", format_rate), ("error_rate", error_rate)):
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
            raise ValueError(f"task 'arithmetic': {name} must be a number in [0, 1], got {rate!r}")
    if error_at not in ("step", "question"):
        raise ValueError(f"task 'arithmetic': error_at must be 'step' or 'question', got {error_at!r}")
    if not worked and (language_mix, format_rate, error_rate) != (0.0, 1.0, 0.0):
        raise ValueError("task 'arithmetic': language_mix, format_rate and error_rate shape worked solutions; set worked: true")
    if not ops or set(ops) - set("+-*"):
        raise ValueError(f"task 'arithmetic': ops must be made of '+', '-' and '*', got {ops!r}")
    if num_terms < 2:
        raise ValueError(f"task 'arithmetic': num_terms must be at least 2, got {num_terms}")
    if min_value > max_value:
        raise ValueError(f"task 'arithmetic': min_value {min_value} is greater than max_value {max_value}")
    if not allow_negative and min_value < 0:
        raise ValueError("task 'arithmetic': allow_negative=false needs min_value >= 0")
    rng = random.Random(seed)
    wording = random.Random(f"worked:{seed}")  # separate, so worked rows equal unworked ones
    noise = random.Random(f"noise:{seed}")  # separate again, so the options leave the wording alone
    op_choices = sorted(set(ops))
    rows = []
    for lang in _languages(n, language):
        while True:
            terms = [rng.randint(min_value, max_value) for _ in range(num_terms)]
            chosen = [rng.choice(op_choices) for _ in range(num_terms - 1)]
            value = _evaluate(terms, chosen)
            if allow_negative or value >= 0:
                break
        expression = str(terms[0]) + "".join(f" {op} {t}" for op, t in zip(chosen, terms[1:]))
        row = {
            "prompt": _arithmetic_prompt(expression, terms, chosen, lang),
            "solution": str(value),
            "language": lang,
            "task": "arithmetic",
            "expression": expression,
        }
        if worked:
            row["completion"] = _worked_arithmetic(
                terms, chosen, expression, value, lang, wording,
                noise=noise, language_mix=language_mix, format_rate=format_rate, error_rate=error_rate, error_at=error_at,
            )
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------
# countdown


def _random_expression(rng: random.Random, numbers: list[int]) -> tuple[str, int] | None:
    """Combine all ``numbers`` (in the given order) with random operators and bracketing.

    Returns ``(text, value)`` with an integer value, or None when the draw hit an inexact
    division or a non-positive intermediate (the caller draws again).
    """
    # Each item: (text, value, is_atom). Merge two neighbours at a time until one is left.
    items = [(str(x), x, True) for x in numbers]
    while len(items) > 1:
        i = rng.randrange(len(items) - 1)
        (lt, lv, la), (rt, rv, ra) = items[i], items[i + 1]
        op = rng.choice("+-*/")
        if op == "+":
            value = lv + rv
        elif op == "-":
            value = lv - rv
        elif op == "*":
            value = lv * rv
        else:
            if rv == 0 or lv % rv != 0:
                return None
            value = lv // rv
        if value <= 0:
            return None
        left = lt if la else f"({lt})"
        right = rt if ra else f"({rt})"
        items[i : i + 2] = [(f"{left} {op} {right}", value, False)]
    return items[0][0], items[0][1]


def _expression_steps(expression: str) -> list[Step]:
    """The binary operations of a generated countdown expression, innermost first, left to right."""
    import ast

    ops = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
    steps: list[Step] = []

    def walk(node) -> int:
        if isinstance(node, ast.Constant):
            return node.value
        left, right = walk(node.left), walk(node.right)
        op = ops[type(node.op)]
        result = _APPLY[op](left, right)
        steps.append((left, op, right, result))
        return result

    walk(ast.parse(expression, mode="eval").body)
    return steps


def _worked_countdown(numbers: list[int], target: int, expression: str, language: str, rng: random.Random) -> str:
    """An R1-format, single-language solution of a countdown row; the answer is the expression."""
    steps = _step_sentences(_expression_steps(expression), language, rng)
    if language == "en":
        listed = ", ".join(str(x) for x in numbers)
        parts = [rng.choice(("We need to reach {t} from {n}.", "The numbers are {n} and the target is {t}.")).format(t=target, n=listed)]
        parts += steps
        parts.append(rng.choice(("That reaches {t}, using each number once.", "This gives the target {t}.")).format(t=target))
    else:
        listed = "、".join(str(x) for x in numbers)
        parts = [rng.choice(("我们要用 {n} 得到 {t}。", "已知数字 {n}，目标是 {t}。")).format(t=target, n=listed)]
        parts += steps
        parts.append(rng.choice(("这样就得到了 {t}，每个数字只用了一次。", "所以可以得到目标 {t}。")).format(t=target))
    return _r1(parts, expression, language)


def _countdown_prompt(numbers: list[int], target: int, language: str) -> str:
    listed = ", ".join(str(x) for x in numbers)
    if language == "en":
        return (
            f"Numbers: {listed}. Target: {target}. Write one arithmetic expression that equals "
            f"{target}, using only these numbers (each at most once), the operations + - * / "
            f"and parentheses. Give the expression as your final answer."
        )
    listed_zh = "、".join(str(x) for x in numbers)
    return (
        f"给定数字 {listed_zh}，目标是 {target}。请只用这些数字（每个数字最多使用一次）、"
        f"加减乘除运算符（+ - * /）和括号，写出一个结果等于 {target} 的算式，并把这个算式作为最终答案。"
    )


@register_task("countdown", description="reach a target from 3-4 numbers with + - * /")
def countdown(
    n: int,
    seed: int,
    language: str = "en",
    *,
    min_numbers: int = 3,
    max_numbers: int = 4,
    min_value: int = 1,
    max_value: int = 100,
    max_target: int = 1000,
    worked: bool = False,
) -> list[dict]:
    """Solvable Countdown puzzles.

    Draws ``min_numbers``-``max_numbers`` integers in ``[min_value, max_value]``, combines all
    of them into a random expression whose every intermediate value is a positive integer, and
    uses its value as the target (kept in ``[1, max_target]`` and different from each given
    number). The numbers are shown in a shuffled order. Extra columns: ``numbers`` (list of
    int) and ``expression`` (a reference solution); with ``worked=True`` also ``completion``, a
    step-by-step R1-format solution whose answer is ``expression``.
    """
    _check_n(n)
    if not 2 <= min_numbers <= max_numbers:
        raise ValueError(
            f"task 'countdown': need 2 <= min_numbers <= max_numbers, got {min_numbers} and {max_numbers}"
        )
    if not 1 <= min_value <= max_value:
        raise ValueError(f"task 'countdown': need 1 <= min_value <= max_value, got {min_value} and {max_value}")
    if max_target < 1:
        raise ValueError(f"task 'countdown': max_target must be positive, got {max_target}")
    rng = random.Random(seed)
    wording = random.Random(f"worked:{seed}")  # separate, so worked rows equal unworked ones
    rows = []
    for lang in _languages(n, language):
        for _attempt in range(10_000):
            count = rng.randint(min_numbers, max_numbers)
            numbers = [rng.randint(min_value, max_value) for _ in range(count)]
            drawn = _random_expression(rng, numbers)
            if drawn is None:
                continue
            expression, target = drawn
            if target <= max_target and target not in numbers:
                break
        else:  # pragma: no cover - only with very narrow option ranges
            raise ValueError("task 'countdown': could not build a puzzle with these options; widen the ranges")
        shown = numbers[:]
        rng.shuffle(shown)
        row = {
            "prompt": _countdown_prompt(shown, target, lang),
            "solution": str(target),
            "language": lang,
            "task": "countdown",
            "numbers": shown,
            "expression": expression,
        }
        if worked:
            row["completion"] = _worked_countdown(shown, target, expression, lang, wording)
        rows.append(row)
    return rows
