"""Templates and jinja, both ways: TokenizerTemplate trains with a tokenizer's own jinja `chat_template`
(`template: auto`), and chat_template_jinja writes an xtune template as one for export.

Official templates rarely mark what to train (`{% generation %}` tags are uncommon), so the trained spans are
found by rendering prefixes: for the i-th assistant message, the text of messages[:i] with the generation
prompt ends where its reply starts, and the text of messages[:i+1] ends after its end-of-turn marker. The
difference is the reply plus the marker, minus trailing whitespace (the separator before the next turn).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from transformers import PreTrainedTokenizerBase

from xtune.errors import ConfigError
from xtune.templates.base import MERGE_SYSTEM_ERROR, Message, Segment, with_system

if TYPE_CHECKING:  # chat.py imports this module to export its templates
    from xtune.templates.chat import ChatTemplate

_PROBE = [{"role": "user", "content": "ping"}, {"role": "assistant", "content": "pong"}]


class TokenizerTemplate:
    name = "auto"

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(
                "data.template is 'auto' but the tokenizer has no chat_template; name a template "
                "instead (xtune's templates: see `xtune list-templates` or the README)"
            )
        self.tokenizer = tokenizer
        self.jinja = tokenizer.chat_template
        self.tool_style = _guess_tool_style(self.jinja)
        probe = self._apply(_PROBE, False)
        self.end_of_turn = probe[probe.rindex("pong") + len("pong") :].strip()

    def _apply(
        self, messages: Sequence[Message], add_generation_prompt: bool, tools: Sequence[dict] | None = None
    ) -> str:
        plain = [{k: m[k] for k in ("role", "content", "tool_calls") if k in m} for m in messages]
        return self.tokenizer.apply_chat_template(
            plain, tools=list(tools) if tools else None, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def render(
        self,
        messages: Sequence[Message],
        add_generation_prompt: bool = False,
        bos: str = "",
        eos: str = "",
        tools: Sequence[dict] | None = None,
        system: str | None = None,
    ) -> list[Segment]:
        messages = with_system(messages, system)
        full = self._apply(messages, add_generation_prompt, tools)
        segments, cursor = [], 0
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self._apply(messages[:i], True, tools)
            after = self._apply(messages[: i + 1], False, tools)
            if not (after.startswith(before) and full.startswith(after)):
                raise ConfigError(
                    "the tokenizer's chat_template renders earlier turns differently once later "
                    "turns exist (it rewrites history), so trained spans cannot be located; "
                    "name an xtune template in data.template instead of 'auto'"
                )
            end = len(after.rstrip())
            segments += [
                Segment(full[cursor : len(before)], False),
                Segment(full[len(before) : end], message.get("loss") is not False),
            ]
            cursor = end
        segments.append(Segment(full[cursor:], False))
        return [s for s in segments if s.text]

    def render_text(
        self,
        messages: Sequence[Message],
        add_generation_prompt: bool = False,
        bos: str = "",
        eos: str = "",
        tools: Sequence[dict] | None = None,
        system: str | None = None,
    ) -> str:
        return self._apply(with_system(messages, system), add_generation_prompt, tools)

    def stop_words_for(self, eos: str | None) -> list[str]:
        return [w for w in dict.fromkeys([self.end_of_turn, eos or ""]) if w]

    def to_jinja(self) -> str:
        return self.jinja


def _guess_tool_style(jinja: str) -> str:
    """How the chat reads calls from a model whose own template writes them (see tool_calls.py)."""
    if "<tool_call>" in jinja:
        return "qwen"
    if "<|plugin|>" in jinja:
        return "internlm2"
    if '"parameters"' in jinja or "ipython" in jinja:
        return "llama3"
    return "react"


def chat_template_jinja(template: ChatTemplate) -> str:
    """An xtune template as a Hugging Face `chat_template` (tools, calls and results included), so exported
    tokenizers format chats exactly as xtune trained them. It reads the same fields as ChatTemplate.render, and each
    tool-call style supplies its own jinja (tool_calls.py)."""
    content = "(message['content'] | trim)" if template.strip_content else "message['content']"
    react, own_message = template.tool_style == "react", template.tools_message is not None
    out = [_jinja(template.prefix), "{% if tools %}" + template.call_style.jinja_tools_text() + "{% endif %}"]
    if template.merge_system:
        out.append("{% set ns = namespace(system='') %}")

    def emit_system(expr: str) -> str:
        if template.merge_system:
            return "{% set ns.system = ns.system + " + _expr(template.system, expr) + " %}"
        return _jinja(template.system, expr)

    def with_tools(expr: str) -> str:  # the system text with the tool list in it, when the list goes there
        return expr if own_message else f"({template.call_style.jinja_system_with_tools(expr)} if tools else {expr})"

    tools_message = (
        "{% if tools %}" + _jinja(template.tools_message, "tools_text") + "{% endif %}" if own_message else ""
    )
    no_system = "{% if not messages or messages[0]['role'] != 'system' %}"
    if template.default_system is not None:
        out.append(no_system + emit_system(with_tools(json.dumps(template.default_system))) + tools_message)
    elif own_message:
        out.append(no_system + tools_message)
    else:
        out.append(no_system + "{% if tools %}" + emit_system(with_tools("''")) + "{% endif %}")
    out.append("{% endif %}{% for message in messages %}")
    system_content = f"({with_tools(content)} if loop.first else {content})"
    first_tools_message = "{% if loop.first %}" + tools_message + "{% endif %}" if own_message else ""
    if template.merge_system:
        raise_if_pending = "{% if ns.system %}{{ raise_exception(" + json.dumps(MERGE_SYSTEM_ERROR) + ") }}{% endif %}"
        out.append("{% if message['role'] == 'system' %}" + raise_if_pending + emit_system(system_content))
        user = _jinja(template.user, f"(ns.system + {content})")
        out.append("{% elif message['role'] == 'user' %}" + user + "{% set ns.system = '' %}")
    else:
        raise_if_pending = ""
        out.append("{% if message['role'] == 'system' %}" + emit_system(system_content) + first_tools_message)
        out.append("{% elif message['role'] == 'user' %}" + _jinja(template.user, content))
    header = _jinja(template.assistant_prefix)
    if template.history_assistant_prefix is not None:
        header = (
            "{% if loop.last %}" + header + "{% else %}" + _jinja(template.history_assistant_prefix) + "{% endif %}"
        )
    header += _jinja(template.reply_prefix)
    end = _jinja(template.assistant_suffix + template.turn_separator)
    if react:  # a reply after an Observation continues the turn; a call leaves it open
        header = "{% if not (loop.previtem is defined and loop.previtem['role'] == 'tool') %}" + header
        header += "{% endif %}"
        end = "{% if not message['tool_calls'] %}" + end + "{% endif %}"
    reply = template.call_style.jinja_reply_with_calls(content) + header + "{{ reply }}"
    out.append("{% elif message['role'] == 'assistant' %}" + raise_if_pending + reply + end)
    if react:
        out.append("{% elif message['role'] == 'tool' %}{{ 'Observation: ' + " + content + " + '\\n' }}")
    elif template.tool is not None:
        tool_open = _jinja(template.tool_open)
        if tool_open:
            tool_open = "{% if loop.first or loop.previtem['role'] != 'tool' %}" + tool_open + "{% endif %}"
        tool_close = _jinja(template.tool_close)
        if tool_close:
            tool_close = "{% if loop.last or loop.nextitem['role'] != 'tool' %}" + tool_close + "{% endif %}"
        tool = tool_open + _jinja(template.tool, content) + tool_close
        out.append("{% elif message['role'] == 'tool' %}" + raise_if_pending + tool)
    out.append("{% endif %}{% endfor %}")
    if template.merge_system:
        out.append(raise_if_pending)
    prompt = _jinja(template.assistant_prefix)
    if react:
        prompt = "{% if not (messages and messages[-1]['role'] == 'tool') %}" + prompt + "{% endif %}"
    finished = "{% else %}" + _jinja(template.suffix) if template.suffix else ""
    out.append("{% if add_generation_prompt %}" + prompt + finished + "{% endif %}")
    return "".join(out)


def _expr(fmt: str, content_expr: str = "''") -> str:
    """A jinja expression for a format string; `content_expr` stands for {content}."""
    parts = []
    for i, piece in enumerate(fmt.split("{content}")):
        if i:
            parts.append(content_expr)
        for j, literal in enumerate(piece.split("{bos}")):
            if j:
                parts.append("bos_token")
            for k, chunk in enumerate(literal.split("{eos}")):
                if k:
                    parts.append("eos_token")
                if chunk:
                    parts.append(json.dumps(chunk))
    return " + ".join(parts) if parts else "''"


def _jinja(fmt: str, content_expr: str = "''") -> str:
    return "{{ " + _expr(fmt, content_expr) + " }}" if fmt else ""
