"""`xtune serve DIR` (an OpenAI-compatible API and the chat page) and `xtune web DIR` (the same, saying where the
page is): the model loads as `xtune chat` loads it, and the server answers through the same chat sessions."""

from __future__ import annotations

import argparse
import copy
import importlib.util
import sys

from xtune.errors import XtuneError

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def add_parser(sub: argparse._SubParsersAction, chat_parser: argparse.ArgumentParser) -> None:
    """`serve` and `web` take chat's model flags (one list, so they never drift apart) and the server's own."""
    model_flags = {"--adapter", "--bits", "--template", "--system", "--max-new-tokens", "--stop-words", "--tools"}
    model_flags |= {"--search-docs", "--max-tool-rounds", "--solve-time-limit", "--no-tool-list", "--seed"}
    model_flags |= {"--trust-remote-code"}
    for name, help_text in (
        ("serve", "serve a model over an OpenAI-compatible API, with a chat page at /"),
        ("web", "serve a model's chat page (and the API) and print the page's address"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("model", help="an adapter dir (its base found as chat finds it), a full/merged or LLaVA dir")
        for action in chat_parser._actions:
            if model_flags & set(action.option_strings):
                p._add_action(copy.copy(action))
        p._option_string_actions["--tools"].help = (
            "tools the server runs for requests that bring none of their own, comma-separated: calculate, solve, "
            "search, or your own as my_tools.py:my_function; default: none (a directory's evaluation.tools are not run)"
        )
        p._option_string_actions["--max-new-tokens"].help = "the answer's length when a request names no max_tokens"
        p.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: this machine only)")
        p.add_argument("--port", type=int, default=8000)
        p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on every API request")
        p.add_argument("--served-model-name", help="the model id clients pass (default: MODEL as given)")
        p.add_argument("--max-queue", type=int, default=16, help="requests admitted at once, running or waiting")
        p.set_defaults(func=run_serve, web=name == "web")


def build_app(args: argparse.Namespace):
    """The FastAPI app for `args` (tests serve it in-process)."""
    if importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("uvicorn") is None:
        raise XtuneError(f"xtune {args.command} needs FastAPI and uvicorn: pip install 'xtune[serve]'")
    if args.max_queue < 1:
        raise XtuneError(f"--max-queue {args.max_queue}: admit at least 1 request")
    from xtune.cli.chat import load_chat
    from xtune.models.load import causal_lm
    from xtune.multimodal.chat import is_llava
    from xtune.serve.app import ServedModel, create_app

    args.greedy, args.temperature, args.top_p, args.trust_dir_tools = False, 1.0, 1.0, False  # requests choose these
    setup = load_chat(args, dir_tools=False)  # only the tools the operator names with --tools run here
    if setup.tools is not None and is_llava(setup.model):
        raise XtuneError("--tools is for text models; a LLaVA server answers about the images in its requests")
    config = causal_lm(setup.model).config
    config = getattr(config, "text_config", None) or config
    served = ServedModel(
        name=args.served_model_name or args.model,
        new_session=lambda settings, tool_schemas=None: setup.session(settings, tool_schemas=tool_schemas),
        settings=setup.settings,
        context_length=config.max_position_embeddings,
        takes_images=is_llava(setup.model),
    )
    return create_app(served, api_key=args.api_key, slots=args.max_queue)


def run_serve(args: argparse.Namespace) -> None:
    if args.host not in LOCAL_HOSTS and not args.api_key:
        print(
            f"xtune: warning: --host {args.host} without --api-key: anyone who can reach this address can use the "
            "model; pass --api-key KEY",
            file=sys.stderr,
        )
    app = build_app(args)
    import uvicorn

    host = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{host}:{args.port}"
    print(f"{'chat page' if args.web else 'serving'} {args.model} at {url}/ (API: {url}/v1)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
