"""`template: auto`: train with the tokenizer's own jinja `chat_template`.

Official templates rarely mark what to train (`{% generation %}` tags are uncommon), so the trained spans are
found by rendering prefixes: for the i-th assistant message, the text of messages[:i] with the generation
prompt ends where its reply starts, and the text of messages[:i+1] ends after its end-of-turn marker. The
difference is the reply plus the marker, minus trailing whitespace (the separator before the next turn).
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from xtune.errors import ConfigError
from xtune.templates.base import Message, Segment, with_system

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
