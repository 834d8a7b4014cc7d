"""Prompt templates: turn a data row into the text the policy model sees.

Three kinds are built in, kept in the :data:`TEMPLATES` registry (add your own with
:func:`register_template`):

``chat``
    The tokenizer's own chat template: an optional ``system`` message, then the user prompt,
    rendered with ``add_generation_prompt=True``. Needs a tokenizer that has a chat template.
``r1``
    The plain-text DeepSeek-R1-Zero template (reasoning in ``<think>`` tags, answer in
    ``<answer>`` tags), for base models without a chat template. Rows whose ``language`` is
    Chinese (``zh``, ``zh-CN``, ...) get a Chinese translation of it. A ``system`` text, when
    given, replaces the template's opening description.
``plain``
    The prompt itself (after the optional ``system`` text and a blank line).

Common options (see :class:`TemplateSpec`): ``instruction`` is appended to the user prompt on a
new line (e.g. ``"Put your final answer within \\boxed{}."``); ``open_think`` ends the text
with an opening ``<think>`` tag so that generation starts inside the reasoning block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from grpo.registry import registrar

__all__ = [
    "TemplateSpec",
    "TEMPLATES",
    "register_template",
    "render_prompt",
    "render_prompts",
    "R1_TEMPLATE",
    "R1_TEMPLATE_ZH",
    "user_text",
    "is_chinese",
]


@dataclass
class TemplateSpec:
    """How prompts are rendered (the ``template:`` section of a recipe)."""

    # Registered template kind: "chat" (tokenizer chat template), "r1" (R1-Zero plain text), "plain".
    kind: str = "chat"
    # System text: a system message for "chat", replaces the opening description for "r1",
    # printed before the prompt for "plain". None: no system text / the template's own.
    system: str | None = None
    # Text appended to every user prompt on a new line, e.g. "Put your final answer within \\boxed{}.".
    instruction: str | None = None
    # End the rendered text with "<think>" so the model starts inside its reasoning block.
    open_think: bool = False

    def __post_init__(self) -> None:
        if self.kind not in TEMPLATES:
            raise ValueError(f"kind: unknown template {self.kind!r}; known templates: {', '.join(sorted(TEMPLATES))}")


#: Renderer signature: ``(row, spec, tokenizer) -> str``.
Renderer = Callable[[dict, TemplateSpec, Any], str]

#: Registered template kinds, by name.
TEMPLATES: dict[str, Renderer] = {}


#: ``@register_template(name)`` on ``fn(row, spec, tokenizer) -> str``, template kind ``name``. The
#: renderer receives the whole row (``prompt``, ``language``, ...) and the spec, and honours
#: ``spec.system``, ``spec.instruction`` (see :func:`user_text`) and ``spec.open_think``.
register_template = registrar(TEMPLATES)


# The R1-Zero template (DeepSeek-R1 paper, Table 1). {prompt} is the user question.
R1_TEMPLATE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user "
    "with the answer. The reasoning process and answer are enclosed within <think> </think> and "
    "<answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> "
    "<answer> answer here </answer>. User: {prompt}. Assistant:"
)

# Our Chinese translation of the same template, used for rows whose language is Chinese.
R1_TEMPLATE_ZH = (
    "这是用户与助手之间的对话。用户提出一个问题，助手来解答。助手先在脑海中思考推理过程，然后向用户给出答案。"
    "推理过程和答案分别写在 <think> </think> 和 <answer> </answer> 标签内，即 <think> 推理过程 </think> "
    "<answer> 答案 </answer>。用户：{prompt}。助手："
)

# The part of each template before "User:"/"用户：", which a custom `system` text replaces.
_R1_HEADS = {
    R1_TEMPLATE: R1_TEMPLATE[: R1_TEMPLATE.index("User:")],
    R1_TEMPLATE_ZH: R1_TEMPLATE_ZH[: R1_TEMPLATE_ZH.index("用户：")],
}


def is_chinese(language: Any) -> bool:
    """True for language tags such as ``zh``, ``zh-CN``, ``zh_Hans`` (case-insensitive)."""
    return isinstance(language, str) and language.strip().lower().replace("_", "-").split("-")[0] == "zh"


def user_text(row: dict, spec: TemplateSpec) -> str:
    """The user's message: the row's ``prompt``, plus ``spec.instruction`` on a new line."""
    prompt = row.get("prompt")
    if not isinstance(prompt, str):
        raise ValueError(f"template {spec.kind!r}: row has no string 'prompt' (columns: {', '.join(row)})")
    return f"{prompt}\n{spec.instruction}" if spec.instruction else prompt


def _open_think(text: str, spec: TemplateSpec, sep: str) -> str:
    """Append "<think>" when asked (once: templates that already open it are left alone)."""
    if not spec.open_think or text.rstrip().endswith("<think>"):
        return text
    return text + ("" if not text or text[-1].isspace() else sep) + "<think>"


@register_template("r1")
def _render_r1(row: dict, spec: TemplateSpec, tokenizer: Any = None) -> str:
    template = R1_TEMPLATE_ZH if is_chinese(row.get("language")) else R1_TEMPLATE
    if spec.system is not None:
        template = spec.system.rstrip() + " " + template[len(_R1_HEADS[template]) :]
    return _open_think(template.replace("{prompt}", user_text(row, spec)), spec, " ")


@register_template("plain")
def _render_plain(row: dict, spec: TemplateSpec, tokenizer: Any = None) -> str:
    text = user_text(row, spec)
    if spec.system:
        text = f"{spec.system}\n\n{text}"
    return _open_think(text, spec, "\n")


@register_template("chat")
def _render_chat(row: dict, spec: TemplateSpec, tokenizer: Any = None) -> str:
    from grpo.models import ModelError  # a ValueError; the CLI prints it as one line

    if tokenizer is None:
        raise ModelError(
            "template 'chat' needs a tokenizer with a chat template; none was given — use template: r1 or plain"
        )
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ModelError(
            f"template 'chat' needs a tokenizer with a chat template; model {name!r} has none — "
            "use template: r1 or plain"
        )
    messages = []
    if spec.system:
        messages.append({"role": "system", "content": spec.system})
    messages.append({"role": "user", "content": user_text(row, spec)})
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # The generation prompt is where the assistant's turn starts: "<think>" goes right after it.
    return _open_think(text, spec, "")


def render_prompt(row: dict, spec: TemplateSpec, tokenizer: Any = None) -> str:
    """Render one row (needs ``row["prompt"]``; ``row["language"]`` picks the r1 variant)."""
    try:
        renderer = TEMPLATES[spec.kind]
    except KeyError:
        raise ValueError(f"unknown template {spec.kind!r}; known templates: {', '.join(sorted(TEMPLATES))}") from None
    return renderer(row, spec, tokenizer)


def render_prompts(rows: list[dict], spec: TemplateSpec, tokenizer: Any = None) -> list[str]:
    """:func:`render_prompt` for every row, in order."""
    return [render_prompt(row, spec, tokenizer) for row in rows]
