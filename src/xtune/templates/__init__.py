"""Chat templates: how a conversation becomes text, and which spans of that text are trained.

One template system serves training (segments with a trained flag), chat (the generation prompt and stop
words) and export (the same template written as a jinja `chat_template` for the tokenizer).
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from xtune.templates.chat import TEMPLATES, ChatTemplate, Segment, get_template
from xtune.templates.jinja import TokenizerTemplate

AUTO_NAMES = ("auto", "tokenizer_chat_template")

__all__ = ["TEMPLATES", "ChatTemplate", "Segment", "TokenizerTemplate", "get_template", "resolve_template"]


def resolve_template(name: str, tokenizer: PreTrainedTokenizerBase) -> ChatTemplate | TokenizerTemplate:
    """A named xtune template, or for 'auto' the tokenizer's own jinja chat_template."""
    if name in AUTO_NAMES:
        return TokenizerTemplate(tokenizer)
    return get_template(name)
