"""Template definitions and rendering. Placeholders: {content}, {bos}, {eos} (filled from the tokenizer)."""

from __future__ import annotations

import difflib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from xtune.errors import ConfigError

Message = dict  # {"role": "system"|"user"|"assistant", "content": str, "loss": bool (optional)}


@dataclass(frozen=True)
class Segment:
    text: str
    trained: bool


@dataclass(frozen=True)
class ChatTemplate:
    name: str
    system: str  # a system message, e.g. "<|im_start|>system\n{content}<|im_end|>\n"
    user: str
    assistant_prefix: str  # the header the model is prompted with; never trained
    assistant_suffix: str  # the end-of-turn marker; trained, so the model learns to stop
    turn_separator: str = ""  # text after the end-of-turn marker; scaffolding, not trained
    prefix: str = ""  # text before the whole conversation, e.g. "{bos}"
    default_system: str | None = None  # used when a conversation has no system message, as the official template
    strip_content: bool = False  # the official template trims message contents (Llama 3)
    stop_words: tuple[str, ...] = ()

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
        for message in messages:
            role, content = message["role"], message["content"]
            if self.strip_content:
                content = content.strip()
            if role == "system":
                segments.append(Segment(fill(self.system, content), False))
            elif role == "user":
                segments.append(Segment(fill(self.user, content), False))
            elif role == "assistant":
                trained = message.get("loss") is not False
                segments.append(Segment(fill(self.assistant_prefix), False))
                segments.append(Segment(content + fill(self.assistant_suffix), trained))
                segments.append(Segment(fill(self.turn_separator), False))
            else:
                raise ValueError(f"template {self.name!r} has no rendering for role {role!r}")
        if add_generation_prompt:
            segments.append(Segment(fill(self.assistant_prefix), False))
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
        if self.default_system is not None:
            default = _jinja(self.system, json.dumps(self.default_system))
            out.append("{% if not messages or messages[0]['role'] != 'system' %}" + default + "{% endif %}")
        out.append("{% for message in messages %}")
        out.append("{% if message['role'] == 'system' %}" + _jinja(self.system, content))
        out.append("{% elif message['role'] == 'user' %}" + _jinja(self.user, content))
        out.append(
            "{% elif message['role'] == 'assistant' %}"
            + _jinja(self.assistant_prefix + "{content}" + self.assistant_suffix + self.turn_separator, content)
        )
        out.append("{% endif %}{% endfor %}")
        out.append("{% if add_generation_prompt %}" + _jinja(self.assistant_prefix) + "{% endif %}")
        return "".join(out)


class _Filler:
    def __init__(self, bos: str, eos: str):
        self.bos, self.eos = bos, eos

    def __call__(self, fmt: str, content: str = "") -> str:
        # str.replace, not str.format: contents are user text and may hold braces.
        return fmt.replace("{bos}", self.bos).replace("{eos}", self.eos).replace("{content}", content)


def _jinja(fmt: str, content_expr: str = "''") -> str:
    if not fmt:
        return ""
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
    return "{{ " + " + ".join(parts) + " }}" if parts else ""


_CHATML = dict(
    system="<|im_start|>system\n{content}<|im_end|>\n",
    user="<|im_start|>user\n{content}<|im_end|>\n",
    assistant_prefix="<|im_start|>assistant\n",
    assistant_suffix="<|im_end|>",
    turn_separator="\n",
    stop_words=("<|im_end|>",),
)

TEMPLATES: dict[str, ChatTemplate] = {
    t.name: t
    for t in [
        # XTuner's default: plain-text role markers for base models without a chat template.
        ChatTemplate(
            name="default",
            system="<|System|>:{content}\n",
            user="<|User|>:{content}\n",
            assistant_prefix="<|Bot|>:",
            assistant_suffix="{eos}",
            turn_separator="\n",
            prefix="{bos}",
            stop_words=("{eos}",),
        ),
        # internlm/internlm2-chat-1_8b tokenizer_config.json chat_template.
        ChatTemplate(name="internlm2_chat", prefix="{bos}", **_CHATML),
        # Qwen/Qwen2-1.5B-Instruct (also Qwen1.5) tokenizer_config.json chat_template.
        ChatTemplate(
            name="qwen_chat",
            default_system="You are a helpful assistant.",
            **{**_CHATML, "stop_words": ("<|im_end|>", "<|endoftext|>")},
        ),
        # meta-llama/Meta-Llama-3-8B-Instruct tokenizer_config.json chat_template.
        ChatTemplate(
            name="llama3_chat",
            prefix="{bos}",
            system="<|start_header_id|>system<|end_header_id|>\n\n{content}<|eot_id|>",
            user="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
            assistant_prefix="<|start_header_id|>assistant<|end_header_id|>\n\n",
            assistant_suffix="<|eot_id|>",
            strip_content=True,
            stop_words=("<|eot_id|>", "<|end_of_text|>"),
        ),
    ]
}


def get_template(name: str) -> ChatTemplate:
    try:
        return TEMPLATES[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(TEMPLATES), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"unknown template {name!r}; {hint}known templates: {', '.join(TEMPLATES)}") from None
