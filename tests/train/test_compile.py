"""training.compile: the compiled decoder layers and loss train exactly what eager training trains (fp32, so the
only differences are kernel rounding), under gradient checkpointing too, and evaluation generations between steps
still run (eagerly) on the compiled model, and generation compiles nothing for its shapes, new every token.
Compiled on CPU, training attends with xtune's chunked attention (models/attention.py): the comparison with eager
training (SDPA) covers it.

training.compile: auto (train/compile.py) decides from the eager step time and an earlier run's measured costs:
the decision on given numbers, the costs it measures and keeps per shape signature, and a recipe run that a
cached high compile cost keeps eager when short and lets compile when long."""

from __future__ import annotations

import json

import pytest
import torch
from torch._dynamo.utils import counters
from transformers import AutoConfig, AutoModelForCausalLM

from xtune.assets import resolve_path
from xtune.chat.generate import GenerationSettings, generate
from xtune.models.attention import NAME as CHUNKED_ATTENTION
from xtune.models.attention import use_causal_chunked_attention
from xtune.train.compile import EAGER_STEPS, MARGIN, PRIOR_COMPILE_S, CompileChoice, Costs, should_compile
from xtune.train.loss import compile_decoder_layers, decoder_layers
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


def test_auto_compiles_when_the_saving_clearly_exceeds_the_cost():
    measured = Costs(eager_step_s=1.0, compiled_step_s=0.5, compile_s=100.0)  # saves 0.5 s a step
    assert should_compile(401, 1.0, measured)[0]  # 200.5 s saved > 2 x 100
    assert not should_compile(399, 1.0, measured)[0]
    no_gain = Costs(eager_step_s=1.0, compiled_step_s=1.2, compile_s=0.0)
    assert not should_compile(10**6, 1.0, no_gain)[0]
    compiles, reason = should_compile(10, 0.3, Costs())  # nothing measured: the priors
    assert not compiles and f"~{PRIOR_COMPILE_S:.0f} s to compile" in reason and "priors" in reason


def test_auto_measures_the_costs_and_the_next_run_of_those_shapes_decides_before_its_first_step(tmp_path):
    cache = tmp_path / "compile_costs.json"
    first = CompileChoice("auto", "sig", steps=10_000, cache_file=cache)
    assert not first.at_setup()  # nothing measured for these shapes: eager until the first steps are timed
    decisions = [first.step_done(step, 1.0) for step in range(1, EAGER_STEPS + 2)]
    assert decisions == [None] * EAGER_STEPS + [True] and first.compiled  # 10,000 eager seconds left
    for step, seconds in enumerate([30.0, 5.0, 0.5, 0.5, 0.5, 0.5, 0.5], start=EAGER_STEPS + 2):
        assert first.step_done(step, seconds) is None
    costs = first.cached()
    assert (costs.eager_step_s, costs.compiled_step_s, costs.compile_s) == (1.0, 0.5, 34.0)  # 37 s - 6 x 0.5

    for steps, compiles in ((100, False), (1000, True)):  # saves 0.5 s a step against 2 x 34 s
        later = CompileChoice("auto", "sig", steps=steps, cache_file=cache)
        assert later.at_setup() == compiles, later.reason
        assert "measured before" in later.reason
    assert not CompileChoice("auto", "other shapes", steps=1000, cache_file=cache).at_setup()
    assert CompileChoice(True, "sig", steps=1, cache_file=cache).at_setup()
    assert not CompileChoice(False, "sig", steps=10**6, cache_file=cache).at_setup()


def compiled_layers(recipe: FinetuneRecipe) -> list[bool]:
    """Whether each decoder layer runs through torch.compile (nn.Module.compile sets its compiled call)."""
    return [layer._compiled_call_impl is not None for layer in decoder_layers(recipe.model)]


def test_auto_run_with_a_cached_high_compile_cost_compiles_when_long_only(cache_dir, tmp_path):
    """Cached for these shapes: 100 s eager steps, 50 s compiled, 100 s to compile: 3 steps would save 150 s, less
    than twice the cost, 8 steps 400 s, more. (The real steps take milliseconds: the cache decides.)"""

    def recipe(steps: int, name: str) -> FinetuneRecipe:
        cfg = small_config(
            "lora", cache_dir, training={"max_steps": steps, "mixed_precision": "fp32"}, evaluation={"inputs": []}
        )
        run = FinetuneRecipe(cfg, tmp_path / name, device=torch.device("cpu"))
        run.setup()
        return run

    probe = recipe(3, "probe")  # the signature of these shapes, as the recipe computes it
    cache = probe.compile_choice.cache_file
    high = {"eager_step_s": 100.0, "compiled_step_s": 50.0, "compile_s": 100.0}
    assert 3 * 50 < MARGIN * high["compile_s"] < 8 * 50
    cache.write_text(json.dumps({probe.compile_choice.signature: high}))

    short = recipe(3, "short")
    short.train()
    assert not short.compile_choice.compiled and "measured before" in short.compile_choice.reason
    assert not any(compiled_layers(short)) and short.model.config._attn_implementation == "sdpa"

    long = recipe(8, "long")
    long.train()
    assert long.compile_choice.compiled, long.compile_choice.reason
    assert all(compiled_layers(long)) and long.model.config._attn_implementation == CHUNKED_ATTENTION
    measured = json.loads(cache.read_text())[long.compile_choice.signature]
    assert measured["compiled_step_s"] < 1 and measured["compile_s"] != high["compile_s"]  # this run's, kept
