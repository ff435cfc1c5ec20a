"""A multi-turn conversation with a model: history, prompt building from the template, stop words, and the tool
loop (the model calls tools, reads their results, and goes on until it answers)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from transformers import PreTrainedTokenizerBase

from xtune.chat.generate import GenerationSettings, generate
from xtune.chat.tools import ToolRegistry, ToolResult
from xtune.errors import XtuneError
from xtune.templates import Message, Template
from xtune.templates.base import with_system
from xtune.templates.tool_calls import ToolCall, split_reply

REACT_STOP = "Observation:"  # a ReAct model would go on to invent the tool's result; the real one goes there


class ChatSession:
    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        template: Template | None,
        settings: GenerationSettings,
        system: str | None = None,
        tools: ToolRegistry | None = None,
        max_tool_rounds: int = 5,
        list_tools: bool = True,
    ):
        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.system = system
        self.tools, self.max_tool_rounds, self.list_tools = tools, max_tool_rounds, list_tools
        if tools is not None and template is None:
            raise XtuneError("chatting with tools needs a chat template; pass --template (see `xtune list-cfg`)")
        stop_words = list(settings.stop_words)
        if template is not None:
            stop_words += [w for w in template.stop_words_for(tokenizer.eos_token) if w not in stop_words]
        if tools is not None and template.tool_style == "react" and REACT_STOP not in stop_words:
            stop_words.append(REACT_STOP)
        self.settings = dataclasses.replace(settings, stop_words=stop_words)  # the caller's settings stay as given
        self.history: list[Message] = []

    def reset(self) -> None:
        self.history = []

    def prompt_ids(self, messages: list[Message]) -> list[int]:
        if self.template is None:  # a model without an xtune template: use the tokenizer's own
            return list(
                self.tokenizer.apply_chat_template(
                    with_system(messages, self.system), add_generation_prompt=True, tokenize=True, return_dict=False
                )
            )
        tools = self.tools.schemas() if self.tools is not None and self.list_tools else None
        text = self.template.render_text(
            messages,
            add_generation_prompt=True,
            bos=self.tokenizer.bos_token or "",
            eos=self.tokenizer.eos_token or "",
            tools=tools,
            system=self.system,
        )
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def model_inputs(self) -> dict[str, torch.Tensor] | None:
        """Inputs besides the prompt's ids for the model's first forward (an image session's pixels)."""
        return None

    def ask(
        self,
        prompt: str,
        on_text: Callable[[str], None] | None = None,
        on_tool: Callable[[ToolCall, ToolResult], None] | None = None,
    ) -> str:
        """The model's final reply. With tools, each reply that calls tools is answered with their results (an
        error result for a malformed call, which the model can correct) until a reply calls none or
        max_tool_rounds rounds have run."""
        self.history.append({"role": "user", "content": prompt})
        rounds = 0
        while True:
            ids = self.prompt_ids(self.history)
            reply = generate(self.model, self.tokenizer, ids, self.settings, on_text, model_inputs=self.model_inputs())
            content, calls = split_reply(reply, self.template.tool_style) if self.tools is not None else (reply, [])
            if not calls or rounds == self.max_tool_rounds:
                self.history.append({"role": "assistant", "content": reply})
                return reply
            rounds += 1
            self.history.append(
                {"role": "assistant", "content": content, "tool_calls": [c.to_message() for c in calls]}
            )
            for call in calls:
                result = self.tools.call(call.name, call.arguments)
                if on_tool is not None:
                    on_tool(call, result)
                self.history.append({"role": "tool", "content": result.text})
