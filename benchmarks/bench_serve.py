"""What the server costs over `xtune chat`, and what several clients get: time to first token (TTFT) and tokens/s of
one greedy answer through `xtune serve` (a separate process, streamed through the `openai` client) against the
same answer from the chat session `xtune chat` runs (in this process), alternating; then the aggregate tokens/s of
1, 4 and 8 concurrent streaming clients. Without --model, a random-weight Llama with the built-in tokenizer (--size
tiny: 4 layers of the tiny Llama; small: GPT-2 small's shape) that never stops early, so every answer is exactly
--tokens long.

python benchmarks/bench_serve.py                       # 5 pairs, 128 tokens
python benchmarks/bench_serve.py --size small
python benchmarks/bench_serve.py --model work_dirs/tiny_assistant_lora/final --pairs 9 --json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import openai
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from xtune.cli import build_parser
from xtune.cli.chat import load_chat
from xtune.quiet import quiet_libraries

TINY_LLAMA = Path(__file__).resolve().parents[1] / "src" / "xtune" / "assets" / "tiny-llama"
PROMPT = "Tell me about the history of the printing press."


SIZES = {  # random-weight Llamas with the built-in tokenizer
    "tiny": {"num_hidden_layers": 4},  # the tiny Llama's own width: a few ms a token, the server's worst case
    "small": {  # GPT-2 small's width and depth (~85M parameters without the embeddings)
        "num_hidden_layers": 12,
        "hidden_size": 768,
        "intermediate_size": 2048,
        "num_attention_heads": 12,
        "num_key_value_heads": 4,
        "head_dim": 64,
    },
}


def random_model(directory: Path, size: str) -> Path:
    config = AutoConfig.from_pretrained(TINY_LLAMA)
    for key, value in SIZES[size].items():
        setattr(config, key, value)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    AutoTokenizer.from_pretrained(TINY_LLAMA).save_pretrained(directory)
    (directory / "xtune_config.yaml").write_text("data: {template: qwen_chat}\n")
    return directory


def start_server(model: str, threads: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
    command = [sys.executable, "-m", "xtune.cli", "serve", model, "--port", str(port), "--max-new-tokens", "4096"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            httpx.get(f"{url}/v1/models")
            return process, url
        except httpx.ConnectError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the server did not start") from None
            time.sleep(0.2)


def through_chat(session, tokens: int) -> tuple[float, float, str]:
    """(TTFT s, tokens/s, text) of one answer from the chat session, as `xtune chat --prompt` streams it."""
    session.reset()
    first = []
    start = time.perf_counter()
    session.history.append({"role": "user", "content": PROMPT})
    out = session.respond(lambda text: first or first.append(time.perf_counter()))
    elapsed = time.perf_counter() - start
    assert out.completion_tokens == tokens, out
    return first[0] - start, out.completion_tokens / elapsed, out.text


def through_server(client: openai.OpenAI, model: str, tokens: int) -> tuple[float, float, str]:
    first, text, usage = None, [], None
    start = time.perf_counter()
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": PROMPT}],
        temperature=0,
        max_tokens=tokens,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter()
            text.append(chunk.choices[0].delta.content)
    elapsed = time.perf_counter() - start
    assert usage.completion_tokens == tokens, usage
    return first - start, usage.completion_tokens / elapsed, "".join(text)


def concurrent(client: openai.OpenAI, model: str, tokens: int, clients: int) -> float:
    """Aggregate tokens/s of `clients` streams started together."""
    threads = [threading.Thread(target=through_server, args=(client, model, tokens)) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return clients * tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a model dir (default: a random-weight Llama of --size)")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, here and in the server")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    quiet_libraries()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(random_model(Path(tmp) / "model", args.size))
        setup = load_chat(build_parser().parse_args(["chat", model, "--greedy", "--max-new-tokens", str(args.tokens)]))
        session = setup.session()
        process, url = start_server(model, args.threads)
        try:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
            through_server(client, model, args.tokens)  # warm both up
            through_chat(session, args.tokens)
            chat, served = [], []
            for _ in range(args.pairs):
                chat.append(through_chat(session, args.tokens))
                served.append(through_server(client, model, args.tokens))
            assert {c[2] for c in chat} == {s[2] for s in served}, "the server's answer differs from chat's"
            aggregate = {n: concurrent(client, model, args.tokens, n) for n in (1, 4, 8)}
        finally:
            process.terminate()
            process.wait()
    result = {
        "model": args.model or f"random {args.size}",
        "tokens": args.tokens,
        "pairs": args.pairs,
        "chat_ttft_ms": 1000 * statistics.median(c[0] for c in chat),
        "server_ttft_ms": 1000 * statistics.median(s[0] for s in served),
        "chat_tokens_per_s": statistics.median(c[1] for c in chat),
        "server_tokens_per_s": statistics.median(s[1] for s in served),
        "aggregate_tokens_per_s": aggregate,
    }
    result["server_over_chat_tokens_per_s"] = result["server_tokens_per_s"] / result["chat_tokens_per_s"]
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['model']}: one greedy answer of {args.tokens} tokens, median of {args.pairs} alternating pairs")
    for name, key in (("xtune chat session", "chat"), ("xtune serve stream", "server")):
        print(f"  {name}: TTFT {result[key + '_ttft_ms']:7.1f} ms, {result[key + '_tokens_per_s']:7.1f} tokens/s")
    print(f"  server / chat tokens/s: {result['server_over_chat_tokens_per_s']:.3f}")
    for n, rate in aggregate.items():
        print(f"  {n} concurrent clients: {rate:7.1f} tokens/s in all ({rate / aggregate[1]:.2f}x one client)")


if __name__ == "__main__":
    main()
