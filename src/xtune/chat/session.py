"""A multi-turn conversation with a model: history, prompt building from the template, stop words, and the tool
loop (the model calls tools, reads their results, and goes on until it answers)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

import torch
from transformers import PreTrainedTokenizerBase

from xtune.chat.generate import Generation, GenerationSettings, generate
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
        tool_schemas: list[dict] | None = None,
    ):
        """`tools` are run by the session; `tool_schemas` (a server's request's tools) are offered to the model,
        and a reply that calls them ends the turn with the calls, for the caller to run."""
        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.system = system
        self.tools, self.max_tool_rounds, self.list_tools = tools, max_tool_rounds, list_tools
        self.offered = tool_schemas if tool_schemas is not None else tools.schemas() if tools is not None else None
        if self.offered is not None and template is None:
            raise XtuneError("chatting with tools needs a chat template; pass --template (see `xtune list-cfg`)")
        stop_words = list(settings.stop_words)
        if template is not None:
            stop_words += [w for w in template.stop_words_for(tokenizer.eos_token) if w not in stop_words]
        if self.offered is not None and template.tool_style == "react" and REACT_STOP not in stop_words:
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
        tools = self.offered if self.list_tools else None
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
        """The model's final reply to `prompt` (see respond)."""
        self.history.append({"role": "user", "content": prompt})
        return self.respond(on_text, on_tool).text

    def respond(
        self,
        on_text: Callable[[str], None] | None = None,
        on_tool: Callable[[ToolCall, ToolResult], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Generation:
        """The model's reply to the history, appended to it. With tools, each reply that calls tools is answered
        with their results (an error result for a malformed call, which the model can correct) until a reply calls
        none, one is cut short (finish_reason "length") or max_tool_rounds rounds have run. Tools offered but not
        run (tool_schemas) end the turn at the first reply that calls them, finish_reason "tool_calls". Token counts
        add up over the rounds."""
        rounds = prompt_tokens = completion_tokens = 0
        while True:
            ids = self.prompt_ids(self.history)
            out = generate(
                self.model,
                self.tokenizer,
                ids,
                self.settings,
                on_text,
                model_inputs=self.model_inputs(),
                should_stop=should_stop,
            )
            prompt_tokens += out.prompt_tokens
            completion_tokens += out.completion_tokens
            out = dataclasses.replace(out, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
            reply = out.text
            content, calls = split_reply(reply, self.template.tool_style) if self.offered is not None else (reply, [])
            if calls and self.tools is None and out.finish_reason == "stop":
                self.history.append(
                    {"role": "assistant", "content": content, "tool_calls": [c.to_message() for c in calls]}
                )
                return dataclasses.replace(out, finish_reason="tool_calls")
            # A reply cut by max_new_tokens is no call, whatever it began to write.
            if not calls or self.tools is None or rounds == self.max_tool_rounds or out.finish_reason != "stop":
                self.history.append({"role": "assistant", "content": reply})
                return out
            rounds += 1
            self.history.append(
                {"role": "assistant", "content": content, "tool_calls": [c.to_message() for c in calls]}
            )
            for call in calls:
                result = self.tools.call(call.name, call.arguments)
                if on_tool is not None:
                    on_tool(call, result)
                self.history.append({"role": "tool", "content": result.text})


def tool_line(call: ToolCall, result: ToolResult) -> str:
    """A call the session ran and its result, as `xtune chat` shows it (and the server streams it)."""
    arguments = call.arguments if isinstance(call.arguments, str) else json.dumps(call.arguments, ensure_ascii=False)
    return f"\n[tool] {call.name}({arguments}) -> {result.text}\n"
