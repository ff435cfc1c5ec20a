"""Servers for the tests: `xtune serve`'s app, built from its command line, run in-process by uvicorn on a free port."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace

import openai
import pytest
import uvicorn

from xtune.cli import build_parser
from xtune.cli.serve import build_app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(model: str, *flags: str, api_key: str = "unused") -> Iterator[SimpleNamespace]:
    """`xtune serve MODEL FLAGS` in a thread: url, app, and an openai client pointed at it."""
    app = build_app(build_parser().parse_args(["serve", model, *flags]))
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    url = f"http://127.0.0.1:{port}"
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=api_key, max_retries=0, timeout=60)
    try:
        yield SimpleNamespace(url=url, app=app, client=client, model=model)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def tool_server(tool_use_model):
    """The tool-use model with the calculator and solve enabled by the operator, as `xtune chat` runs it."""
    _, final, _, _ = tool_use_model
    with serving(str(final), "--tools", "calculate,solve") as server:
        yield server


@pytest.fixture(scope="session")
def serve():
    """`serving` for tests that start a server of their own (test modules cannot import this conftest)."""
    return serving


@pytest.fixture(scope="session")
def free_port():
    return _free_port
