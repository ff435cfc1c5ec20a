"""The LLaVA model: assembled once into a Hugging Face LLaVA directory, then loaded for each method with the
right parts trainable: frozen (stage 1) only the projector; LoRA/QLoRA the projector in full and LoRA on the LLM
(and the vision encoder when asked), with QLoRA quantising the LLM alone."""

from __future__ import annotations

import bitsandbytes as bnb
import pytest
import torch

from xtune.config.schema import ModelSettings
from xtune.errors import ConfigError
from xtune.models.llava import build_base, load_llava, load_projector, multimodal_tokenizer, prepare_for_training

VISION = {"path": "builtin:tiny-clip", "random_init": True}


def settings(method: str, **vision) -> ModelSettings:
    return ModelSettings(
        path="builtin:tiny-llama",
        random_init=True,
        method=method,
        dtype="float32",
        lora={"r": 4, "alpha": 8, "dropout": 0.0},
        vision={**VISION, **vision},
    )


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    tokenizer = multimodal_tokenizer(settings("frozen"))
    out = build_base(settings("frozen"), tokenizer, tmp_path_factory.mktemp("llava") / "base", seed=0)
    return out, tokenizer


def trainable(model) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_base_is_reused_when_assembled_from_the_same_parts(base):
    out, tokenizer = base
    before = (out / "model.safetensors").stat().st_mtime_ns
    build_base(settings("lora"), tokenizer, out, seed=0)  # the method does not change the base
    assert (out / "model.safetensors").stat().st_mtime_ns == before


def test_frozen_trains_only_the_projector(base):
    model = prepare_for_training(load_llava(base[0], settings("frozen"), torch.device("cpu")), settings("frozen"))
    assert trainable(model) and all(".multi_modal_projector." in name for name in trainable(model))


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_lora_adapts_the_llm_and_trains_the_projector(base, method):
    cfg = settings(method, lora=True)
    model = prepare_for_training(load_llava(base[0], cfg, torch.device("cpu")), cfg)
    names = trainable(model)
    assert any("multi_modal_projector.modules_to_save" in n for n in names)
    assert any(".language_model." in n and "lora_" in n for n in names)
    assert any(".vision_tower." in n and "lora_" in n for n in names)  # vision.lora
    assert all("lora_" in n or "multi_modal_projector" in n for n in names)
    quantised = {n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    if method == "qlora":  # the LLM's layers only
        assert quantised and all(".language_model." in n for n in quantised)
    else:
        assert not quantised


def test_projector_of_another_model_is_refused(base, tmp_path):
    from safetensors.torch import save_file

    model = load_llava(base[0], settings("frozen"), torch.device("cpu"))
    save_file({"linear_1.weight": torch.zeros(3, 3)}, tmp_path / "projector.safetensors")
    with pytest.raises(ConfigError, match="do not fit this model"):
        load_projector(model, tmp_path)
    with pytest.raises(ConfigError, match="does not exist; point it at stage 1's output"):
        load_projector(model, tmp_path / "nowhere")
