"""Template definitions and rendering. Placeholders: {content}, {bos}, {eos} (filled from the tokenizer).

The catalogue of named templates lives in `xtune.templates.catalog`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from xtune.templates.base import Message, Segment, with_system
from xtune.templates.tool_calls import ToolCall, ToolCallStyle, tool_call_style

_MERGE_ERROR = "this template puts the system prompt inside the first user message; a user message must follow it"


@dataclass(frozen=True)
class ChatTemplate:
    """One chat format. A conversation renders as

        prefix, then per message: system | user | assistant_prefix + [reply_prefix + content + assistant_suffix]
        + turn_separator, then the generation prompt (assistant_prefix) or, for a finished conversation, suffix.

    Only the bracketed part is trained: the reply and its end-of-turn marker, so the model learns to stop.
    Headers, user and system text, separators and the suffix are scaffolding. render() and to_jinja() read the
    same fields, so an exported tokenizer formats chats exactly as xtune trained them.
    """

    name: str
    system: str  # a system message, e.g. "<|im_start|>system\n{content}<|im_end|>\n"
    user: str
    assistant_prefix: str  # the header the model is prompted with (the generation prompt); never trained
    assistant_suffix: str  # the end-of-turn marker; trained, so the model learns to stop
    turn_separator: str = ""  # text after the end-of-turn marker; scaffolding, not trained
    prefix: str = ""  # text before the whole conversation, e.g. "{bos}"
    default_system: str | None = None  # used when a conversation has no system message, as the official template
    strip_content: bool = False  # the official template trims message contents (Llama 3)
    stop_words: tuple[str, ...] = ()
    # How tools, calls and results are written (see tool_calls.py); "react" for models without a tool format.
    tool_style: str = "react"
    # A tool result message ({"role": "tool"}) in the model's own format; never trained. Unused by "react", whose
    # results are "Observation:" lines inside the assistant's turn.
    tool: str | None = None
    # Consecutive tool results share one turn, opened before the first and closed after the last (Qwen2.5 and Qwen3:
    # one user turn of <tool_response> blocks).
    tool_open: str = ""
    tool_close: str = ""
    # The tool list as a message of its own after the system prompt (InternLM2); None: inside the system prompt.
    tools_message: str | None = None
    # Text the model writes itself between the header and its reply: the space in "[/INST] Hi" (Llama 2, Mistral)
    # or "Assistant: Hi" (DeepSeek V2), whose official generation prompt ends before it. Trained with the reply:
    # tokenizers merge it into the reply's first token ("▁Hi", "ĠHi"), which must stay a trained label.
    reply_prefix: str = ""
    # The system text (rendered with `system`) goes inside the first user message instead of standing alone:
    # Llama 2's <<SYS>> block, Mistral, Gemma (which has no system role). A user message must follow it.
    merge_system: bool = False
    # Header of assistant replies that are not the conversation's last message; default assistant_prefix.
    # Qwen3 (thinking off) shows its empty think block only on the final reply and the generation prompt.
    history_assistant_prefix: str | None = None
    suffix: str = ""  # after the last message of a finished conversation (no generation prompt): Phi-3's eos

    @property
    def call_style(self) -> ToolCallStyle:
        return tool_call_style(self.tool_style)

    def render(
        self,
        messages: Sequence[Message],
        add_generation_prompt: bool = False,
        bos: str = "",
        eos: str = "",
        tools: Sequence[dict] | None = None,
        system: str | None = None,
    ) -> list[Segment]:
        """Turn a conversation into text segments; assistant content (with its tool calls) and its end-of-turn
        marker are trained unless the message says `loss: false`. Tool lists and results never are."""
        fill = _Filler(bos, eos)
        segments = [Segment(fill(self.prefix), False)]
        messages = with_system(messages, self.default_system if system is None else system)
        tools_segment = listing = None  # the tool list: a message of its own, or inside the system prompt
        if tools:
            listing = self.call_style.tools_text(list(tools))
            if self.tools_message is not None:
                tools_segment, listing = Segment(fill(self.tools_message, listing), False), None
                if not messages or messages[0]["role"] != "system":
                    segments.append(tools_segment)
            else:  # the list goes inside the system prompt, so there must be one
                messages = with_system(messages, "")
        react = self.tool_style == "react"
        pending_system = ""  # merge_system: system text waiting for the next user message
        for index, message in enumerate(messages):
            role, content = message["role"], message["content"]
            if self.strip_content:
                content = content.strip()
            if pending_system and role != "user":
                raise ValueError(f"template {self.name!r}: {_MERGE_ERROR}")
            if role == "system":
                if index == 0 and listing is not None:
                    content = self.call_style.system_with_tools(content, listing)
                if self.merge_system:
                    pending_system += fill(self.system, content)
                else:
                    segments.append(Segment(fill(self.system, content), False))
                if index == 0 and tools_segment is not None:
                    segments.append(tools_segment)
            elif role == "user":
                segments.append(Segment(fill(self.user, pending_system + content), False))
                pending_system = ""
            elif role == "assistant":
                trained = message.get("loss") is not False
                calls = [ToolCall.from_message(c) for c in message.get("tool_calls") or ()]
                # ReAct: a reply after an Observation continues the same turn, and a call leaves the turn open
                continues = react and index > 0 and messages[index - 1]["role"] == "tool"
                header = "" if continues else self.assistant_prefix
                if self.history_assistant_prefix is not None and index < len(messages) - 1 and not continues:
                    header = self.history_assistant_prefix
                end = ("", "") if react and calls else (self.assistant_suffix, self.turn_separator)
                lead = "" if continues else fill(self.reply_prefix)
                # Looked up only for calls: a template's unknown tool_style fails where it is used, as it always did.
                reply = lead + (self.call_style.reply_with_calls(content, calls) if calls else content)
                segments.append(Segment(fill(header), False))
                segments.append(Segment(reply + fill(end[0]), trained))
                segments.append(Segment(fill(end[1]), False))
            elif role == "tool" and react:
                segments.append(Segment(f"Observation: {content}\n", False))
            elif role == "tool" and self.tool is not None:
                first = index == 0 or messages[index - 1]["role"] != "tool"
                last = index == len(messages) - 1 or messages[index + 1]["role"] != "tool"
                text = fill(self.tool_open) * first + fill(self.tool, content) + fill(self.tool_close) * last
                segments.append(Segment(text, False))
            else:
                raise ValueError(f"template {self.name!r} has no rendering for role {role!r}")
        if pending_system:
            raise ValueError(f"template {self.name!r}: {_MERGE_ERROR}")
        if add_generation_prompt:
            if not (react and messages and messages[-1]["role"] == "tool"):
                segments.append(Segment(fill(self.assistant_prefix), False))
        else:
            segments.append(Segment(fill(self.suffix), False))
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
        return "".join(s.text for s in self.render(messages, add_generation_prompt, bos, eos, tools, system))

    def stop_words_for(self, eos: str | None) -> list[str]:
        words = [_Filler("", eos or "")(w) for w in self.stop_words]
        if eos and eos not in words:
            words.append(eos)
        return [w for w in words if w]

    def to_jinja(self) -> str:
        """The same template as a Hugging Face `chat_template` (tools, calls and results included), so exported
        tokenizers format chats exactly as xtune trained them."""
        content = "(message['content'] | trim)" if self.strip_content else "message['content']"
        react, own_message = self.tool_style == "react", self.tools_message is not None
        out = [_jinja(self.prefix), "{% if tools %}" + self.call_style.jinja_tools_text() + "{% endif %}"]
        if self.merge_system:
            out.append("{% set ns = namespace(system='') %}")

        def emit_system(expr: str) -> str:
            if self.merge_system:
                return "{% set ns.system = ns.system + " + _expr(self.system, expr) + " %}"
            return _jinja(self.system, expr)

        def with_tools(expr: str) -> str:  # the system text with the tool list in it, when the list goes there
            return expr if own_message else f"({self.call_style.jinja_system_with_tools(expr)} if tools else {expr})"

        tools_message = (
            "{% if tools %}" + _jinja(self.tools_message, "tools_text") + "{% endif %}" if own_message else ""
        )
        no_system = "{% if not messages or messages[0]['role'] != 'system' %}"
        if self.default_system is not None:
            out.append(no_system + emit_system(with_tools(json.dumps(self.default_system))) + tools_message)
        elif own_message:
            out.append(no_system + tools_message)
        else:
            out.append(no_system + "{% if tools %}" + emit_system(with_tools("''")) + "{% endif %}")
        out.append("{% endif %}{% for message in messages %}")
        system_content = f"({with_tools(content)} if loop.first else {content})"
        first_tools_message = "{% if loop.first %}" + tools_message + "{% endif %}" if own_message else ""
        if self.merge_system:
            raise_if_pending = "{% if ns.system %}{{ raise_exception(" + json.dumps(_MERGE_ERROR) + ") }}{% endif %}"
            out.append("{% if message['role'] == 'system' %}" + raise_if_pending + emit_system(system_content))
            user = _jinja(self.user, f"(ns.system + {content})")
            out.append("{% elif message['role'] == 'user' %}" + user + "{% set ns.system = '' %}")
        else:
            raise_if_pending = ""
            out.append("{% if message['role'] == 'system' %}" + emit_system(system_content) + first_tools_message)
            out.append("{% elif message['role'] == 'user' %}" + _jinja(self.user, content))
        header = _jinja(self.assistant_prefix)
        if self.history_assistant_prefix is not None:
            header = (
                "{% if loop.last %}" + header + "{% else %}" + _jinja(self.history_assistant_prefix) + "{% endif %}"
            )
        header += _jinja(self.reply_prefix)
        end = _jinja(self.assistant_suffix + self.turn_separator)
        if react:  # a reply after an Observation continues the turn; a call leaves it open
            header = "{% if not (loop.previtem is defined and loop.previtem['role'] == 'tool') %}" + header
            header += "{% endif %}"
            end = "{% if not message['tool_calls'] %}" + end + "{% endif %}"
        reply = self.call_style.jinja_reply_with_calls(content) + header + "{{ reply }}"
        out.append("{% elif message['role'] == 'assistant' %}" + raise_if_pending + reply + end)
        if react:
            out.append("{% elif message['role'] == 'tool' %}{{ 'Observation: ' + " + content + " + '\\n' }}")
        elif self.tool is not None:
            tool_open = _jinja(self.tool_open)
            if tool_open:
                tool_open = "{% if loop.first or loop.previtem['role'] != 'tool' %}" + tool_open + "{% endif %}"
            tool_close = _jinja(self.tool_close)
            if tool_close:
                tool_close = "{% if loop.last or loop.nextitem['role'] != 'tool' %}" + tool_close + "{% endif %}"
            tool = tool_open + _jinja(self.tool, content) + tool_close
            out.append("{% elif message['role'] == 'tool' %}" + raise_if_pending + tool)
        out.append("{% endif %}{% endfor %}")
        if self.merge_system:
            out.append(raise_if_pending)
        prompt = _jinja(self.assistant_prefix)
        if react:
            prompt = "{% if not (messages and messages[-1]['role'] == 'tool') %}" + prompt + "{% endif %}"
        finished = "{% else %}" + _jinja(self.suffix) if self.suffix else ""
        out.append("{% if add_generation_prompt %}" + prompt + finished + "{% endif %}")
        return "".join(out)


class _Filler:
    def __init__(self, bos: str, eos: str):
        self.bos, self.eos = bos, eos

    def __call__(self, fmt: str, content: str = "") -> str:
        # str.replace, not str.format: contents are user text and may hold braces.
        return fmt.replace("{bos}", self.bos).replace("{eos}", self.eos).replace("{content}", content)


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
