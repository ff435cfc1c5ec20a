"""FinetuneRecipe end to end on the tiny demo model (random init) for LoRA, QLoRA and full training: the loss goes
down, the final directory loads back with plain transformers/PEFT into the model that was trained, and the work
dir holds what the docs promise (metrics, checkpoints within the limit, evaluation outputs, curve, config)."""

from __future__ import annotations

import json
import math
import re
from types import SimpleNamespace

import pytest
import torch
import yaml
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from xtune.models.load import load_for_inference
from xtune.templates import get_template
from xtune.train.checkpoint import check_checkpoint
from xtune.train.recipe import FinetuneRecipe

from .conftest import load_base, read_metrics, small_config

STEPS = 22  # small_config: max_steps 22, save_steps 3 (limit 2), evaluation freq 5
PROMPT = [{"role": "user", "content": "请介绍一下你自己"}]


@pytest.fixture(scope="module", params=["lora", "qlora", "full"])
def run(request, tmp_path_factory, cache_dir):
    method = request.param
    cfg = small_config(method, cache_dir)
    work_dir = tmp_path_factory.mktemp(f"run_{method}")
    recipe = FinetuneRecipe(cfg, work_dir, device=torch.device("cpu"))
    recipe.setup()
    final = recipe.train()
    recipe.model.eval()
    return SimpleNamespace(method=method, cfg=cfg, recipe=recipe, work_dir=work_dir, final=final)


def prompt_ids(tokenizer) -> torch.Tensor:
    text = get_template("qwen_chat").render_text(PROMPT, add_generation_prompt=True)
    return torch.tensor([tokenizer(text, add_special_tokens=False).input_ids])


def test_loss_decreases_and_every_step_is_logged(run):
    records = read_metrics(run.work_dir)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    losses = [r["loss"] for r in records]
    assert all(math.isfinite(x) and x > 0 for x in losses)
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first - 0.5, losses
    assert all(r["trained_tokens"] > 0 and math.isfinite(r["grad_norm"]) for r in records)


def test_lr_follows_warmup_then_cosine(run):
    """lr logged for step s is the one used for it: linear warmup over one step, cosine to zero."""
    lr, warmup = run.cfg.training.lr, round(run.cfg.training.warmup_ratio * STEPS)
    assert warmup == 1  # round(0.05 * 22)
    expected = [
        lr * (s + 1) / warmup if s < warmup else lr * 0.5 * (1 + math.cos(math.pi * (s - warmup) / (STEPS - warmup)))
        for s in range(STEPS)
    ]
    assert [r["lr"] for r in read_metrics(run.work_dir)] == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_final_loads_back_with_the_trained_weights(run):
    tokenizer = AutoTokenizer.from_pretrained(run.final)
    ids = prompt_ids(tokenizer)
    with torch.no_grad():
        trained = run.recipe.model(input_ids=ids).logits
        if run.method == "full":
            assert not (run.final / "adapter_config.json").exists()
            loaded = AutoModelForCausalLM.from_pretrained(run.final, dtype=torch.float32).eval()
        else:
            adapter_config = json.loads((run.final / "adapter_config.json").read_text())
            # the work dir's own base, relative to the adapter: the work dir can move (tests/train/test_lifecycle.py)
            assert adapter_config["base_model_name_or_path"] == "../base_model"
            base = load_base(run.work_dir / "base_model", quantized=run.method == "qlora")
            base_logits = base(input_ids=ids).logits
            loaded = PeftModel.from_pretrained(base, run.final).eval()
            # The adapter learned something: without it the logits are far from the trained model's.
            assert (base_logits - trained).abs().max() > 1e-2
        torch.testing.assert_close(loaded(input_ids=ids).logits, trained, rtol=0, atol=1e-5)
        if run.method != "qlora":  # xtune's own loader (chat, merge) finds the base and gives the same model
            model, _, source = load_for_inference(str(run.final), device=torch.device("cpu"))
            assert source == run.final
            torch.testing.assert_close(model(input_ids=ids).logits, trained, rtol=0, atol=1e-5)


def test_final_tokenizer_formats_chats_like_the_training_template(run):
    tokenizer = AutoTokenizer.from_pretrained(run.final)
    template = get_template("qwen_chat")
    conversations = [
        PROMPT,  # no system message: qwen_chat inserts its default one
        [
            {"role": "system", "content": "你是 xtune 小助手。"},
            {"role": "user", "content": "Hi {braces} <tag>"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "猫有几条腿？"},
        ],
    ]
    for messages in conversations:
        for generation_prompt in (True, False):
            expected = template.render_text(
                messages, add_generation_prompt=generation_prompt, bos=tokenizer.bos_token, eos=tokenizer.eos_token
            )
            assert (
                tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
                == expected
            )
    saved = yaml.safe_load((run.final / "xtune_config.yaml").read_text())
    assert saved == run.cfg.model_dump()


def test_checkpoints_respect_save_total_limit(run):
    # Saved every 3 steps up to 21 (not at the last step: final/ is written then); the limit keeps the newest two.
    names = sorted(p.name for p in run.work_dir.iterdir() if p.name.startswith("checkpoint-"))
    assert names == ["checkpoint-18", "checkpoint-21"]
    assert not [p.name for p in run.work_dir.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    trainable = {n for n, p in run.recipe.model.named_parameters() if p.requires_grad}
    for name in names:
        checkpoint = run.work_dir / name
        # and, small, what final/ carries beside the weights (see test_lifecycle.py)
        usable_as_final = {"config.json", "generation_config.json", "model.safetensors.index.json"}
        if run.method != "full":
            usable_as_final = {"adapter_config.json"}
        usable_as_final |= {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "xtune_config.yaml"}
        assert {p.name for p in checkpoint.iterdir()} == {
            "trainable.safetensors",
            "optimizer.pt",
            "rng.safetensors",
            "trainer_state.json",
            "manifest.json",
            *usable_as_final,
        }
        assert check_checkpoint(checkpoint) is None
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        assert state["step"] == int(name.split("-")[1]) == state["scheduler"]["last_epoch"]
        assert set(load_file(checkpoint / "trainable.safetensors")) == trainable


def test_work_dir_outputs(run):
    steps = sorted(
        int(m.group(1)) for p in run.work_dir.iterdir() if (m := re.fullmatch(r"eval_outputs_step_(\d+)\.txt", p.name))
    )
    assert steps == [0, 5, 10, 15, 20, STEPS]  # before training, every `freq` steps, and after the last one
    for step in steps:
        text = (run.work_dir / f"eval_outputs_step_{step}.txt").read_text(encoding="utf-8")
        assert text.startswith("### 请介绍一下你自己\n")
    assert (run.work_dir / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"step {STEPS}/{STEPS} loss" in (run.work_dir / "train.log").read_text(encoding="utf-8")
    assert (run.work_dir / "base_model").is_dir() == (run.method != "full")


def test_resume_from_a_checkpoint_path_continues_the_run(run, tmp_path):
    """setup(resume=PATH) (`xtune train --resume PATH`) into a fresh work dir: steps 19-22 and the final weights are
    those of the uninterrupted run, for each method's trainable state (adapter, or the whole model)."""
    recipe = FinetuneRecipe(run.cfg, tmp_path / "resumed", device=torch.device("cpu"))
    recipe.setup(resume=str(run.work_dir / "checkpoint-18"))
    assert recipe.step == 18
    final = recipe.train()
    got = read_metrics(tmp_path / "resumed")
    want = read_metrics(run.work_dir)[18:]
    assert [r["step"] for r in got] == list(range(19, STEPS + 1))
    for have, expected in zip(got, want, strict=True):
        assert abs(have["loss"] - expected["loss"]) <= 1e-6, (have, expected)
        assert have["lr"] == expected["lr"]
    weights = "model.safetensors" if run.method == "full" else "adapter_model.safetensors"
    have_weights, want_weights = load_file(final / weights), load_file(run.final / weights)
    assert set(have_weights) == set(want_weights)
    for name, tensor in want_weights.items():
        torch.testing.assert_close(have_weights[name], tensor, rtol=0, atol=1e-6, msg=name)


def test_evaluation_between_steps_does_not_change_training(run, tmp_path):
    """Greedy evaluation generations (at steps 0, 5, 10, 15, 20 in `run`) only read the model: the same run without
    them trains identically. (bitsandbytes repacks 4-bit weights in place for CPU inference on an eval-mode no-grad
    forward, and its packed kernel has no backward: QLoRA must not be left in that state.)"""
    cfg = run.cfg.model_copy(update={"evaluation": run.cfg.evaluation.model_copy(update={"inputs": []})})
    recipe = FinetuneRecipe(cfg, tmp_path / "no_eval", device=torch.device("cpu"))
    recipe.setup()
    recipe.train()
    assert not list((tmp_path / "no_eval").glob("eval_outputs_*"))
    for have, want in zip(read_metrics(tmp_path / "no_eval"), read_metrics(run.work_dir), strict=True):
        assert abs(have["loss"] - want["loss"]) <= 1e-6, (have, want)
        assert abs(have["grad_norm"] - want["grad_norm"]) <= 1e-5 * want["grad_norm"], (have, want)
