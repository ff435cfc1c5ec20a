"""`xtune chat`: interactive streaming chat, or non-interactive answers with --prompt."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from transformers import PreTrainedTokenizerBase

from xtune.chat.generate import GenerationSettings
from xtune.chat.session import ChatSession, tool_line
from xtune.chat.tools import (
    SOLVE_TIME_LIMIT_S,
    LocalDocumentSearch,
    ToolRegistry,
    ToolResult,
    build_registry,
    is_user_tool,
)
from xtune.config.schema import CONFIG_FILE
from xtune.errors import XtuneError
from xtune.io import user_cache_dir
from xtune.templates import Template, resolve_template
from xtune.templates.tool_calls import ToolCall

HELP = "Type a message. RESET clears the history, EXIT quits."


def chat_tool_names(
    explicit: list[str] | None, trained: list[str], trust_trained: bool, config_path: Path
) -> list[str]:
    """The tools named with --tools; without them, those in the trained config's evaluation.tools. That config came
    with the directory, not from the user, so the code tools it names (file.py:function, module:function) are
    offered, not loaded: importing them would run whatever Python the directory's author wrote, merely for chatting
    with it. `trust_trained` (--trust-dir-tools) loads them."""
    names = [n.strip() for arg in explicit or [] for n in arg.split(",") if n.strip()]
    if names or trust_trained:
        return names or list(trained)
    untrusted = [n for n in trained if is_user_tool(n)]
    if untrusted:
        print(
            f"not loading the code tools {', '.join(untrusted)} named in {config_path} (evaluation.tools): loading "
            f"runs their Python. To offer them, pass --tools {','.join(trained)} or --trust-dir-tools",
            file=sys.stderr,
        )
    return [n for n in trained if not is_user_tool(n)]


@dataclass
class ChatSetup:
    """A loaded model directory and what its training config and the flags say about chatting with it: what
    `xtune chat` and `xtune serve` both start from."""

    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    template: Template | None
    system: str | None
    settings: GenerationSettings
    tools: ToolRegistry | None
    list_tools: bool
    max_tool_rounds: int
    source: Path

    def session(
        self,
        settings: GenerationSettings | None = None,
        images: list[str] | None = None,
        tool_schemas: list[dict] | None = None,
    ) -> ChatSession:
        """A new conversation; `tool_schemas` offers tools the caller runs instead of the setup's own."""
        from xtune.multimodal.chat import image_session, is_llava

        settings = settings or self.settings
        if images or is_llava(self.model):  # a LLaVA answers about --image (or without one, text only)
            if self.tools is not None or tool_schemas is not None:
                raise XtuneError("--tools is for text models; a LLaVA chat answers about its --image")
            return image_session(
                self.model, self.tokenizer, self.template, settings, self.source, images or [], system=self.system
            )
        return ChatSession(
            self.model,
            self.tokenizer,
            self.template,
            settings,
            system=self.system,
            tools=self.tools if tool_schemas is None else None,
            max_tool_rounds=self.max_tool_rounds,
            list_tools=self.list_tools,
            tool_schemas=tool_schemas,
        )


def load_chat(args: argparse.Namespace, dir_tools: bool = True) -> ChatSetup:
    """The model of `args.model` and its chat settings from the flags and the directory's training config.
    `dir_tools`: without --tools, offer the built-in tools the config's evaluation.tools names (`xtune chat`);
    a server offers only the tools its operator names."""
    torch.manual_seed(args.seed)
    from xtune.multimodal.chat import load_llava_for_inference

    model, tokenizer, source = load_llava_for_inference(args.model, args.adapter, args.bits, args.trust_remote_code)
    trained = yaml.safe_load((source / CONFIG_FILE).read_text()) if (source / CONFIG_FILE).exists() else {}
    recorded = (trained.get("data") or {}).get("template")
    if args.template and recorded and args.template != recorded:
        print(
            f"xtune: warning: --template {args.template} differs from {recorded}, the template {source / CONFIG_FILE} "
            "records for training; answers may be off",
            file=sys.stderr,
        )
    template_name = args.template or recorded
    template = resolve_template(template_name, tokenizer) if template_name else None
    system = args.system
    if system is None:
        system = (trained.get("evaluation") or {}).get("system") or (trained.get("data") or {}).get("system")
    settings = GenerationSettings(
        max_new_tokens=args.max_new_tokens,
        temperature=0.0 if args.greedy else args.temperature,
        top_p=args.top_p,
        stop_words=list(args.stop_words),
    )
    evaluation = trained.get("evaluation") or {}
    trained_tools = (evaluation.get("tools") or []) if dir_tools else []
    names = chat_tool_names(args.tools, trained_tools, args.trust_dir_tools, source / CONFIG_FILE)
    docs = args.search_docs or evaluation.get("search_docs")
    search = LocalDocumentSearch(docs) if docs and "search" in names else None
    if search is not None:  # what the model can read, and what the folder held that it cannot
        print(search.summary, file=sys.stderr)
    solve_time_limit = args.solve_time_limit or evaluation.get("solve_time_limit") or SOLVE_TIME_LIMIT_S
    tools = build_registry(names, search_provider=search, solve_time_limit=solve_time_limit) if names else None
    list_tools = args.list_tools if args.list_tools is not None else evaluation.get("list_tools", True)
    return ChatSetup(model, tokenizer, template, system, settings, tools, list_tools, args.max_tool_rounds, source)


def run_chat(args: argparse.Namespace) -> None:
    session = load_chat(args).session(images=getattr(args, "image", None))

    def stream(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    def show_tool(call: ToolCall, result: ToolResult) -> None:
        sys.stdout.write(tool_line(call, result))
        sys.stdout.flush()

    def ask(prompt: str) -> None:
        session.ask(prompt, on_text=stream, on_tool=show_tool)
        sys.stdout.write("\n")

    if args.prompt:
        for prompt in args.prompt:
            ask(prompt)
        return
    print(HELP, file=sys.stderr)
    with line_editing(sys.stdin.isatty()):
        while True:
            try:
                prompt = input("\n>>> ")
            except EOFError:
                return
            command = prompt.strip().upper()
            if command == "EXIT":
                return
            if command == "RESET":
                session.reset()
                print("(history cleared)", file=sys.stderr)
                continue
            if prompt.strip():
                ask(prompt)


def history_file() -> Path:
    return user_cache_dir() / "chat_history"


@contextlib.contextmanager
def line_editing(terminal: bool) -> Iterator[None]:
    """Arrow keys, editing and earlier prompts (up arrow, also from earlier chats) at the `>>>` prompt: input()
    edits lines only once the readline module is imported. Only at a terminal: piped prompts keep no history. Where
    Python has no readline (Windows), input() stays as it is."""
    readline = None
    if terminal:
        with contextlib.suppress(ImportError):
            import readline
    if readline is None:
        yield
        return
    path = history_file()
    with contextlib.suppress(OSError):  # none yet, or unreadable: start with an empty history
        readline.read_history_file(path)
    readline.set_history_length(1000)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):  # a read-only cache costs the history, not the chat
            path.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(path)
