"""A multi-turn conversation with a model: history, prompt building from the template, stop words."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from transformers import PreTrainedTokenizerBase

from xtune.chat.generate import GenerationSettings, generate
from xtune.templates import ChatTemplate


class ChatSession:
    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        template: ChatTemplate | None,
        settings: GenerationSettings,
        system: str | None = None,
    ):
        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.system = system
        stop_words = list(settings.stop_words)
        if template is not None:
            stop_words += [w for w in template.stop_words_for(tokenizer.eos_token) if w not in stop_words]
        self.settings = dataclasses.replace(settings, stop_words=stop_words)  # the caller's settings stay as given
        self.history: list[dict] = []

    def reset(self) -> None:
        self.history = []

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        if self.system is not None:
            messages = [{"role": "system", "content": self.system}, *messages]
        if self.template is None:  # a model without an xtune template: use the tokenizer's own
            return list(
                self.tokenizer.apply_chat_template(
                    messages, add_generation_prompt=True, tokenize=True, return_dict=False
                )
            )
        text = self.template.render_text(
            messages, add_generation_prompt=True, bos=self.tokenizer.bos_token or "", eos=self.tokenizer.eos_token or ""
        )
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def ask(self, prompt: str, on_text: Callable[[str], None] | None = None) -> str:
        self.history.append({"role": "user", "content": prompt})
        reply = generate(self.model, self.tokenizer, self.prompt_ids(self.history), self.settings, on_text)
        self.history.append({"role": "assistant", "content": reply})
        return reply
