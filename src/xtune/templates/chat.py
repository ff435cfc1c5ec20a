"""Template definitions and rendering. Placeholders: {content}, {bos}, {eos} (filled from the tokenizer).

The catalogue of named templates lives in `xtune.templates.catalog`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

Message = dict  # {"role": "system"|"user"|"assistant", "content": str, "loss": bool (optional)}

_MERGE_ERROR = "this template puts the system prompt inside the first user message; a user message must follow it"


@dataclass(frozen=True)
class Segment:
    text: str
    trained: bool


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
    # A tool result message ({"role": "tool"}), as the model's own format writes it; never trained. None: the
    # template has no tool format and a conversation with tool results is refused.
    tool: str | None = None
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

    def render(
        self,
        messages: Sequence[Message],
        add_generation_prompt: bool = False,
        bos: str = "",
        eos: str = "",
    ) -> list[Segment]:
        """Turn a conversation into text segments; assistant content and its end-of-turn marker are trained
        unless the message says `loss: false`."""
        fill = _Filler(bos, eos)
        segments = [Segment(fill(self.prefix), False)]
        messages = list(messages)
        if self.default_system is not None and (not messages or messages[0]["role"] != "system"):
            messages.insert(0, {"role": "system", "content": self.default_system})
        pending_system = ""  # merge_system: system text waiting for the next user message
        for index, message in enumerate(messages):
            role, content = message["role"], message["content"]
            if self.strip_content:
                content = content.strip()
            if pending_system and role != "user":
                raise ValueError(f"template {self.name!r}: {_MERGE_ERROR}")
            if role == "system":
                if self.merge_system:
                    pending_system += fill(self.system, content)
                else:
                    segments.append(Segment(fill(self.system, content), False))
            elif role == "user":
                segments.append(Segment(fill(self.user, pending_system + content), False))
                pending_system = ""
            elif role == "assistant":
                trained = message.get("loss") is not False
                header = self.assistant_prefix
                if self.history_assistant_prefix is not None and index < len(messages) - 1:
                    header = self.history_assistant_prefix
                segments.append(Segment(fill(header), False))
                segments.append(Segment(fill(self.reply_prefix) + content + fill(self.assistant_suffix), trained))
                segments.append(Segment(fill(self.turn_separator), False))
            elif role == "tool" and self.tool is not None:
                segments.append(Segment(fill(self.tool, content), False))
            else:
                raise ValueError(f"template {self.name!r} has no rendering for role {role!r}")
        if pending_system:
            raise ValueError(f"template {self.name!r}: {_MERGE_ERROR}")
        if add_generation_prompt:
            segments.append(Segment(fill(self.assistant_prefix), False))
        else:
            segments.append(Segment(fill(self.suffix), False))
        return [s for s in segments if s.text]

    def render_text(
        self, messages: Sequence[Message], add_generation_prompt: bool = False, bos: str = "", eos: str = ""
    ) -> str:
        return "".join(s.text for s in self.render(messages, add_generation_prompt, bos, eos))

    def stop_words_for(self, eos: str | None) -> list[str]:
        words = [_Filler("", eos or "")(w) for w in self.stop_words]
        if eos and eos not in words:
            words.append(eos)
        return [w for w in words if w]

    def to_jinja(self) -> str:
        """The same template as a Hugging Face `chat_template`, so exported tokenizers format chats exactly
        as xtune trained them."""
        content = "(message['content'] | trim)" if self.strip_content else "message['content']"
        out = [_jinja(self.prefix)]
        if self.merge_system:
            out.append("{% set ns = namespace(system='') %}")
        if self.default_system is not None:
            default = json.dumps(self.default_system)
            if self.merge_system:
                default = "{% set ns.system = " + _expr(self.system, default) + " %}"
            else:
                default = _jinja(self.system, default)
            out.append("{% if not messages or messages[0]['role'] != 'system' %}" + default + "{% endif %}")
        out.append("{% for message in messages %}")
        if self.merge_system:
            raise_if_pending = "{% if ns.system %}{{ raise_exception(" + json.dumps(_MERGE_ERROR) + ") }}{% endif %}"
            merge = f"{{% set ns.system = ns.system + {_expr(self.system, content)} %}}"
            out.append("{% if message['role'] == 'system' %}" + raise_if_pending + merge)
            user = _jinja(self.user, f"(ns.system + {content})")
            out.append("{% elif message['role'] == 'user' %}" + user + "{% set ns.system = '' %}")
        else:
            raise_if_pending = ""
            out.append("{% if message['role'] == 'system' %}" + _jinja(self.system, content))
            out.append("{% elif message['role'] == 'user' %}" + _jinja(self.user, content))
        turn = self.reply_prefix + "{content}" + self.assistant_suffix + self.turn_separator
        reply = _jinja(self.assistant_prefix + turn, content)
        if self.history_assistant_prefix is not None:
            earlier = _jinja(self.history_assistant_prefix + turn, content)
            reply = "{% if loop.last %}" + reply + "{% else %}" + earlier + "{% endif %}"
        out.append("{% elif message['role'] == 'assistant' %}" + raise_if_pending + reply)
        if self.tool is not None:
            out.append("{% elif message['role'] == 'tool' %}" + raise_if_pending + _jinja(self.tool, content))
        out.append("{% endif %}{% endfor %}")
        if self.merge_system:
            out.append(raise_if_pending)
        finished = "{% else %}" + _jinja(self.suffix) if self.suffix else ""
        out.append("{% if add_generation_prompt %}" + _jinja(self.assistant_prefix) + finished + "{% endif %}")
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
