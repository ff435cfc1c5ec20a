"""Generation with a KV cache, stop words and streaming, and multi-turn chat sessions. Reference: transformers'
`model.generate(do_sample=False)` on the same random tiny Llama: greedy decoding is defined by it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from xtune.chat import session as session_module
from xtune.chat.generate import Generation, GenerationSettings, generate
from xtune.chat.session import ChatSession
from xtune.templates import get_template

TINY_LLAMA = Path(__file__).resolve().parents[2] / "src" / "xtune" / "assets" / "tiny-llama"
QWEN = get_template("qwen_chat")
N = 24


@pytest.fixture(scope="module")
def model():
    config = AutoConfig.from_pretrained(TINY_LLAMA)
    config.num_hidden_layers = 2
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def chat_ids(tokenizer, content: str) -> list[int]:
    text = QWEN.render_text([{"role": "user", "content": content}], add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False).input_ids


def hf_greedy(model, tokenizer, ids: list[int], max_new_tokens: int = N, eos_token_id: int | None = None) -> list[int]:
    """The new tokens of transformers' greedy decoding, up to (not including) the end-of-sequence token."""
    eos = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]), do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=0
        )
    new = out[0, len(ids) :].tolist()
    return new[: new.index(eos)] if eos in new else new


class Recorder:
    def __init__(self):
        self.pieces: list[str] = []

    def __call__(self, text: str) -> None:
        self.pieces.append(text)

    @property
    def text(self) -> str:
        return "".join(self.pieces)


@pytest.mark.parametrize("content", ["What is the capital of France?", "请介绍一下你自己"])
def test_greedy_generation_equals_transformers(model, tiny_tokenizer, content):
    ids = chat_ids(tiny_tokenizer, content)
    new = hf_greedy(model, tiny_tokenizer, ids)
    assert len(new) == N and len(set(new)) > 3  # a varied continuation, not one token repeated
    expected = tiny_tokenizer.decode(new, skip_special_tokens=False).rstrip("\ufffd")
    stream = Recorder()
    model.train()  # as during training-time evaluation: generate switches to eval mode and back
    try:
        reply = generate(model, tiny_tokenizer, ids, GenerationSettings(max_new_tokens=N), on_text=stream)
        assert model.training
    finally:
        model.eval()
    assert reply.text == expected
    assert (reply.finish_reason, reply.prompt_tokens, reply.completion_tokens) == ("length", len(ids), N)
    assert stream.text == expected
    assert len(stream.pieces) > 1  # streamed as it was generated, not once at the end


def test_generation_stops_at_the_end_of_sequence_token(model, tiny_tokenizer):
    """Pretend the 6th generated token is the tokenizer's eos: generation ends there, like transformers'."""

    class EosIs:
        def __init__(self, tokenizer, eos_token_id):
            self.tokenizer, self.eos_token_id = tokenizer, eos_token_id

        def __getattr__(self, name):
            return getattr(self.tokenizer, name)

    ids = chat_ids(tiny_tokenizer, "What is the capital of France?")
    eos = hf_greedy(model, tiny_tokenizer, ids)[5]
    new = hf_greedy(model, tiny_tokenizer, ids, eos_token_id=eos)
    assert 0 < len(new) <= 5
    expected = tiny_tokenizer.decode(new, skip_special_tokens=False).rstrip("\ufffd")
    reply = generate(model, EosIs(tiny_tokenizer, eos), ids, GenerationSettings(max_new_tokens=N))
    assert reply.text == expected
    assert (reply.finish_reason, reply.completion_tokens) == ("stop", len(new) + 1)  # the eos counts, as OpenAI's


def stop_word_position(tokenizer, new: list[int], width: int) -> tuple[int, str]:
    """The first k >= 3 where the text of tokens new[k:k+width] makes a clean stop word: whole characters that first
    appear right after the text of new[:k], which does not end in an incomplete character."""
    for k in range(3, len(new) - width):
        prefix = tokenizer.decode(new[:k], skip_special_tokens=False)
        word = tokenizer.decode(new[k : k + width], skip_special_tokens=False)
        joined = tokenizer.decode(new[: k + width], skip_special_tokens=False)
        clean = word.strip() and "\ufffd" not in word and not prefix.endswith("\ufffd")
        if clean and joined == prefix + word and joined.find(word) == len(prefix):
            return k, word
    raise AssertionError("no usable stop word in the continuation")


@pytest.mark.parametrize("width", [1, 2], ids=["one-token", "two-token"])
def test_stop_word_ends_the_reply_and_is_not_returned_or_streamed(model, tiny_tokenizer, width):
    ids = chat_ids(tiny_tokenizer, "What is the capital of France?")
    new = hf_greedy(model, tiny_tokenizer, ids)
    k, word = stop_word_position(tiny_tokenizer, new, width)
    expected = tiny_tokenizer.decode(new[:k], skip_special_tokens=False)
    assert expected and word not in expected

    stream = Recorder()
    settings = GenerationSettings(max_new_tokens=N, stop_words=["never appears", word])
    reply = generate(model, tiny_tokenizer, ids, settings, on_text=stream)
    assert (reply.text, reply.finish_reason) == (expected, "stop")
    # Streaming holds back text that may start a stop word: for a two-token stop word the first token's text was
    # already generated when the second one completed it, and must not have been streamed.
    assert stream.text == expected


def test_top_p_near_zero_samples_the_greedy_token(model, tiny_tokenizer):
    """Nucleus sampling keeps at least the most likely token; with top_p -> 0 it keeps only that one."""
    ids = chat_ids(tiny_tokenizer, "请介绍一下你自己")
    greedy = generate(model, tiny_tokenizer, ids, GenerationSettings(max_new_tokens=12))
    settings = GenerationSettings(max_new_tokens=12, temperature=1.5, top_p=1e-6)
    assert (
        generate(model, tiny_tokenizer, ids, settings, generator=torch.Generator().manual_seed(3)).text == greedy.text
    )


def test_sampling_is_reproducible_with_a_seeded_generator(model, tiny_tokenizer):
    ids = chat_ids(tiny_tokenizer, "请介绍一下你自己")
    settings = GenerationSettings(max_new_tokens=16, temperature=1.0, top_p=0.9)
    first = generate(model, tiny_tokenizer, ids, settings, generator=torch.Generator().manual_seed(7))
    again = generate(model, tiny_tokenizer, ids, settings, generator=torch.Generator().manual_seed(7))
    assert first.text == again.text


def test_chat_session_keeps_history_and_reset_clears_it(model, tiny_tokenizer, monkeypatch):
    prompts, prompt_ids = [], []

    def recording_generate(model_, tokenizer, input_ids, settings, on_text=None, **kwargs):
        prompt_ids.append(input_ids)
        prompts.append(tokenizer.decode(input_ids, skip_special_tokens=False))
        return generate(model_, tokenizer, input_ids, settings, on_text)

    monkeypatch.setattr(session_module, "generate", recording_generate)
    settings = GenerationSettings(max_new_tokens=8)
    session = ChatSession(model, tiny_tokenizer, QWEN, settings, system="你是 xtune 小助手。")
    assert session.settings.stop_words == ["<|im_end|>", "<|endoftext|>"]  # the template's, eos included
    system = {"role": "system", "content": "你是 xtune 小助手。"}

    first = session.ask("你好")
    assert prompts[0] == QWEN.render_text([system, {"role": "user", "content": "你好"}], add_generation_prompt=True)
    assert first == generate(model, tiny_tokenizer, prompt_ids[0], session.settings).text

    second = session.ask("再说一遍")
    history = [
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": first},
        {"role": "user", "content": "再说一遍"},
    ]
    assert prompts[1] == QWEN.render_text([system, *history], add_generation_prompt=True)
    assert prompts[1].startswith(prompts[0] + first)
    assert session.history == [*history, {"role": "assistant", "content": second}]

    session.reset()
    assert session.history == []
    session.ask("猫有几条腿？")
    assert prompts[2] == QWEN.render_text([system, {"role": "user", "content": "猫有几条腿？"}], True)
    assert "你好" not in prompts[2]


def test_sessions_sharing_settings_do_not_pile_up_stop_words(model, tiny_tokenizer):
    """The training loop's evaluation builds one session per prompt from one GenerationSettings."""
    settings = GenerationSettings(max_new_tokens=4, stop_words=["###"])
    for _ in range(3):
        session = ChatSession(model, tiny_tokenizer, QWEN, settings)
    assert session.settings.stop_words == ["###", "<|im_end|>", "<|endoftext|>"]


# --- the tool loop, with scripted replies: what the model sees after each call ---------------------------------


def scripted(monkeypatch, replies: list[str]) -> list[str]:
    """Replace generation with `replies` in turn; returns the list the prompts are recorded in."""
    prompts, queue = [], list(replies)

    def fake_generate(model_, tokenizer, input_ids, settings, on_text=None, **kwargs):
        prompts.append(tokenizer.decode(input_ids, skip_special_tokens=False))
        return Generation(queue.pop(0), "stop", len(input_ids), 1)

    monkeypatch.setattr(session_module, "generate", fake_generate)
    return prompts


CALL = '<tool_call>\n{"name": "calculate", "arguments": {"expression": "6*7"}}\n</tool_call>'


def test_tool_loop_runs_the_call_and_shows_the_result_to_the_model(model, tiny_tokenizer, monkeypatch):
    from xtune.chat.tools import build_registry

    prompts = scripted(monkeypatch, [f"Let me compute.\n{CALL}", "It is 42."])
    shown = []
    session = ChatSession(
        model, tiny_tokenizer, QWEN, GenerationSettings(), tools=build_registry(["calculate", "solve"])
    )
    answer = session.ask("6 times 7?", on_tool=lambda call, result: shown.append((call.name, result.text)))
    assert answer == "It is 42." and shown == [("calculate", "42")]
    assert "# Tools" in prompts[0] and '"name": "solve"' in prompts[0]  # the tools are listed in the prompt
    assert prompts[1].startswith(prompts[0] + "Let me compute.\n" + CALL)  # the call as the model wrote it
    assert prompts[1].endswith("<|im_start|>tool\n42<|im_end|>\n<|im_start|>assistant\n")
    assert [m["role"] for m in session.history] == ["user", "assistant", "tool", "assistant"]


@pytest.mark.parametrize(
    ("call", "error"),
    [
        ('<tool_call>\n{"name": "calculate", "arguments": {"expression": "1+"}}\n</tool_call>', "error:"),
        ('<tool_call>\n{"name": "calculate", "arguments": {oops}}\n</tool_call>', "not valid JSON"),
        ('<tool_call>\n{"name": "shell", "arguments": {"cmd": "rm -rf /"}}\n</tool_call>', "unknown tool 'shell'"),
        ('<tool_call>\n{"name": "calculate", "arguments": {"expr": "1"}}\n</tool_call>', "expression"),
        (
            '<tool_call>\n{"name": "calculate", "arguments": {"expression": "__import__(\'os\')"}}\n</tool_call>',
            "error",
        ),
    ],
)
def test_a_malformed_call_gets_an_error_result_the_model_reads(model, tiny_tokenizer, monkeypatch, call, error):
    from xtune.chat.tools import build_registry

    prompts = scripted(monkeypatch, [call, "Sorry."])
    session = ChatSession(model, tiny_tokenizer, QWEN, GenerationSettings(), tools=build_registry(["calculate"]))
    assert session.ask("?") == "Sorry."
    result = session.history[2]
    assert result["role"] == "tool" and error in result["content"] and result["content"] in prompts[1]


def test_tool_rounds_are_bounded(model, tiny_tokenizer, monkeypatch):
    from xtune.chat.tools import build_registry

    prompts = scripted(monkeypatch, [CALL] * 10)
    session = ChatSession(
        model, tiny_tokenizer, QWEN, GenerationSettings(), tools=build_registry(["calculate"]), max_tool_rounds=3
    )
    assert session.ask("?") == CALL  # the fourth reply still calls a tool: it is returned, not run
    assert len(prompts) == 4 and sum(m["role"] == "tool" for m in session.history) == 3


def test_react_models_stop_before_inventing_an_observation(model, tiny_tokenizer, monkeypatch):
    from xtune.chat.tools import build_registry

    react = get_template("default")
    prompts = scripted(
        monkeypatch, ['Thought: multiply\nAction: calculate\nAction Input: {"expression": "6*7"}\n', "Final Answer: 42"]
    )
    session = ChatSession(model, tiny_tokenizer, react, GenerationSettings(), tools=build_registry(["calculate"]))
    assert "Observation:" in session.settings.stop_words
    assert session.ask("6 times 7?") == "Final Answer: 42"
    assert prompts[1].endswith('Action Input: {"expression": "6*7"}\nObservation: 42\n')  # the turn continues


def test_build_registry_takes_builtin_names_and_user_functions(tmp_path):
    from xtune.chat.tools import build_registry
    from xtune.errors import XtuneError

    (tmp_path / "my_tools.py").write_text(
        'def shout(text: str) -> str:\n    """Upper-case the text.\n\n    Args:\n        text: what to shout\n    """\n'
        "    return text.upper()\n"
    )
    registry = build_registry(["calculate", f"{tmp_path / 'my_tools.py'}:shout"])
    assert [t.name for t in registry.list()] == ["calculate", "shout"]
    assert registry.call("shout", {"text": "hi"}).text == "HI"
    with pytest.raises(XtuneError, match="unknown tool 'calc'; built-in tools: calculate, solve, search"):
        build_registry(["calc"])
