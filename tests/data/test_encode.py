"""Token ids and labels: what is trained, what is masked, and truncation to max_length."""

import json
from collections import Counter

import pytest
from transformers import AutoTokenizer

from xtune.config.schema import DatasetSettings, DataSettings
from xtune.data import build_training_data
from xtune.data.encode import IGNORE_INDEX, adds_bos, encode_batch, sample_segments
from xtune.templates import TEMPLATES

MESSAGES = [
    {"role": "system", "content": "You answer in one line."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "It is 5.", "loss": False},
    {"role": "user", "content": "Really?"},
    {"role": "assistant", "content": "Sorry: 2+2 is 4."},
]
TRAINED_REPLIES = ["Hello! How can I help?", "Sorry: 2+2 is 4."]
# Templates whose end-of-turn marker is a special token of the tiny tokenizer (<|im_end|>, its eos).
CHATML_LIKE = ["qwen_chat", "internlm2_chat", "default"]


def trained_runs(input_ids, labels):
    """Contiguous runs of trained tokens; a trained label must be the token id itself."""
    runs, current = [], []
    for token, label in zip(input_ids, labels, strict=True):
        if label == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            assert label == token
            current.append(token)
    if current:
        runs.append(current)
    return runs


def encode_messages(tokenizer, name, messages, max_length=4096):
    segments = sample_segments({"messages": messages}, TEMPLATES[name], tokenizer)
    return encode_batch([segments], tokenizer, max_length)[0]


@pytest.mark.parametrize("name", CHATML_LIKE)
def test_input_ids_are_the_full_chat_tokenized_at_once(tiny_tokenizer, monkeypatch, name):
    monkeypatch.setattr(tiny_tokenizer, "chat_template", TEMPLATES[name].to_jinja())
    text = tiny_tokenizer.apply_chat_template(MESSAGES, tokenize=False)
    sample = encode_messages(tiny_tokenizer, name, MESSAGES)
    assert sample.input_ids == tiny_tokenizer(text, add_special_tokens=False).input_ids
    assert len(sample.labels) == len(sample.input_ids)
    assert not sample.truncated


@pytest.mark.parametrize("name", CHATML_LIKE)
def test_only_trained_replies_and_their_end_of_turn_are_labelled(tiny_tokenizer, name):
    sample = encode_messages(tiny_tokenizer, name, MESSAGES)
    eos = tiny_tokenizer.eos_token
    runs = trained_runs(sample.input_ids, sample.labels)
    expected = [tiny_tokenizer(reply + eos, add_special_tokens=False).input_ids for reply in TRAINED_REPLIES]
    assert runs == expected
    assert [tiny_tokenizer.decode(run) for run in runs] == [reply + eos for reply in TRAINED_REPLIES]
    assert sample.labels[0] == IGNORE_INDEX


def test_chatml_scaffolding_separator_and_loss_false_are_masked(tiny_tokenizer):
    sample = encode_messages(tiny_tokenizer, "qwen_chat", MESSAGES)
    ids, labels = sample.input_ids, sample.labels
    eos_id = tiny_tokenizer.eos_token_id
    newline = tiny_tokenizer("\n", add_special_tokens=False).input_ids
    assert len(newline) == 1
    eos_positions = [i for i, t in enumerate(ids) if t == eos_id]
    # system, 3 users, 3 assistants end in <|im_end|>; only the two trained replies' markers are trained
    assert len(eos_positions) == 7
    assert [i for i in eos_positions if labels[i] == eos_id] == [
        eos_positions[2],
        eos_positions[6],
    ]
    for i in eos_positions:
        assert ids[i + 1] == newline[0]
        assert labels[i + 1] == IGNORE_INDEX  # the '\n' after <|im_end|> is scaffolding

    header = tiny_tokenizer("<|im_start|>assistant\n", add_special_tokens=False).input_ids
    starts = [i for i in range(len(ids)) if ids[i : i + len(header)] == header]
    assert len(starts) == 3
    for start in starts:
        assert labels[start : start + len(header)] == [IGNORE_INDEX] * len(header)

    # the system and user turns are never trained: everything before the first reply is masked
    first_reply = starts[0] + len(header)
    assert set(labels[:first_reply]) == {IGNORE_INDEX}
    # the loss: false reply, 'It is 5.', is masked
    masked = tiny_tokenizer("It is 5.<|im_end|>", add_special_tokens=False).input_ids
    at = next(i for i in range(len(ids)) if ids[i : i + len(masked)] == masked)
    assert labels[at : at + len(masked)] == [IGNORE_INDEX] * len(masked)


def test_system_setting_is_added_to_samples_without_one(tiny_tokenizer):
    messages = MESSAGES[1:3]
    segments = sample_segments({"messages": messages}, TEMPLATES["qwen_chat"], tiny_tokenizer, system="Be brief.")
    text = "".join(s.text for s in segments)
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there")
    assert "helpful assistant" not in text
    own = sample_segments({"messages": MESSAGES}, TEMPLATES["qwen_chat"], tiny_tokenizer, system="Be brief.")
    assert "Be brief." not in "".join(s.text for s in own)  # a sample's own system message wins


def test_a_sample_with_nothing_to_train(tiny_tokenizer):
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey", "loss": False}]
    sample = encode_messages(tiny_tokenizer, "qwen_chat", messages)
    assert set(sample.labels) == {IGNORE_INDEX}


def test_encoding_in_a_batch_equals_encoding_alone(tiny_tokenizer):
    template = TEMPLATES["qwen_chat"]
    conversations = [MESSAGES, MESSAGES[1:3], [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]]
    segment_lists = [sample_segments({"messages": m}, template, tiny_tokenizer) for m in conversations]
    batch = encode_batch(segment_lists, tiny_tokenizer, 4096)
    alone = [encode_batch([s], tiny_tokenizer, 4096)[0] for s in segment_lists]
    assert [(b.input_ids, b.labels) for b in batch] == [(a.input_ids, a.labels) for a in alone]
    assert len({len(b.input_ids) for b in batch}) == 3  # no padding


# --- pre-training text -------------------------------------------------------------------------------------------


def test_pretrain_sample_trains_every_token_after_the_first_and_ends_with_eos(tiny_tokenizer):
    text = "Plain text for continued pre-training, trained on every token."
    segments = sample_segments({"text": text}, None, tiny_tokenizer)
    sample = encode_batch([segments], tiny_tokenizer, 4096)[0]
    assert not adds_bos(tiny_tokenizer)  # the tiny tokenizer adds no BOS, so none is inserted
    assert sample.input_ids == tiny_tokenizer(text, add_special_tokens=False).input_ids + [tiny_tokenizer.eos_token_id]
    assert sample.labels[0] == IGNORE_INDEX
    assert sample.labels[1:] == sample.input_ids[1:]


def test_pretrain_sample_starts_with_bos_for_tokenizers_that_add_one(tiny_tokenizer):
    """Llama-style tokenizers prepend BOS themselves; pre-training samples must start with it too."""
    from tokenizers.processors import TemplateProcessing

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer.name_or_path)
    bos, bos_id = tokenizer.bos_token, tokenizer.bos_token_id
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, bos_id)])
    assert tokenizer("a").input_ids[0] == bos_id
    assert adds_bos(tokenizer)
    sample = encode_batch([sample_segments({"text": "Some text."}, None, tokenizer)], tokenizer, 4096)[0]
    assert sample.input_ids == [
        bos_id,
        *tokenizer("Some text.", add_special_tokens=False).input_ids,
        tokenizer.eos_token_id,
    ]
    assert sample.labels == [IGNORE_INDEX, *sample.input_ids[1:]]


def test_a_conversation_needs_a_template(tiny_tokenizer):
    with pytest.raises(ValueError, match="needs a chat template"):
        sample_segments({"messages": MESSAGES}, None, tiny_tokenizer)


# --- truncation ------------------------------------------------------------------------------------------------


def test_encode_truncates_to_max_length(tiny_tokenizer):
    full = encode_messages(tiny_tokenizer, "qwen_chat", MESSAGES)
    cut = encode_messages(tiny_tokenizer, "qwen_chat", MESSAGES, max_length=20)
    assert cut.truncated and not full.truncated
    assert cut.input_ids == full.input_ids[:20] and cut.labels == full.labels[:20]
    exact = encode_messages(tiny_tokenizer, "qwen_chat", MESSAGES, max_length=len(full.input_ids))
    assert not exact.truncated and exact.input_ids == full.input_ids


def test_truncated_and_dropped_samples_are_counted(tmp_path, tiny_tokenizer):
    max_length = 48
    template = TEMPLATES["qwen_chat"]
    filler = " ".join(["word"] * 60)
    fits = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    answer_beyond = [{"role": "user", "content": filler}, {"role": "assistant", "content": "Too late."}]
    answer_cut = [{"role": "user", "content": "Tell me"}, {"role": "assistant", "content": filler}]
    nothing = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey", "loss": False}]

    def tokens(messages, **kwargs):
        return len(tiny_tokenizer(template.render_text(messages, **kwargs), add_special_tokens=False).input_ids)

    # the setup does what the names say
    assert tokens(fits) <= max_length
    assert tokens(answer_beyond[:1], add_generation_prompt=True) >= max_length  # reply starts past the limit
    assert tokens(answer_cut[:1], add_generation_prompt=True) < max_length < tokens(answer_cut)

    path = tmp_path / "chat.jsonl"
    path.write_text(
        "".join(json.dumps({"messages": m}) + "\n" for m in [fits, answer_beyond, answer_cut, nothing]),
        encoding="utf-8",
    )
    data = DataSettings(
        datasets=[DatasetSettings(path=str(path), format="openai")],
        template="qwen_chat",
        max_length=max_length,
        cache=False,
    )
    td = build_training_data(data, tiny_tokenizer)
    assert td.dropped == Counter({"nothing to train within max_length": 1, "nothing to train": 1})
    assert td.truncated == 1
    assert td.num_samples == 2 and len(td.rows) == 2
    assert all(len(row) <= max_length for row in td.rows)
    kept = {tiny_tokenizer.decode(row.input_ids) for row in td.rows}
    assert template.render_text(fits) in kept
    assert any(text.startswith(template.render_text(answer_cut[:1], add_generation_prompt=True)) for text in kept)
    assert "1 truncated" in td.summary() and "1 dropped (nothing to train within max_length)" in td.summary()
