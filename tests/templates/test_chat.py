"""Chat templates: rendering equals the jinja export run by transformers, and the official formats by hand."""

import pytest

from xtune.errors import ConfigError
from xtune.templates import TEMPLATES, get_template, resolve_template
from xtune.templates.jinja import TokenizerTemplate

SYSTEM = {"role": "system", "content": "You are terse."}
MULTI_TURN = [
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "Capital of France? {content} {bos}"},  # braces are user text, not placeholders
    {"role": "assistant", "content": "Paris.", "loss": False},
    {"role": "user", "content": "你好"},
    {"role": "assistant", "content": "你好！"},
]
CONVERSATIONS = {
    "multi_turn": MULTI_TURN,
    "multi_turn_with_system": [SYSTEM, *MULTI_TURN],
    "prompt_only": MULTI_TURN[:1],
    "system_and_prompt": [SYSTEM, MULTI_TURN[0]],
}


@pytest.mark.parametrize("generation_prompt", [False, True])
@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_render_text_equals_the_exported_jinja_template(
    tiny_tokenizer, monkeypatch, name, conversation, generation_prompt
):
    template = TEMPLATES[name]
    messages = CONVERSATIONS[conversation]
    monkeypatch.setattr(tiny_tokenizer, "chat_template", template.to_jinja())
    expected = tiny_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    got = template.render_text(
        messages, add_generation_prompt=generation_prompt, bos=tiny_tokenizer.bos_token, eos=tiny_tokenizer.eos_token
    )
    assert got == expected
    assert messages[-1]["content"].strip() in got
    if generation_prompt:
        assert got.endswith(template.assistant_prefix)


def test_whitespace_in_content_matches_the_jinja_export(tiny_tokenizer, monkeypatch):
    """Content with surrounding whitespace: kept by ChatML templates, trimmed by Llama 3, in both renderers."""
    messages = [{"role": "user", "content": "  spaced \n"}, {"role": "assistant", "content": "\n answer  "}]
    for template in TEMPLATES.values():
        monkeypatch.setattr(tiny_tokenizer, "chat_template", template.to_jinja())
        expected = tiny_tokenizer.apply_chat_template(messages, tokenize=False)
        assert template.render_text(messages, bos="<s>", eos="<|im_end|>") == expected


# --- the official formats, written out by hand -----------------------------------------------------------------


def test_qwen_chat_official_format_adds_default_system():
    text = get_template("qwen_chat").render_text(MULTI_TURN[:2], add_generation_prompt=False)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi there<|im_end|>\n"
        "<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
    )


def test_qwen_chat_own_system_replaces_default():
    text = get_template("qwen_chat").render_text([SYSTEM, MULTI_TURN[0]], add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    )
    assert "helpful assistant" not in text


def test_internlm2_chat_official_format_starts_with_bos():
    text = get_template("internlm2_chat").render_text(
        [SYSTEM, *MULTI_TURN[:2]], add_generation_prompt=False, bos="<s>", eos="</s>"
    )
    assert text == (
        "<s><|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nHi there<|im_end|>\n"
        "<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
    )
    # no default system prompt
    assert get_template("internlm2_chat").render_text(MULTI_TURN[:1], bos="<s>") == (
        "<s><|im_start|>user\nHi there<|im_end|>\n"
    )


def test_llama3_chat_official_format_trims_content():
    messages = [
        {"role": "system", "content": "  Be kind.\n"},
        {"role": "user", "content": "\n Hi  "},
        {"role": "assistant", "content": " Hello. "},
    ]
    text = get_template("llama3_chat").render_text(messages, add_generation_prompt=False, bos="<|begin_of_text|>")
    assert text == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe kind.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
    )
    prompt = get_template("llama3_chat").render_text(messages[1:2], add_generation_prompt=True, bos="<|begin_of_text|>")
    assert prompt == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_default_template_xtuner_format():
    text = get_template("default").render_text(
        [SYSTEM, *MULTI_TURN[:2]], add_generation_prompt=False, bos="<s>", eos="</s>"
    )
    assert text == "<s><|System|>:You are terse.\n<|User|>:Hi there\n<|Bot|>:Hello! How can I help?</s>\n"


# --- segments: what is trained --------------------------------------------------------------------------------


def test_segments_mark_only_assistant_content_and_end_of_turn_as_trained():
    segments = get_template("qwen_chat").render(MULTI_TURN, add_generation_prompt=False)
    trained = [s.text for s in segments if s.trained]
    assert trained == ["Hello! How can I help?<|im_end|>", "你好！<|im_end|>"]  # 'Paris.' has loss False
    assert "".join(s.text for s in segments) == get_template("qwen_chat").render_text(MULTI_TURN)
    untrained = "".join(s.text for s in segments if not s.trained)
    assert "Paris.<|im_end|>" in untrained and "<|im_start|>assistant\n" in untrained


def test_unknown_role_is_rejected():
    with pytest.raises(ValueError, match="role 'function'"):
        get_template("qwen_chat").render([{"role": "function", "content": "42"}])


def test_stop_words():
    assert get_template("qwen_chat").stop_words_for("<|im_end|>") == ["<|im_end|>", "<|endoftext|>"]
    assert get_template("default").stop_words_for("</s>") == ["</s>"]
    assert get_template("llama3_chat").stop_words_for("<|end_of_text|>") == ["<|eot_id|>", "<|end_of_text|>"]
    assert get_template("llama3_chat").stop_words_for(None) == ["<|eot_id|>", "<|end_of_text|>"]


def test_unknown_template_suggests():
    with pytest.raises(ConfigError) as info:
        get_template("qwen_caht")
    message = str(info.value)
    assert "did you mean 'qwen_chat'" in message
    assert all(name in message for name in TEMPLATES)


def test_resolve_template(tiny_tokenizer, monkeypatch):
    assert resolve_template("internlm2_chat", tiny_tokenizer) is TEMPLATES["internlm2_chat"]
    monkeypatch.setattr(tiny_tokenizer, "chat_template", None)
    with pytest.raises(ConfigError, match="no chat_template"):
        resolve_template("tokenizer_chat_template", tiny_tokenizer)
    # auto: the family's template first, then the tokenizer's jinja, then default
    assert resolve_template("auto", tiny_tokenizer) is TEMPLATES["default"]
    assert resolve_template("auto", tiny_tokenizer, model_type="qwen2") is TEMPLATES["qwen_chat"]
    assert resolve_template("auto", tiny_tokenizer, model_type="internlm2") is TEMPLATES["internlm2_chat"]
    assert resolve_template("auto", tiny_tokenizer, model_type="llama") is TEMPLATES["default"]
    monkeypatch.setattr(tiny_tokenizer, "get_vocab", lambda: {"<|eot_id|>": 0})
    assert resolve_template("auto", tiny_tokenizer, model_type="llama") is TEMPLATES["llama3_chat"]
    monkeypatch.undo()
    # Baichuan 1 and 2 share model_type baichuan; Baichuan 1's user token (id 195) is <reserved_102>
    assert resolve_template("auto", tiny_tokenizer, model_type="baichuan") is TEMPLATES["baichuan2_chat"]
    monkeypatch.setattr(tiny_tokenizer, "convert_ids_to_tokens", {195: "<reserved_102>"}.get)
    assert resolve_template("auto", tiny_tokenizer, model_type="baichuan") is TEMPLATES["baichuan_chat"]
    monkeypatch.undo()
    monkeypatch.setattr(tiny_tokenizer, "chat_template", TEMPLATES["qwen_chat"].to_jinja())
    assert isinstance(resolve_template("auto", tiny_tokenizer), TokenizerTemplate)
    assert isinstance(resolve_template("tokenizer_chat_template", tiny_tokenizer, "qwen2"), TokenizerTemplate)


@pytest.mark.parametrize("name", ["qwen_chat", "internlm2_chat", "default"])
def test_auto_template_trains_the_same_spans_as_the_named_template(tiny_tokenizer, monkeypatch, name):
    """`template: auto` on a tokenizer whose chat_template is an xtune export finds the same trained spans."""
    template = TEMPLATES[name]
    monkeypatch.setattr(tiny_tokenizer, "chat_template", template.to_jinja())
    auto = resolve_template("auto", tiny_tokenizer)
    bos, eos = tiny_tokenizer.bos_token, tiny_tokenizer.eos_token
    messages = [SYSTEM, *MULTI_TURN]
    named = template.render(messages, bos=bos, eos=eos)
    found = auto.render(messages, bos=bos, eos=eos)
    assert "".join(s.text for s in found) == "".join(s.text for s in named)
    assert [s.text for s in found if s.trained] == [s.text for s in named if s.trained]


@pytest.mark.parametrize("model_type", ["qwen2", "qwen2_moe"])
def test_auto_tells_qwen2_5_from_qwen2_by_the_tokenizer_template(tiny_tokenizer, monkeypatch, model_type):
    """Qwen2 and Qwen2.5 checkpoints share model_type qwen2; their official templates differ (default system prompt,
    tool results), so `auto` picks the variant that renders as the tokenizer's own template."""
    from .official_templates import OFFICIAL

    monkeypatch.setattr(tiny_tokenizer, "chat_template", OFFICIAL["qwen2_5_chat"]["jinja"])
    assert resolve_template("auto", tiny_tokenizer, model_type) is TEMPLATES["qwen2_5_chat"]
    monkeypatch.setattr(tiny_tokenizer, "chat_template", OFFICIAL["qwen_chat"]["jinja"])
    assert resolve_template("auto", tiny_tokenizer, model_type) is TEMPLATES["qwen_chat"]
    for name in ("qwen_chat", "qwen2_5_chat"):  # a tokenizer xtune exported after training with either
        monkeypatch.setattr(tiny_tokenizer, "chat_template", TEMPLATES[name].to_jinja())
        assert resolve_template("auto", tiny_tokenizer, model_type) is TEMPLATES[name]
    # a qwen2 fine-tune with a format of its own (DeepSeek-R1's distillations): its own template, not Qwen2's
    monkeypatch.setattr(tiny_tokenizer, "chat_template", OFFICIAL["deepseek"]["jinja"])
    assert isinstance(resolve_template("auto", tiny_tokenizer, model_type), TokenizerTemplate)
    monkeypatch.setattr(tiny_tokenizer, "chat_template", None)  # no template to tell by: Qwen2's, as before
    assert resolve_template("auto", tiny_tokenizer, model_type) is TEMPLATES["qwen_chat"]
