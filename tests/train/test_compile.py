"""training.compile: the compiled decoder layers and loss train exactly what eager training trains (fp32, so the
only differences are kernel rounding), under gradient checkpointing too, and evaluation generations between steps
still run (eagerly) on the compiled model, and generation compiles nothing for its shapes, new every token.
Compiled on CPU, training attends with xtune's chunked attention (models/attention.py): the comparison with eager
training (SDPA) covers it."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters
from transformers import AutoConfig, AutoModelForCausalLM

from xtune.assets import resolve_path
from xtune.chat.generate import GenerationSettings, generate
from xtune.models.attention import NAME as CHUNKED_ATTENTION
from xtune.models.attention import use_causal_chunked_attention
from xtune.train.loss import compile_decoder_layers
from xtune.train.recipe import FinetuneRecipe

from .conftest import read_metrics, small_config


def train(method: str, cache_dir, work_dir, compile: bool, gradient_checkpointing: bool) -> tuple[list[dict], str]:
    """The metrics of each step, and the attention the model trained with."""
    cfg = small_config(
        method,
        cache_dir,
        model={"gradient_checkpointing": gradient_checkpointing},
        training={"max_steps": 6, "mixed_precision": "fp32", "compile": compile},
        evaluation={"freq": 3},
    )
    recipe = FinetuneRecipe(cfg, work_dir, device=torch.device("cpu"))
    recipe.setup()
    recipe.train()
    return read_metrics(work_dir), recipe.model.config._attn_implementation


@pytest.mark.parametrize(("method", "gradient_checkpointing"), [("lora", False), ("full", True)])
def test_compiled_training_matches_eager(method, gradient_checkpointing, cache_dir, tmp_path):
    eager, eager_attention = train(method, cache_dir, tmp_path / "eager", False, gradient_checkpointing)
    graphs_before = counters["stats"]["unique_graphs"]
    compiled, compiled_attention = train(method, cache_dir, tmp_path / "compiled", True, gradient_checkpointing)
    assert counters["stats"]["unique_graphs"] > graphs_before  # the layers and the loss did compile
    assert (eager_attention, compiled_attention) == ("sdpa", CHUNKED_ATTENTION)  # on CPU, compiled: the chunks

    for have, want in zip(compiled, eager, strict=True):
        assert have["loss"] == pytest.approx(want["loss"], rel=1e-5), (have, want)
        assert have["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-4), (have, want)
    # evaluation at steps 0, 3 and 6 generated with the compiled model
    assert sorted(p.name for p in (tmp_path / "compiled").glob("eval_outputs_*")) == [
        f"eval_outputs_step_{s}.txt" for s in (0, 3, 6)
    ]


def test_generation_on_compiled_layers_compiles_nothing(tiny_tokenizer):
    """A model trained with training.compile and then chatted with in the same process (tests, notebooks)."""
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(resolve_path("builtin:tiny-llama")))
    model.config._attn_implementation = "sdpa"
    compile_decoder_layers(model)
    assert use_causal_chunked_attention(model.config)  # as compiled training on CPU leaves it
    graphs_before = counters["stats"]["unique_graphs"]
    prompt = tiny_tokenizer("hello there")["input_ids"]
    generate(model, tiny_tokenizer, prompt, GenerationSettings(max_new_tokens=4))
    assert counters["stats"]["unique_graphs"] == graphs_before
