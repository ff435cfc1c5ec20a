"""The test that proves tool-use fine-tuning works: a tiny random-init model, fine-tuned on CPU on synthetic word
problems whose answers need the calculator (and equations that need solve), learns to call the right tool with the
numbers of the question, and the chat loop runs the tool and answers with its result, on held-out questions.

No tool list in the prompt (evaluation.list_tools: false): the model learns its two tools from the data, and the
list (hundreds of tokens in every sample) would make the run minutes longer.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess

import pytest

from xtune.assets import resolve_path
from xtune.chat.generate import GenerationSettings
from xtune.chat.session import ChatSession
from xtune.chat.tools import build_registry
from xtune.config.schema import validate_config
from xtune.templates.tool_calls import parse_tool_calls
from xtune.train.recipe import FinetuneRecipe

TRAIN_RECORDS = 4000
# Measured: a 4-layer, 256-wide model copies the numbers into its calls for 40/40 held-out questions after 700
# steps, but copies the tool's result into its answer for only 34/40 (two threads); after 900 steps, 40/40 and 40/40.
# 600 steps at lr 2e-3 gave 40/40 calls but 0/40 answers. A 128-wide one needed 1500 steps for 36/40 calls.
WORD_PROBLEMS = [  # (question, expression): the numbers must go from the question into the call
    ("Tom has {a} apples and buys {b} more. How many apples does he have?", "{a} + {b}"),
    ("A box holds {a} pens. How many pens are in {b} boxes?", "{a} * {b}"),
    ("Lily had {a} stickers and gave {b} away. How many are left?", "{a} - {b}"),
    ("A train travels {a} km each hour for {b} hours. How far does it go?", "{a} * {b}"),
]


def problem(rng: random.Random) -> tuple[str, str, dict]:
    """(question, tool, arguments)."""
    if rng.random() < 0.25:
        p, x, q = rng.randint(2, 9), rng.randint(2, 30), rng.randint(1, 50)
        return f"Solve {p}*x + {q} = {p * x + q}.", "solve", {"equation": f"{p}*x + {q} = {p * x + q}"}
    question, expression = rng.choice(WORD_PROBLEMS)
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    if expression.startswith("{a} - "):
        a, b = max(a, b), min(a, b)
    return question.format(a=a, b=b), "calculate", {"expression": expression.format(a=a, b=b)}


def record(question: str, tool: str, arguments: dict, registry) -> dict:
    result = registry.call(tool, arguments)
    assert result.ok, result.text
    call = {"type": "function", "function": {"name": tool, "arguments": json.dumps(arguments)}}
    return {
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "content": result.text},
            {"role": "assistant", "content": f"The answer is {result.text}."},
        ]
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory, learning_threads):
    """Fine-tune once; the tests below chat with the result."""
    root = tmp_path_factory.mktemp("agent")
    registry = build_registry(["calculate", "solve"])
    rng = random.Random(0)
    held_out: list[tuple[str, str, dict]] = []
    while len(held_out) < 40:
        candidate = problem(rng)
        if candidate[0] not in {q for q, _, _ in held_out}:
            held_out.append(candidate)
    unseen = {q for q, _, _ in held_out}
    train = [p for p in (problem(rng) for _ in range(TRAIN_RECORDS + 200)) if p[0] not in unseen][:TRAIN_RECORDS]
    data = root / "tool_use.jsonl"
    data.write_text("".join(json.dumps(record(*p, registry)) + "\n" for p in train), encoding="utf-8")

    model_dir = root / "tiny-agent"  # the built-in tokenizer with a smaller, faster model
    shutil.copytree(resolve_path("builtin:tiny-llama"), model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config.update(hidden_size=256, intermediate_size=768, head_dim=32, num_attention_heads=8, num_key_value_heads=4)
    (model_dir / "config.json").write_text(json.dumps(config))

    cfg = validate_config(
        {
            "model": {"path": str(model_dir), "method": "full", "random_init": True},
            "data": {
                "datasets": [{"path": str(data), "format": "openai"}],
                "template": "qwen_chat",
                "system": "",  # no default system prompt: shorter rows
                "max_length": 192,
                "cache": False,
            },
            "training": {
                "max_steps": 900,
                "batch_size": 16,
                "gradient_accumulation": 1,
                "lr": 1e-3,
                "warmup_ratio": 0.05,
                "mixed_precision": "fp32",
                "log_every": 50,
                "compile": True,  # the compiled path learns as eager does, and the steps take less CI time
            },
            "saving": {"save_steps": 10_000},
            "evaluation": {"tools": ["calculate", "solve"], "list_tools": False, "system": "", "max_new_tokens": 128},
        }
    )
    recipe = FinetuneRecipe(cfg, root / "work")
    recipe.setup()
    assert recipe.data.truncated == 0  # a cut sample would not teach the final answer
    final = recipe.train()
    return recipe, final, registry, held_out


def chat_session(recipe: FinetuneRecipe, registry) -> ChatSession:
    settings = GenerationSettings(max_new_tokens=128)
    return ChatSession(
        recipe.model, recipe.tokenizer, recipe.template, settings, system="", tools=registry, list_tools=False
    )


def test_a_tiny_model_learns_to_call_tools_and_answer_with_their_results(trained):
    recipe, _, registry, held_out = trained
    well_formed = correct = 0
    for question, tool, arguments in held_out:
        session = chat_session(recipe, registry)
        answer = session.ask(question)
        first_reply, result = session.history[1], session.history[2]
        # well-formed: the first reply calls the right tool, and the registry accepts the call
        calls = first_reply.get("tool_calls") or []
        if calls and calls[0]["function"]["name"] == tool and not result["content"].startswith("error"):
            well_formed += 1
        if answer == f"The answer is {registry.call(tool, arguments).text}.":
            correct += 1
    n = len(held_out)
    assert well_formed >= 0.9 * n, f"{well_formed}/{n} well-formed calls"
    assert correct >= 0.8 * n, f"{correct}/{n} correct final answers"


def test_xtune_chat_runs_the_tools_and_shows_each_call(trained, xtune_env, xtune_cmd):
    """The saved model through the CLI: the trained config supplies the tools, the transcript shows the call. On a
    question the model answers right in-process (it gets most, not all, right: the test above holds it to 80%)."""
    recipe, final, registry, held_out = trained
    question, tool, arguments, expected = next(
        (q, t, a, registry.call(t, a).text)
        for q, t, a in held_out
        if t == "calculate" and chat_session(recipe, registry).ask(q) == f"The answer is {registry.call(t, a).text}."
    )
    out = subprocess.run(
        [*xtune_cmd, "chat", str(final), "--greedy", "--prompt", question],
        env=xtune_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert f"[tool] calculate({json.dumps(arguments)}) -> {expected}" in out.stdout
    assert out.stdout.rstrip().endswith(f"The answer is {expected}.")
    assert parse_tool_calls(out.stdout, "qwen")  # the model's call is streamed too
