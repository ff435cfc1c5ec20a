"""`xtune serve` through the `openai` package, on the tool-use model that tests/chat/test_agent_learning.py trains
(one session fixture): the answers are `xtune chat`'s, the tool calls round-trip as OpenAI tool_calls, usage counts
are the tokenizer's, concurrent clients each get their own answer, a client that goes away frees its slot, and bad
requests get OpenAI error objects with the right status while the server stays up."""

from __future__ import annotations

import json
import re
import threading
import time

import httpx
import openai
import pytest
from transformers import AutoTokenizer

from xtune.cli import main


def chat_output(capsys, directory, *flags: str) -> str:
    """What `xtune chat DIR --greedy --prompt ...` prints for one prompt, without the newline it ends with."""
    capsys.readouterr()
    main(["chat", str(directory), "--greedy", *flags])
    out = capsys.readouterr().out
    assert out.endswith("\n")
    return out[:-1]


def streamed(client, **request) -> tuple[str, dict, str | None, object]:
    """(content, tool_calls by index, finish_reason, usage) of a streamed answer."""
    content, calls, finish, usage = [], {}, None, None
    for chunk in client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **request):
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            content.append(choice.delta.content or "")
            for call in choice.delta.tool_calls or []:
                calls[call.index] = call
            finish = choice.finish_reason or finish
    return "".join(content), calls, finish, usage


def test_answers_equal_xtune_chat_streamed_or_not(tool_server, tool_use_model, capsys):
    """The operator's tools run in the server as in `xtune chat`: the call, the `[tool]` line and the answer."""
    _, final, _, held_out = tool_use_model
    client = tool_server.client
    assert [m.id for m in client.models.list()] == [str(final)]
    question = next(q for q, tool, _ in held_out if tool == "calculate")
    expected = chat_output(capsys, final, "--prompt", question)
    assert "[tool] calculate(" in expected

    request = {"model": str(final), "messages": [{"role": "user", "content": question}], "temperature": 0}
    whole = client.chat.completions.create(**request)
    assert whole.choices[0].message.content == expected
    assert whole.choices[0].finish_reason == "stop"
    content, calls, finish, usage = streamed(client, **request)
    assert (content, calls, finish) == (expected, {}, "stop")
    assert usage == whole.usage

    cut = client.chat.completions.create(**request, max_tokens=3)
    assert cut.choices[0].finish_reason == "length"
    assert cut.usage.completion_tokens == 3
    assert expected.startswith(cut.choices[0].message.content)


def test_tool_calls_round_trip(tool_server, tool_use_model):
    """Tools the request brings are the client's to run: the model's call comes back as tool_calls (streamed with
    its index), the client sends the result, and the model answers with it. Usage counts equal the tokenizer's
    (its chat template is the one training used)."""
    _, final, registry, held_out = tool_use_model
    client = tool_server.client
    tools = [registry.get("calculate").schema()]
    tokenizer = AutoTokenizer.from_pretrained(final)
    for question, _, arguments in [h for h in held_out if h[1] == "calculate"][:5]:
        messages = [{"role": "user", "content": question}]
        reply = client.chat.completions.create(model=str(final), messages=messages, tools=tools, temperature=0)
        [call] = reply.choices[0].message.tool_calls
        if json.loads(call.function.arguments) == arguments:  # the model gets most, not all, calls right
            break
    else:
        pytest.fail("no well-formed call in five held-out questions")
    assert reply.choices[0].finish_reason == "tool_calls"
    assert (call.type, call.function.name) == ("function", "calculate") and call.id
    content, calls, finish, _ = streamed(client, model=str(final), messages=messages, tools=tools, temperature=0)
    assert finish == "tool_calls" and list(calls) == [0]
    assert (calls[0].function.name, calls[0].function.arguments) == ("calculate", call.function.arguments)

    unparsed = client.chat.completions.create(
        model=str(final), messages=messages, tools=tools, tool_choice="none", temperature=0
    )  # no calls: neither the request's tools nor the operator's are run, and the model's text stays text
    assert unparsed.choices[0].message.tool_calls is None and unparsed.choices[0].finish_reason == "stop"
    assert "<tool_call>" in unparsed.choices[0].message.content and "[tool]" not in unparsed.choices[0].message.content

    result = registry.call("calculate", arguments).text
    messages += [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump(exclude_none=True)]},
        {"role": "tool", "tool_call_id": call.id, "content": result},
    ]
    answer = client.chat.completions.create(model=str(final), messages=messages, tools=tools, temperature=0)
    assert answer.choices[0].message.content == f"The answer is {result}."
    assert answer.choices[0].finish_reason == "stop"
    rendered = [
        {"role": "system", "content": ""},  # the trained config's evaluation.system
        messages[0],
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "function": {"name": "calculate", "arguments": arguments}}],
        },
        {"role": "tool", "content": result},
    ]
    prompt = tokenizer.apply_chat_template(rendered, add_generation_prompt=True, tokenize=True, return_dict=False)
    completion = tokenizer(answer.choices[0].message.content + tokenizer.eos_token, add_special_tokens=False)
    assert answer.usage.prompt_tokens == len(prompt)
    assert answer.usage.completion_tokens == len(completion.input_ids)  # the end-of-turn token counts


def test_eight_concurrent_streams_each_get_their_own_answer(tool_server, tool_use_model):
    _, final, _, held_out = tool_use_model
    client = tool_server.client
    questions = [q for q, _, _ in held_out[:8]]

    def request(question: str) -> dict:
        return {"model": str(final), "messages": [{"role": "user", "content": question}], "temperature": 0}

    alone = [client.chat.completions.create(**request(q)).choices[0].message.content for q in questions]
    together: dict[int, str] = {}

    def stream(i: int) -> None:
        together[i] = streamed(client, **request(questions[i]))[0]

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert [together.get(i) for i in range(8)] == alone
    assert len(set(alone)) > 4  # different questions, different answers: no client got another's


def error(response: httpx.Response) -> dict:
    body = response.json()["error"]
    assert body["message"] and body["type"]
    return body


def test_a_client_that_goes_away_frees_its_slot_and_bad_requests_get_openai_errors(one_layer_model_dir, serve):
    """One slot (--max-queue 1) and an API key, on a random-weight model (its answers run to max_tokens). A long
    stream takes the slot: another request is refused with 429; the stream's client goes away mid-answer, its
    generation stops, and the next request is served. Then a corpus of malformed requests, each answered with its
    status and an error object naming the field; the server stays up."""
    model = str(one_layer_model_dir)
    flags = ("--template", "qwen_chat", "--max-queue", "1", "--api-key", "sesame", "--max-new-tokens", "8")
    with serve(model, *flags, api_key="sesame") as server:
        key = {"Authorization": "Bearer sesame"}
        chat = f"{server.url}/v1/chat/completions"
        hello = {"model": model, "messages": [{"role": "user", "content": "Tom has 12 apples."}]}
        long = {**hello, "temperature": 2.0, "seed": 1, "max_tokens": 1500, "stream": True}
        with httpx.Client(timeout=30) as http:
            with http.stream("POST", chat, json=long, headers=key) as stream:
                lines = stream.iter_lines()
                assert [next(lines) for _ in range(6)]  # the answer is coming
                busy = http.post(chat, json=hello, headers=key)
                assert busy.status_code == 429 and error(busy)["code"] == "rate_limit_exceeded"
            generation = server.app.state.generation
            deadline = time.monotonic() + 20
            while not generation.finished and time.monotonic() < deadline:
                time.sleep(0.05)
            [(finish, tokens)] = generation.finished
            assert finish == "cancelled" and tokens < 1500
            served = http.post(chat, json=hello, headers=key)
            assert served.status_code == 200 and served.json()["choices"][0]["message"]["content"]

            user = {"role": "user", "content": "hi"}
            corpus = [  # (status, body or raw bytes, the param the message names)
                (400, b'{"model": ', None),
                (400, b"[1, 2]", None),
                (400, {"model": model}, "messages"),
                (400, {"model": model, "messages": []}, "messages"),
                (400, {"model": model, "messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
                (400, {"model": model, "messages": [{"role": "user", "content": 42}]}, "messages.0.content"),
                (400, {"model": model, "messages": [user], "temperature": "hot"}, "temperature"),
                (400, {"model": model, "messages": [user], "temperature": 5}, "temperature"),
                (400, {"model": model, "messages": [user], "max_tokens": 0}, "max_tokens"),
                (400, {"model": model, "messages": [user], "top_p": 0}, "top_p"),
                (400, {"model": model, "messages": [user], "n": 2}, "n"),
                (400, {"model": model, "messages": [user], "stop": ["a", "b", "c", "d", "e"]}, "stop"),
                (400, {"model": model, "messages": [user], "stream": "yes"}, "stream"),
                (400, {"model": model, "messages": [user], "tools": [{"type": "code"}]}, "tools.0.type"),
                (400, {"model": model, "messages": [user], "tool_choice": "required"}, "tool_choice"),
                (400, {"model": model, "messages": [user, {"role": "assistant", "content": "x"}]}, "messages"),
                (400, {"model": model, "messages": [{"role": "user", "content": "x " * 3000}]}, "messages"),
                (
                    400,
                    {
                        "model": model,
                        "messages": [
                            {
                                "role": "user",
                                "content": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}],
                            }
                        ],
                    },
                    "messages.0.content.0.image_url",
                ),
                (404, {"model": "gpt-4o", "messages": [user]}, "model"),
                (413, b"{" + b" " * (16 * 1024 * 1024) + b"}", None),
            ]
            for status, body, param in corpus:
                raw = body if isinstance(body, bytes) else json.dumps(body).encode()
                response = http.post(chat, content=raw, headers={**key, "Content-Type": "application/json"})
                assert response.status_code == status, (body if len(raw) < 500 else "(big)", response.text)
                got = error(response)
                if param is not None:
                    assert got["param"] == param and got["message"].startswith(param), got
            for headers in ({}, {"Authorization": "Bearer guess"}):
                refused = http.post(chat, json=hello, headers=headers)
                assert refused.status_code == 401 and error(refused)["code"] == "invalid_api_key"
            assert http.get(f"{server.url}/v1/models", headers={}).status_code == 401
            assert http.get(f"{server.url}/v1/models/gpt-4o", headers=key).status_code == 404
            assert http.post(chat, json=hello, headers=key).status_code == 200  # still serving
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{server.url}/v1", api_key="guess", max_retries=0).models.list()


def test_web_cli_warns_when_it_listens_beyond_this_machine(tool_use_model, tool_server, monkeypatch, capsys):
    """`xtune web` on all interfaces without --api-key: a warning and the page's address, then uvicorn on that
    address (recorded here instead of run); the page loads nothing from the network."""
    import uvicorn

    _, final, _, _ = tool_use_model
    ran = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: ran.append(kwargs))
    main(["web", str(final), "--host", "0.0.0.0", "--port", "8123"])
    out, err = capsys.readouterr()
    assert f"chat page {final} at http://0.0.0.0:8123/" in out
    assert "--host 0.0.0.0 without --api-key" in err
    assert [(r["host"], r["port"]) for r in ran] == [("0.0.0.0", 8123)]
    main(["serve", str(final)])  # the default binds this machine only, without a warning
    assert ran[-1]["host"] == "127.0.0.1" and "warning" not in capsys.readouterr().err

    page = httpx.get(f"{tool_server.url}/")
    assert page.status_code == 200 and "<title>xtune chat</title>" in page.text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page.text)  # no CDN: everything is inline
