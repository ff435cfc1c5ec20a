"""What every template is: the message it reads and the methods that training, chat and export call. xtune's own
templates (ChatTemplate) and a tokenizer's jinja (TokenizerTemplate) both satisfy it, so callers need not care which
they hold."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypedDict

# Raised by templates with merge_system (Llama 2, Mistral, Gemma), by render() and by their exported jinja alike.
MERGE_SYSTEM_ERROR = "this template puts the system prompt inside the first user message; a user message must follow it"


class _Turn(TypedDict):
    role: Literal["system", "user", "assistant", "tool"]
    content: str


class Message(_Turn, total=False):  # a base class, not NotRequired: that needs Python 3.11, and 3.10 is supported
    """One turn of a conversation, in the OpenAI fine-tuning shape that every data format is mapped to."""

    loss: bool  # an assistant turn with loss: false is context, not trained
    # An assistant turn's calls: [{"type": "function", "function": {"name", "arguments": {...}}}] (see tool_calls.py)
    tool_calls: list[dict[str, Any]]


@dataclass(frozen=True)
class Segment:
    text: str
    trained: bool


def with_system(messages: Sequence[Message], system: str | None) -> list[Message]:
    """The conversation with `system` as its system message, unless it opens with one of its own. The one place a
    system message is added: a dataset's or a chat's system prompt, a template's default, the holder of a tool list."""
    if system is None or (messages and messages[0]["role"] == "system"):
        return list(messages)
    return [{"role": "system", "content": system}, *messages]


class Template(Protocol):
    name: str
    tool_style: str  # how tool calls are written and read back (see tool_calls.py)

    def render(
        self,
        messages: Sequence[Message],
        add_generation_prompt: bool = False,
        bos: str = "",
        eos: str = "",
        tools: Sequence[dict] | None = None,
        system: str | None = None,
    ) -> list[Segment]:
        """The conversation as text segments, each flagged whether it is trained. `system` is the system message
        for a conversation without one of its own (see with_system)."""
        ...

    def render_text(
        self,
        messages: Sequence[Message],
        add_generation_prompt: bool = False,
        bos: str = "",
        eos: str = "",
        tools: Sequence[dict] | None = None,
        system: str | None = None,
    ) -> str: ...

    def stop_words_for(self, eos: str | None) -> list[str]: ...

    def to_jinja(self) -> str:
        """The template as a Hugging Face `chat_template`, for exported tokenizers."""
        ...
