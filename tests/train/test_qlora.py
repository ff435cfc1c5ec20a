"""QLoRA's 4-bit base under bf16 autocast: the dtype its layers compute in, and the memory loading it leaves behind.
(Training and saving a QLoRA adapter in fp32 is covered with the other methods in test_recipe.py.)"""

from __future__ import annotations

import gc
from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch

from xtune.train.recipe import FinetuneRecipe

from .conftest import read_metrics, small_config


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory, cache_dir):
    cfg = small_config("qlora", cache_dir, training={"mixed_precision": "bf16", "max_steps": 2})
    recipe = FinetuneRecipe(cfg, tmp_path_factory.mktemp("qlora_bf16"), device=torch.device("cpu"))
    recipe.setup()
    return recipe


def four_bit_layers(model: torch.nn.Module) -> list[bnb.nn.Linear4bit]:
    return [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]


def test_4bit_layers_compute_in_the_autocast_dtype_through_training(bf16_run):
    # Autocast does not reach into bitsandbytes: left to the model's fp32 dtype, the 4-bit layers would multiply
    # in fp32 and keep fp32 activations while everything around them runs in bf16.
    layers = four_bit_layers(bf16_run.model)
    assert layers and {m.compute_dtype for m in layers} == {torch.bfloat16}
    lora_before = {n: p.detach().clone() for n, p in bf16_run.model.named_parameters() if p.requires_grad}
    bf16_run.train()
    assert {m.compute_dtype for m in layers} == {torch.bfloat16}  # bitsandbytes did not re-pick it from inputs
    assert all(r["grad_norm"] > 0 for r in read_metrics(bf16_run.work_dir))
    changed = [n for n, p in bf16_run.model.named_parameters() if p.requires_grad and not p.equal(lora_before[n])]
    assert any("lora_A" in n for n in changed) and any("lora_B" in n for n in changed)


def test_fp32_training_keeps_fp32_4bit_compute(tmp_path, cache_dir):
    cfg = small_config("qlora", cache_dir, training={"mixed_precision": "fp32"})
    recipe = FinetuneRecipe(cfg, tmp_path, device=torch.device("cpu"))
    recipe.setup()
    assert {m.compute_dtype for m in four_bit_layers(recipe.model)} == {torch.float32}


def test_quantized_model_keeps_no_mapping_of_its_checkpoint(bf16_run):
    # The unquantised weights (embeddings, norms, head) loaded as views of the memory-mapped checkpoint would keep
    # the whole file mapped, and every page quantisation read resident, for the life of the model.
    checkpoint = (bf16_run.work_dir / "base_model" / "model.safetensors").resolve()
    assert checkpoint.exists()
    gc.collect()
    mapped = [line for line in Path("/proc/self/maps").read_text().splitlines() if line.endswith(str(checkpoint))]
    assert four_bit_layers(bf16_run.model) and mapped == []
