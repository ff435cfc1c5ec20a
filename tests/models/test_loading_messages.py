"""What loading a model says: no deprecated transformers calls from xtune, no per-layer notice from 8-bit chat, and
a missing model directory named with its fix (`hf download`, the nearest directory, `chat BASE --adapter DIR`)."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from xtune.config.schema import ModelSettings
from xtune.errors import ConfigError
from xtune.models.load import attach_adapters, load_for_inference, resolve_model_dir

TINY_LLAMA = Path(__file__).resolve().parents[2] / "src" / "xtune" / "assets" / "tiny-llama"


@pytest.fixture(scope="module")
def model_dir(one_layer_model_dir) -> Path:
    return one_layer_model_dir


def test_checkpointed_lora_calls_no_deprecated_checkpointing_api(model_dir):
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    settings = ModelSettings(path=str(model_dir), method="lora", gradient_checkpointing=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        peft_model = attach_adapters(model, settings)
    assert peft_model.base_model.model.is_activation_checkpointing
    # transformers 5 deprecates gradient_checkpointing_enable; PEFT's own read of is_gradient_checkpointing is
    # PEFT's to change
    assert [str(w.message) for w in caught if "gradient_checkpointing_enable" in str(w.message)] == []


def test_8bit_chat_logs_no_per_layer_cast_notice(model_dir, caplog):
    model, tokenizer, _ = load_for_inference(str(model_dir), bits=8, device=torch.device("cpu"))
    with caplog.at_level(logging.WARNING):
        model.generate(**tokenizer("hello", return_tensors="pt"), max_new_tokens=3, do_sample=False)
    assert [r.getMessage() for r in caplog.records if "MatMul8bitLt" in r.getMessage()] == []


def test_a_typo_of_a_local_directory_names_the_nearest_one(model_dir):
    typo = str(model_dir.parent / "tiny-lama")
    with pytest.raises(ConfigError) as e:
        resolve_model_dir(typo)
    assert str(e.value) == f"model path {typo!r}: no such directory; did you mean {str(model_dir)!r}?"


def test_a_missing_directory_with_nothing_near_says_so(tmp_path):
    with pytest.raises(ConfigError) as e:
        resolve_model_dir(str(tmp_path / "gone" / "model"))
    assert str(e.value) == f"model path {str(tmp_path / 'gone' / 'model')!r}: no such directory (nor is " + (
        f"{str(tmp_path / 'gone')!r})"
    )


def test_an_uncached_repo_id_says_how_to_fetch_it_with_hf(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError) as e:
        resolve_model_dir("no-such-org/no-such-model")
    message = str(e.value)
    assert "`hf download no-such-org/no-such-model --local-dir ./models/no-such-model`" in message
    assert "huggingface-cli" not in message
    assert message.endswith("then set model.path to it (--set model.path=./models/no-such-model)")


def test_chat_on_an_adapter_whose_base_is_gone_suggests_naming_the_base(tmp_path):
    adapter = tmp_path / "final"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tmp_path / "moved")}))
    with pytest.raises(ConfigError) as e:
        load_for_inference(str(adapter))
    message = str(e.value)
    assert message.startswith(f"{adapter / 'adapter_config.json'} names the base model: model path ")
    assert message.endswith(f"xtune chat BASE --adapter {adapter}")
    assert "--set" not in message  # chat takes no --set
