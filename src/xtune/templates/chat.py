"""Template definitions and rendering. Placeholders: {content}, {bos}, {eos} (filled from the tokenizer).

The catalogue of named templates lives in `xtune.templates.catalog`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from xtune.templates.base import MERGE_SYSTEM_ERROR, Message, Segment, with_system
from xtune.templates.jinja import chat_template_jinja
from xtune.templates.tool_calls import ToolCall, ToolCallStyle, tool_call_style


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
                raise ValueError(f"template {self.name!r}: {MERGE_SYSTEM_ERROR}")
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
            raise ValueError(f"template {self.name!r}: {MERGE_SYSTEM_ERROR}")
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
        return chat_template_jinja(self)


class _Filler:
    def __init__(self, bos: str, eos: str):
        self.bos, self.eos = bos, eos

    def __call__(self, fmt: str, content: str = "") -> str:
        # str.replace, not str.format: contents are user text and may hold braces.
        return fmt.replace("{bos}", self.bos).replace("{eos}", self.eos).replace("{content}", content)
