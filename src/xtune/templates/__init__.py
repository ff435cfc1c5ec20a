"""Chat templates: how a conversation becomes text, and which spans of that text are trained.

One template system serves training (segments with a trained flag), chat (the generation prompt and stop
words) and export (the same template written as a jinja `chat_template` for the tokenizer).
"""

from xtune.templates.chat import TEMPLATES, ChatTemplate, Segment, get_template

__all__ = ["TEMPLATES", "ChatTemplate", "Segment", "get_template"]
