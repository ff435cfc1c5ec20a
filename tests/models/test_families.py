"""Every supported family end to end on tiny random checkpoints: LoRA training through the recipe, the final adapter
loading back, `xtune convert merge`, and plain transformers loading the merged model with the logits of base + adapter.

InternLM2 goes through its original layout (converted natively to Llama); InternLM3 is native in transformers
(InternLM3Config, built as LlamaForCausalLM with model_type internlm3).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from xtune.cli import main as xtune_main
from xtune.config.schema import validate_config
from xtune.models.internlm2 import load_internlm2_as_llama
from xtune.models.load import causal_lm_from_pretrained, load_for_inference
from xtune.train.recipe import FinetuneRecipe

TINY_LLAMA = Path(__file__).resolve().parents[2] / "src" / "xtune" / "assets" / "tiny-llama"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
VOCAB = 1024  # >= the tiny tokenizer's 949 tokens, with unused rows as real checkpoints have
CPU = torch.device("cpu")

# the tiny tokenizer's specials: <s> 1, <|im_end|> 3 (eos), <|endoftext|> 0 (pad)
SIZES = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    bos_token_id=1,
    eos_token_id=3,
    pad_token_id=0,
)


def _internlm2_helpers():
    """tests/models/test_internlm2.py's checkpoint writers (pytest imports test modules by path, not by name)."""
    path = Path(__file__).with_name("test_internlm2.py")
    spec = importlib.util.spec_from_file_location("_xtune_test_internlm2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# per family: its config class and what it needs beyond SIZES (head_dim defaults to 128 or 256 in several)
FAMILY_CONFIGS = {
    "llama": ("LlamaConfig", {}),
    "qwen2": ("Qwen2Config", {"tie_word_embeddings": False}),
    "qwen3": ("Qwen3Config", {"head_dim": 16, "tie_word_embeddings": False}),
    "mistral": ("MistralConfig", {"head_dim": 16, "sliding_window": 32}),
    # tied head; final_logit_softcapping in the forward (and in xtune's loss), attention logit softcapping too
    "gemma2": (
        "Gemma2Config",
        {
            "head_dim": 16,
            "query_pre_attn_scalar": 16,
            "sliding_window": 32,
            "final_logit_softcapping": 30.0,
            "attn_logit_softcapping": 50.0,
        },
    ),
    "gemma3": (
        "Gemma3TextConfig",
        {
            "head_dim": 16,
            "query_pre_attn_scalar": 16,
            "sliding_window": 32,
            "layer_types": ["sliding_attention", "full_attention"],
        },
    ),
    "phi3": ("Phi3Config", {"tie_word_embeddings": False}),  # fused qkv_proj and gate_up_proj
    "internlm3": ("InternLM3Config", {"head_dim": 16}),  # built as LlamaForCausalLM, saved as model_type internlm3
}


def hf_config(family: str, **overrides):
    name, extra = FAMILY_CONFIGS[family]
    return getattr(transformers, name)(**{**SIZES, **extra, **overrides})


def write_base(family: str, directory: Path, **overrides) -> Path:
    """A tiny random checkpoint of the family with the tiny tokenizer, as `save_pretrained` (or InternLM2's original
    layout) writes it."""
    if family == "internlm2":
        helpers = _internlm2_helpers()
        config = helpers.internlm2_config(vocab_size=VOCAB, max_position_embeddings=256, eos_token_id=3, pad_token_id=0)
        sd = helpers.random_internlm2_weights(config, seed=0)
        gen = torch.Generator().manual_seed(1)  # the helpers' embedding has their small vocabulary: widen it
        sd["model.tok_embeddings.weight"] = torch.randn(VOCAB, helpers.HIDDEN, generator=gen)
        sd["output.weight"] = torch.randn(VOCAB, helpers.HIDDEN, generator=gen) * 0.1
        helpers.write_checkpoint(directory, config, sd)
        for name in TOKENIZER_FILES:
            shutil.copy(TINY_LLAMA / name, directory / name)
        return directory
    config = hf_config(family, **overrides)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # some families initialise norms to zero / ones; make every weight matter
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(torch.randn_like(param) * 0.1)
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(TINY_LLAMA).save_pretrained(directory)
    return directory


def train_config(base: Path, **model_extra) -> dict:
    return {
        "model": {
            "path": str(base),
            "method": "lora",
            "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
            "dtype": "float32",
            **model_extra,
        },
        "data": {
            "datasets": [{"path": "builtin:data/tiny_assistant.jsonl", "format": "openai", "max_dataset_length": 8}],
            "template": "qwen_chat",
            "max_length": 128,
            "cache": False,
        },
        "training": {
            "max_steps": 4,
            "batch_size": 2,
            "gradient_accumulation": 1,
            "lr": 1e-2,
            "lr_schedule": "constant",
            "warmup_ratio": 0.0,
            "mixed_precision": "fp32",
            "log_every": 100,
        },
        "saving": {"save_steps": 1000},
        "evaluation": {"inputs": []},
    }


def train(raw: dict, work_dir: Path) -> tuple[FinetuneRecipe, Path]:
    recipe = FinetuneRecipe(validate_config(raw), work_dir, CPU)
    recipe.setup()
    return recipe, recipe.train()


def sample_ids(vocab: int = 949) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 24), generator=torch.Generator().manual_seed(0))


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def base_model(base: Path):
    return causal_lm_from_pretrained(base, dtype=torch.float32)


# family -> the model_type its checkpoint's config.json names (what xtune sees)
FAMILIES = {
    "llama": "llama",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "mistral": "mistral",
    "gemma2": "gemma2",
    "gemma3": "gemma3_text",
    "phi3": "phi3",
    "internlm3": "internlm3",
    "internlm2": "internlm2",
}


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_train_merge_reload(tmp_path, family):
    base = write_base(family, tmp_path / "base")
    assert json.loads((base / "config.json").read_text())["model_type"] == FAMILIES[family]
    _, final = train(train_config(base), tmp_path / "work")
    assert (final / "adapter_model.safetensors").exists() and (final / "xtune_config.yaml").exists()

    ids = sample_ids()
    plain = logits(base_model(base), ids)
    adapted = logits(PeftModel.from_pretrained(base_model(base), final), ids)  # the final adapter loads back
    assert (adapted - plain).abs().max() > 1e-3, "training left the adapter a no-op"

    out = tmp_path / "merged"
    xtune_main(["convert", "merge", str(base), str(final), str(out)])
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)  # plain transformers, no xtune
    diff = (logits(merged, ids) - adapted).abs().max().item()
    assert diff < 1e-5, f"merged vs base+adapter: {diff}"

    reloaded, tokenizer, source = load_for_inference(str(final), device=CPU, dtype=torch.float32)
    assert source == final and tokenizer.chat_template
    assert (logits(reloaded, ids) - adapted).abs().max().item() < 1e-5

    if family == "internlm2":
        original = tmp_path / "merged_original"
        xtune_main(["convert", "merge", str(base), str(final), str(original), "--save-format", "original"])
        config = json.loads((original / "config.json").read_text())
        assert config["architectures"] == ["InternLM2ForCausalLM"] and config["model_type"] == "internlm2"
        keys = load_file(original / "model.safetensors").keys()
        assert "model.layers.0.attention.wqkv.weight" in keys and "model.tok_embeddings.weight" in keys
        assert not any("q_proj" in k or "lora" in k for k in keys)
        again = load_internlm2_as_llama(original, dtype=torch.float32)
        assert (logits(again, ids) - logits(merged, ids)).abs().max().item() < 1e-5


NEW_TOKENS = ["<image>", "<tool_call>"]


def write_new_token_data(path: Path) -> Path:
    """A few conversations that use the new tokens, so their embedding rows get gradients."""
    records = [
        [("user", f"<image>\nWhat is in picture {i}?"), ("assistant", f"<tool_call>describe({i})<tool_call> A cat.")]
        for i in range(6)
    ]
    lines = [json.dumps({"messages": [{"role": r, "content": c} for r, c in rec]}) for rec in records]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    "vocab, tie", [(VOCAB, False), (949, False), (949, True)], ids=["spare-rows", "grown", "grown-tied"]
)
def test_new_special_tokens(tmp_path, vocab, tie):
    """The new ids land on spare rows of the embedding (1024 rows for 949 tokens: real checkpoints pad theirs too)
    or past its end (949 rows: it grows); either way their embedding and head rows are trained (a tied head with the
    embedding), saved once with the adapter, merged, and loaded back with the function training ended with."""
    base = write_base("llama", tmp_path / "base", vocab_size=vocab, tie_word_embeddings=tie)
    raw = train_config(base, add_special_tokens=NEW_TOKENS)
    raw["data"]["datasets"].append({"path": str(write_new_token_data(tmp_path / "tokens.jsonl")), "format": "openai"})
    recipe = FinetuneRecipe(validate_config(raw), tmp_path / "work", CPU)
    recipe.setup()
    new_ids = recipe.tokenizer.convert_tokens_to_ids(NEW_TOKENS)
    assert new_ids == [949, 950]
    model = recipe.model

    def new_rows() -> dict[str, torch.Tensor]:
        return {
            "embed_tokens": model.get_input_embeddings().weight[new_ids].detach().clone(),
            "lm_head": model.get_output_embeddings().weight[new_ids].detach().clone(),
        }

    initial = new_rows()  # the base's spare rows, or those resize_token_embeddings made
    final = recipe.train()
    assert any(949 in row.input_ids and 950 in row.input_ids for row in recipe.data.rows)
    trained = new_rows()
    for name in trained:
        change = (trained[name] - initial[name]).abs().amax(dim=1)
        assert (change > 1e-4).all(), f"new tokens' {name} rows not trained ({change})"
    if tie:
        assert torch.equal(trained["lm_head"], trained["embed_tokens"]), "the tied head left the trained embedding"

    saved = load_file(final / "adapter_model.safetensors")
    embed = [k for k in saved if "embed_tokens" in k]
    head = [k for k in saved if "lm_head" in k]
    # one copy of each (a tied head may be left to the embedding)
    assert len(embed) == 1 and len(head) in ((0, 1) if tie else (1,)), sorted(saved)
    assert torch.equal(saved[embed[0]][new_ids], trained["embed_tokens"])
    assert not head or torch.equal(saved[head[0]][new_ids], trained["lm_head"])
    rows = saved[embed[0]].shape[0]
    assert rows > max(new_ids)

    ids = torch.tensor([[1, *new_ids, 5, 6, 950, 949, 7]])
    reference = logits(model, ids)  # the function training ended with

    out = tmp_path / "merged"
    xtune_main(["convert", "merge", str(base), str(final), str(out)])
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert merged.get_input_embeddings().num_embeddings == merged.config.vocab_size == rows
    assert AutoTokenizer.from_pretrained(out).convert_tokens_to_ids(NEW_TOKENS) == new_ids
    assert (logits(merged, ids) - reference).abs().max().item() < 1e-5

    reloaded, tokenizer, _ = load_for_inference(str(final), device=CPU, dtype=torch.float32)
    assert tokenizer.convert_tokens_to_ids(NEW_TOKENS) == new_ids
    assert (logits(reloaded, ids) - reference).abs().max().item() < 1e-5
