"""Chat: generation with stop words, prompt building from templates, the interactive loop."""

from xtune.chat.generate import GenerationSettings, generate

__all__ = ["GenerationSettings", "generate"]
