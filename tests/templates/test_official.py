"""xtune's template catalogue against the official formats.

For every template whose model publishes a jinja chat_template (tests/templates/official_templates.py), the same
conversations rendered by the official jinja (through transformers' apply_chat_template) and by xtune give the same
text and the same token ids. Templates whose model has no jinja template are checked against a transcription of the
model's own prompt-building code. Every template's to_jinja() export renders as render_text(), and its trained
tokens are exactly the replies with their end-of-turn markers.

Deliberate deviations, asserted below rather than hidden:
- chatglm3, minicpm, baichuan2_chat, baichuan_chat: the official format has no end-of-turn marker (the next turn's
  header ends a reply); xtune writes eos after every reply so each trained reply learns to stop. Without those eos
  the texts match.
- minicpm: the official jinja leaves bos to the tokenizer; xtune writes it (xtune tokenizes without special tokens).
- gemma: the official template rejects a system message; xtune puts it before the first user text (as Gemma 3).
- qwen3: matches the official template with enable_thinking=False, the generation prompt included; a training
  conversation renders its final reply after an empty think block and earlier replies without, as the official one.
- reply_prefix (llama2_chat, mistral, mixtral, deepseek_v2, chatglm3, vicuna): the text the model writes between
  the header and its reply (a space; chatglm3's "\\n ") is trained with the reply, as it starts the reply's first token.
Edge cases not covered (contents with surrounding whitespace, several system messages): xtune trims
each message separately and renders system messages in place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
from jinja2.exceptions import TemplateError
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from xtune.data.encode import IGNORE_INDEX, encode_batch
from xtune.templates import TEMPLATES

from .official_templates import OFFICIAL

TINY_LLAMA = Path(__file__).resolve().parents[2] / "src" / "xtune" / "assets" / "tiny-llama"

SYSTEM = {"role": "system", "content": "You are terse."}
U1 = {"role": "user", "content": "Hi there"}
A1 = {"role": "assistant", "content": "Hello! How can I help?"}
U2 = {"role": "user", "content": "What is 2+2? {content} {bos}"}  # braces are user text, not placeholders
A2 = {"role": "assistant", "content": "It is 4."}

CONVERSATIONS = {
    "single_turn": [U1, A1],
    "multi_turn": [U1, A1, U2, A2],
    "system_single_turn": [SYSTEM, U1, A1],
    "system_multi_turn": [SYSTEM, U1, A1, U2, A2],
    "prompt": [U1],
    "system_prompt": [SYSTEM, U1],
    "history_prompt": [U1, A1, U2],
}
WITH_SYSTEM = tuple(name for name, messages in CONVERSATIONS.items() if messages[0]["role"] == "system")


@dataclass(frozen=True)
class Setup:
    """The model's bos/eos and special tokens, and how its official template is called."""

    bos: str | None
    eos: str | None
    specials: tuple[str, ...] = ()
    template_kwargs: dict = field(default_factory=dict)  # extra apply_chat_template arguments
    rejects: tuple[str, ...] = ()  # conversations the official template raises on
    eos_after_replies: bool = False  # deviation: xtune writes eos after each reply, the official format does not
    bos_by_tokenizer: bool = False  # deviation: the official jinja leaves bos to the tokenizer, xtune writes it


_DEEPSEEK_BOS, _DEEPSEEK_EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"

SETUPS: dict[str, Setup] = {
    "default": Setup("<s>", "</s>", ("<|System|>", "<|User|>", "<|Bot|>")),
    "internlm_chat": Setup("<s>", "</s>", ("<|System|>", "<|User|>", "<|Bot|>", "<eoh>", "<eoa>")),
    "internlm2_chat": Setup("<s>", "</s>", ("<|im_start|>", "<|im_end|>")),
    "qwen_chat": Setup(None, "<|im_end|>", ("<|im_start|>", "<|endoftext|>")),
    "qwen2_5_chat": Setup(None, "<|im_end|>", ("<|im_start|>", "<|endoftext|>")),
    "qwen3": Setup(
        None, "<|im_end|>", ("<|im_start|>", "<|endoftext|>", "<think>", "</think>"), {"enable_thinking": False}
    ),
    "llama2_chat": Setup("<s>", "</s>"),
    "llama3_chat": Setup(
        "<|begin_of_text|>", "<|eot_id|>", ("<|start_header_id|>", "<|end_header_id|>", "<|end_of_text|>")
    ),
    "mistral": Setup("<s>", "</s>"),
    "mixtral": Setup("<s>", "</s>"),
    "gemma": Setup("<bos>", "<eos>", ("<start_of_turn>", "<end_of_turn>"), rejects=WITH_SYSTEM),
    "phi3_chat": Setup("<s>", "<|endoftext|>", ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")),
    "cohere_chat": Setup(
        "<BOS_TOKEN>",
        "<|END_OF_TURN_TOKEN|>",
        ("<|START_OF_TURN_TOKEN|>", "<|SYSTEM_TOKEN|>", "<|USER_TOKEN|>", "<|CHATBOT_TOKEN|>"),
    ),
    "yi": Setup("<|startoftext|>", "<|im_end|>", ("<|im_start|>", "<|endoftext|>")),
    "zephyr": Setup("<s>", "</s>"),
    "vicuna": Setup("<s>", "</s>"),
    "deepseek": Setup(_DEEPSEEK_BOS, _DEEPSEEK_EOS, ("<｜User｜>", "<｜Assistant｜>")),
    "deepseek_v2": Setup(_DEEPSEEK_BOS, _DEEPSEEK_EOS),
    "deepseek_coder": Setup(_DEEPSEEK_BOS, "<|EOT|>"),
    "chatglm3": Setup(
        None,
        "</s>",
        ("[gMASK]", "sop", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"),
        eos_after_replies=True,
    ),
    "minicpm": Setup("<s>", "</s>", ("<用户>", "<AI>"), eos_after_replies=True, bos_by_tokenizer=True),
    "baichuan2_chat": Setup("<s>", "</s>", ("<reserved_106>", "<reserved_107>"), eos_after_replies=True),
    "baichuan_chat": Setup("<s>", "</s>", ("<reserved_102>", "<reserved_103>"), eos_after_replies=True),
}

# No official jinja template: checked against the model's own prompt-building code below.
WITHOUT_JINJA = {"default", "internlm_chat", "vicuna", "baichuan2_chat", "baichuan_chat"}

_TOKENIZERS: dict[str, PreTrainedTokenizerFast] = {}


def tokenizer_for(name: str) -> PreTrainedTokenizerFast:
    """The tiny byte-level BPE tokenizer shipped with xtune, with this model's bos/eos and markers as special
    tokens, so markers are single tokens as in the real tokenizer."""
    if name not in _TOKENIZERS:
        setup = SETUPS[name]
        backend = Tokenizer.from_file(str(TINY_LLAMA / "tokenizer.json"))
        backend.add_special_tokens([t for t in (setup.bos, setup.eos, *setup.specials) if t])
        _TOKENIZERS[name] = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=setup.bos, eos_token=setup.eos)
    return _TOKENIZERS[name]


def xtune_text(name: str, messages: list[dict], generation_prompt: bool) -> str:
    tokenizer = tokenizer_for(name)
    return TEMPLATES[name].render_text(
        messages, generation_prompt, bos=tokenizer.bos_token or "", eos=tokenizer.eos_token or ""
    )


def apply(tokenizer, jinja: str, messages: list[dict], generation_prompt: bool, **kwargs) -> str:
    tokenizer.chat_template = jinja
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt, **kwargs
        )
    finally:
        tokenizer.chat_template = None


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def test_every_template_is_checked_against_an_official_format():
    assert set(SETUPS) == set(TEMPLATES)
    assert set(OFFICIAL) | WITHOUT_JINJA == set(TEMPLATES)
    assert not set(OFFICIAL) & WITHOUT_JINJA
    assert all(entry["source"] and entry["jinja"] for entry in OFFICIAL.values())


OFFICIAL_CASES = [
    (name, conversation, generation_prompt)
    for name in sorted(OFFICIAL)
    for conversation in CONVERSATIONS
    if conversation not in SETUPS[name].rejects
    for generation_prompt in (False, True)
]


@pytest.mark.parametrize(("name", "conversation", "generation_prompt"), OFFICIAL_CASES)
def test_same_text_and_token_ids_as_the_official_template(name, conversation, generation_prompt):
    setup, tokenizer = SETUPS[name], tokenizer_for(name)
    messages = CONVERSATIONS[conversation]
    official = apply(tokenizer, OFFICIAL[name]["jinja"], messages, generation_prompt, **setup.template_kwargs)
    ours = xtune_text(name, messages, generation_prompt)
    if setup.eos_after_replies:  # deviation: an eos after each reply, nowhere else
        replies = sum(m["role"] == "assistant" for m in messages)
        assert ours.count(tokenizer.eos_token) == replies
        ours = ours.replace(tokenizer.eos_token, "")
    if setup.bos_by_tokenizer:  # deviation: xtune writes the bos the tokenizer adds to the official text
        assert ours.startswith(tokenizer.bos_token)
        ours = ours.removeprefix(tokenizer.bos_token)
    assert ours == official
    assert ids(tokenizer, ours) == ids(tokenizer, official)


@pytest.mark.parametrize(
    ("name", "conversation"), [(name, c) for name in sorted(OFFICIAL) for c in SETUPS[name].rejects]
)
def test_official_template_rejects(name, conversation):
    with pytest.raises(TemplateError):
        apply(tokenizer_for(name), OFFICIAL[name]["jinja"], CONVERSATIONS[conversation], False)


def test_gemma_puts_the_system_prompt_before_the_first_user_text():
    text = xtune_text("gemma", [SYSTEM, U1, A1], False)
    assert text == (
        "<bos><start_of_turn>user\nYou are terse.\n\nHi there<end_of_turn>\n"
        "<start_of_turn>model\nHello! How can I help?<end_of_turn>\n"
    )


def test_qwen3_think_block_on_the_final_reply_and_the_generation_prompt_only():
    think = "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    training = xtune_text("qwen3", [U1, A1, U2, A2], False)
    assert training.count(think) == 1 and training.index(think) > training.index(U2["content"])
    assert xtune_text("qwen3", [U1, A1, U2], True).endswith(think)
    assert think not in xtune_text("qwen3", [U1, A1, U2], True)[: -len(think)]
    trained = [s.text for s in TEMPLATES["qwen3"].render([U1, A1, U2, A2], eos="<|im_end|>") if s.trained]
    assert trained == [A1["content"] + "<|im_end|>", A2["content"] + "<|im_end|>"]  # the block is not trained


def test_merged_system_needs_a_following_user_message():
    for name in ("llama2_chat", "mistral", "gemma"):
        template = TEMPLATES[name]
        with pytest.raises(ValueError, match="first user message"):
            template.render([SYSTEM, A1])
        with pytest.raises(ValueError, match="first user message"):
            template.render([SYSTEM])
        tokenizer = tokenizer_for(name)
        with pytest.raises(TemplateError, match="first user message"):
            apply(tokenizer, template.to_jinja(), [SYSTEM, A1], False)


# --- templates without an official jinja: the model's own prompt-building code ---------------------------------


def internlm_build_inputs(query: str, history: list[tuple[str, str]]) -> str:
    """internlm/internlm-chat-7b modeling_internlm.py InternLMForCausalLM.build_inputs (the tokenizer adds bos)."""
    prompt = ""
    for record in history:
        prompt += f"""<|User|>:{record[0]}<eoh>\n<|Bot|>:{record[1]}<eoa>\n"""
    prompt += f"""<|User|>:{query}<eoh>\n<|Bot|>:"""
    return prompt


def test_internlm_chat_matches_internlm_build_inputs():
    history = [(U1["content"], A1["content"])]
    expected = "<s>" + internlm_build_inputs(U2["content"], history)
    assert xtune_text("internlm_chat", [U1, A1, U2], True) == expected


def fastchat_vicuna_prompt(system: str, messages: list[tuple[str, str | None]]) -> str:
    """lm-sys/FastChat fastchat/conversation.py, template vicuna_v1.1: SeparatorStyle.ADD_COLON_TWO, sep=' ',
    sep2='</s>', roles USER/ASSISTANT; a None message is the generation prompt. The tokenizer adds bos."""
    seps = [" ", "</s>"]
    ret = system + seps[0]
    for i, (role, message) in enumerate(messages):
        if message:
            ret += role + ": " + message + seps[i % 2]
        else:
            ret += role + ":"
    return ret


def test_vicuna_matches_fastchat():
    default_system = TEMPLATES["vicuna"].default_system
    turns = [("USER", U1["content"]), ("ASSISTANT", A1["content"]), ("USER", U2["content"])]
    assert xtune_text("vicuna", [U1, A1, U2], True) == "<s>" + fastchat_vicuna_prompt(
        default_system, [*turns, ("ASSISTANT", None)]
    )
    assert xtune_text("vicuna", [SYSTEM, U1, A1], False) == "<s>" + fastchat_vicuna_prompt(SYSTEM["content"], turns[:2])


def baichuan2_build_chat_input(messages: list[dict], user: str = "<reserved_106>", bot: str = "<reserved_107>") -> str:
    """baichuan-inc/Baichuan2-7B-Chat generation_utils.py build_chat_input, as text: the system content, then
    user_token_id (<reserved_106>) or assistant_token_id (<reserved_107>) before each message, and
    assistant_token_id when the last message is not the assistant's. Baichuan-13B-Chat's _build_chat_input does the
    same with the same ids (195, 196), which its vocabulary names <reserved_102> and <reserved_103>."""
    system, rounds = "", messages
    if messages[0]["role"] == "system":
        system, rounds = messages[0]["content"], messages[1:]
    text = system
    for message in rounds:
        text += (user if message["role"] == "user" else bot) + message["content"]
    if messages[-1]["role"] != "assistant":
        text += bot
    return text


@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize(
    ("name", "markers"),
    [("baichuan2_chat", ("<reserved_106>", "<reserved_107>")), ("baichuan_chat", ("<reserved_102>", "<reserved_103>"))],
)
def test_baichuan_chat_matches_build_chat_input(name, markers, conversation):
    messages = CONVERSATIONS[conversation]
    generation_prompt = messages[-1]["role"] != "assistant"
    ours = xtune_text(name, messages, generation_prompt)
    # deviation: an eos after each reply (Baichuan2's fine-tune.py trains eos there without writing it)
    assert ours.replace("</s>", "") == baichuan2_build_chat_input(messages, *markers)


# --- every template: the jinja export, and what is trained -----------------------------------------------------


@pytest.mark.parametrize("generation_prompt", [False, True])
@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_to_jinja_renders_as_render_text(name, conversation, generation_prompt):
    tokenizer = tokenizer_for(name)
    messages = CONVERSATIONS[conversation]
    exported = apply(tokenizer, TEMPLATES[name].to_jinja(), messages, generation_prompt)
    assert exported == xtune_text(name, messages, generation_prompt)


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_trained_tokens_are_the_replies_and_their_end_of_turn(name):
    template, tokenizer = TEMPLATES[name], tokenizer_for(name)
    bos, eos = tokenizer.bos_token or "", tokenizer.eos_token or ""
    segments = template.render([SYSTEM, U1, A1, U2, A2], bos=bos, eos=eos)
    sample = encode_batch([segments], tokenizer, max_length=4096)[0]
    runs, current = [], []
    for token, label in zip(sample.input_ids, sample.labels, strict=True):
        if label == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            assert label == token
            current.append(token)
    if current:
        runs.append(current)
    end_of_turn = template.assistant_suffix.replace("{eos}", eos)
    lead = template.reply_prefix  # what the model writes before the reply, e.g. the space after "[/INST]"
    expected = [lead + reply["content"] + end_of_turn for reply in (A1, A2)]
    assert [tokenizer.decode(run) for run in runs] == expected


TOOL_RESULTS = [  # results only, no calls: Qwen2 and Llama 3's official templates know no tool calls
    {"role": "user", "content": "What is 12 * 7?"},
    {"role": "assistant", "content": "Let me calculate."},
    {"role": "tool", "content": "84"},
    {"role": "assistant", "content": "12 * 7 = 84."},
]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "calculate",
            "description": "Evaluate an arithmetic expression.",
            "parameters": {
                "type": "object",
                "properties": {"expression": {"type": "string"}},
                "required": ["expression"],
            },
        },
    }
]
CALL = {"type": "function", "function": {"name": "calculate", "arguments": {"expression": "12 * 7"}}}
TOOL_USE = [
    SYSTEM,
    {"role": "user", "content": "What is 12 * 7?"},
    {"role": "assistant", "content": "Let me calculate.", "tool_calls": [CALL]},
    {"role": "tool", "content": "84"},
    {"role": "assistant", "content": "12 * 7 = 84."},
]


@pytest.mark.parametrize("name", ["qwen_chat", "llama3_chat"])
def test_tool_results_render_as_the_official_template(name):
    """Qwen2 and Llama 3 render any role generically."""
    tokenizer = tokenizer_for(name)
    for generation_prompt in (False, True):
        conversation = TOOL_RESULTS if not generation_prompt else TOOL_RESULTS[:3]
        official = apply(tokenizer, OFFICIAL[name]["jinja"], conversation, generation_prompt)
        assert xtune_text(name, conversation, generation_prompt) == official


SECOND_CALL = {"type": "function", "function": {"name": "calculate", "arguments": {"expression": "84 / 2"}}}
TWO_RESULTS = [  # two calls in one reply, then their two results: one user turn of two <tool_response> blocks
    SYSTEM,
    {"role": "user", "content": "What are 12 * 7 and 84 / 2?"},
    {"role": "assistant", "content": "", "tool_calls": [CALL, SECOND_CALL]},
    {"role": "tool", "content": "84"},
    {"role": "tool", "content": "42"},
    {"role": "assistant", "content": "84 and 42."},
]


@pytest.mark.parametrize("name", ["qwen2_5_chat", "qwen3"])
@pytest.mark.parametrize("conversation", ["with_system", "without_system", "two_results", "results_only"])
@pytest.mark.parametrize("with_tools", [True, False])
def test_qwen_tools_calls_and_results_render_as_the_official_template(name, conversation, with_tools):
    """The # Tools system block, <tool_call> JSON after the reply text, results as <tool_response> blocks in one
    user turn: Qwen2.5's and Qwen3's official templates, rendered by jinja, against xtune's."""
    tokenizer, template, setup = tokenizer_for(name), TEMPLATES[name], SETUPS[name]
    tools = TOOLS if with_tools else None
    messages = {
        "with_system": TOOL_USE,
        "without_system": TOOL_USE[1:],
        "two_results": TWO_RESULTS,
        "results_only": TOOL_RESULTS,
    }[conversation]
    for conversation, generation_prompt in ((messages, False), (messages[:-1], True)):
        official = apply(
            tokenizer, OFFICIAL[name]["jinja"], conversation, generation_prompt, tools=tools, **setup.template_kwargs
        )
        ours = template.render_text(conversation, generation_prompt, eos=tokenizer.eos_token, tools=tools)
        assert ours == official
        assert ids(tokenizer, ours) == ids(tokenizer, official)
        exported = apply(tokenizer, template.to_jinja(), conversation, generation_prompt, tools=tools)
        assert exported == ours


def test_qwen2_5_differs_from_qwen2_where_the_official_templates_do():
    """Qwen2.5 checkpoints are model_type qwen2 too, but their official template writes another default system
    prompt and tool results inside a user turn: qwen_chat (Qwen2's) renders neither as Qwen2.5 does."""
    qwen2, qwen2_5 = (xtune_text(name, TOOL_RESULTS, False) for name in ("qwen_chat", "qwen2_5_chat"))
    assert "<|im_start|>tool\n84<|im_end|>" in qwen2 and "<tool_response>" not in qwen2
    assert "<|im_start|>user\n<tool_response>\n84\n</tool_response><|im_end|>" in qwen2_5
    assert qwen2_5 == apply(tokenizer_for("qwen2_5_chat"), OFFICIAL["qwen2_5_chat"]["jinja"], TOOL_RESULTS, False)
    assert qwen2 != qwen2_5


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_tool_use_trains_only_the_replies_and_calls_and_exports_to_jinja(name):
    tokenizer, template = tokenizer_for(name), TEMPLATES[name]
    bos, eos = tokenizer.bos_token or "", tokenizer.eos_token or ""
    for tools in (TOOLS, None):
        exported = apply(tokenizer, template.to_jinja(), TOOL_USE, False, tools=tools)
        assert exported == template.render_text(TOOL_USE, bos=bos, eos=eos, tools=tools)
        prompt = apply(tokenizer, template.to_jinja(), TOOL_USE[:-1], True, tools=tools)
        assert prompt == template.render_text(TOOL_USE[:-1], True, bos=bos, eos=eos, tools=tools)
    segments = template.render(TOOL_USE, bos=bos, eos=eos, tools=TOOLS)
    sample = encode_batch([segments], tokenizer, 4096)[0]
    trained = tokenizer.decode([t for t, label in zip(sample.input_ids, sample.labels, strict=True) if label >= 0])
    assert "Let me calculate." in trained and "12 * 7 = 84." in trained
    assert '"12 * 7"' in trained  # the call's arguments
    assert "84" not in trained.replace("12 * 7 = 84.", "")  # the result is the tool's, not the model's
    assert "Evaluate an arithmetic expression" not in trained  # nor is the tool list


def test_react_is_the_tool_format_of_models_without_one():
    text = TEMPLATES["mistral"].render_text(TOOL_USE[1:], tools=TOOLS, bos="<s>", eos="</s>")
    assert "[INST] You can use these tools:\ncalculate: Evaluate an arithmetic expression. {" in text
    assert text.endswith(
        '[/INST] Let me calculate.\nAction: calculate\nAction Input: {"expression": "12 * 7"}\n'
        "Observation: 84\n12 * 7 = 84.</s>"
    )
    # After an Observation the model continues its own turn: no new header in the generation prompt.
    prompt = TEMPLATES["mistral"].render_text(TOOL_USE[1:4], True, tools=TOOLS, bos="<s>", eos="</s>")
    assert prompt.endswith("Observation: 84\n")
