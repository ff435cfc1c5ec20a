"""InternLM2 checkpoints as transformers' Llama: a tiny random InternLM2 checkpoint is written in the original layout,
and the converted model is checked against a reference forward written here from the published architecture
(modeling_internlm2.py: grouped wqkv, rotate-half RoPE with linear / dynamic-NTK scaling, RMSNorm, SwiGLU, GQA)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaForCausalLM

from xtune.models.internlm2 import (
    internlm2_to_llama_state_dict,
    is_internlm2,
    llama_config_from_internlm2,
    llama_to_internlm2_state_dict,
    load_internlm2_as_llama,
    load_internlm2_tokenizer,
    merge_wqkv,
    save_as_internlm2,
    split_wqkv,
)

HIDDEN, HEADS, KV_HEADS, LAYERS, VOCAB, FFN = 64, 4, 2, 2, 128, 96
MAX_POS = 16


def internlm2_config(bias: bool = False, rope_scaling: dict | None = None, tie: bool = False, **extra) -> dict:
    return {
        "architectures": ["InternLM2ForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_internlm2.InternLM2Config",
            "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM",
        },
        "model_type": "internlm2",
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "rope_theta": 1000000,
        "rope_scaling": rope_scaling,
        "max_position_embeddings": MAX_POS,
        "bias": bias,
        "vocab_size": VOCAB,
        "tie_word_embeddings": tie,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 2,
        "torch_dtype": "float32",
        "attn_implementation": "eager",
        **extra,
    }


def random_internlm2_weights(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 0.1) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * scale

    head_dim = HIDDEN // HEADS
    qkv_rows = (HEADS + 2 * KV_HEADS) * head_dim
    # a tied embedding is also the output layer, so it gets the output layer's scale (logits of order 1)
    embedding = rand(VOCAB, HIDDEN, scale=0.1 if config["tie_word_embeddings"] else 1.0)
    sd = {"model.tok_embeddings.weight": embedding, "model.norm.weight": 1 + rand(HIDDEN)}
    if not config["tie_word_embeddings"]:
        sd["output.weight"] = rand(VOCAB, HIDDEN)
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        sd[p + "attention.wqkv.weight"] = rand(qkv_rows, HIDDEN)
        sd[p + "attention.wo.weight"] = rand(HIDDEN, HEADS * head_dim)
        if config["bias"]:
            sd[p + "attention.wqkv.bias"] = rand(qkv_rows)
            sd[p + "attention.wo.bias"] = rand(HIDDEN)
        sd[p + "feed_forward.w1.weight"] = rand(FFN, HIDDEN)
        sd[p + "feed_forward.w3.weight"] = rand(FFN, HIDDEN)
        sd[p + "feed_forward.w2.weight"] = rand(HIDDEN, FFN)
        sd[p + "attention_norm.weight"] = 1 + rand(HIDDEN)
        sd[p + "ffn_norm.weight"] = 1 + rand(HIDDEN)
    return sd


def write_checkpoint(directory: Path, config: dict, sd: dict[str, torch.Tensor], layout: str = "single") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    (directory / "modeling_internlm2.py").write_text("# remote code stand-in\n")
    if layout == "single":
        save_file(sd, directory / "model.safetensors", {"format": "pt"})
    elif layout == "sharded":
        keys = sorted(sd)
        shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
        for name, names in shards.items():
            save_file({k: sd[k] for k in names}, directory / name, {"format": "pt"})
        weight_map = {k: name for name, names in shards.items() for k in names}
        (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    else:  # a legacy pickle checkpoint
        torch.save(sd, directory / "pytorch_model.bin")
    return directory


# ---- reference forward, from the published InternLM2 architecture ------------------------------------------------


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def reference_cos_sin(config: dict, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """InternLM2RotaryEmbedding and its Linear / DynamicNTK variants for a fresh forward of seq_len tokens."""
    dim = config["hidden_size"] // config["num_attention_heads"]
    base, max_pos = float(config["rope_theta"]), config["max_position_embeddings"]
    scaling = config["rope_scaling"] or {}
    t = torch.arange(seq_len, dtype=torch.float64)
    if scaling.get("type") == "linear":
        t = t / scaling["factor"]
    if scaling.get("type") == "dynamic" and seq_len > max_pos:
        factor = scaling["factor"]
        base = base * ((factor * seq_len / max_pos) - (factor - 1)) ** (dim / (dim - 2))
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    freqs = torch.outer(t, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def reference_logits(sd: dict[str, torch.Tensor], config: dict, ids: torch.Tensor) -> torch.Tensor:
    """Logits of InternLM2ForCausalLM computed in float64 straight from the raw InternLM2 weights."""
    w = {k: v.double() for k, v in sd.items()}
    heads, kv_heads, eps = config["num_attention_heads"], config["num_key_value_heads"], config["rms_norm_eps"]
    head_dim, groups = config["hidden_size"] // heads, heads // kv_heads
    batch, seq = ids.shape
    cos, sin = reference_cos_sin(config, seq)
    causal = torch.full((seq, seq), float("-inf"), dtype=torch.float64).triu(1)
    h = w["model.tok_embeddings.weight"][ids]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        x = rms_norm(h, w[p + "attention_norm.weight"], eps)
        qkv = torch.nn.functional.linear(x, w[p + "attention.wqkv.weight"], w.get(p + "attention.wqkv.bias"))
        # "b q (h gs d) -> b q h gs d" with gs = groups + 2: per kv head, its query heads, then key, then value
        qkv = qkv.view(batch, seq, kv_heads, groups + 2, head_dim)
        q = qkv[..., :groups, :].reshape(batch, seq, heads, head_dim).transpose(1, 2)
        k = qkv[..., -2, :].transpose(1, 2)
        v = qkv[..., -1, :].transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)  # query head j uses kv j//groups
        scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim) + causal
        attn = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, seq, heads * head_dim)
        h = h + torch.nn.functional.linear(attn, w[p + "attention.wo.weight"], w.get(p + "attention.wo.bias"))
        x = rms_norm(h, w[p + "ffn_norm.weight"], eps)
        gate, up = x @ w[p + "feed_forward.w1.weight"].T, x @ w[p + "feed_forward.w3.weight"].T
        h = h + (torch.nn.functional.silu(gate) * up) @ w[p + "feed_forward.w2.weight"].T
    h = rms_norm(h, w["model.norm.weight"], eps)
    output = w["model.tok_embeddings.weight"] if config["tie_word_embeddings"] else w["output.weight"]
    return h @ output.T


def llama_logits(model: LlamaForCausalLM, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits.double()


def token_ids(seq: int, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


# ---- tests ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bias, rope_scaling, attn",
    [
        (False, None, "sdpa"),
        (True, None, "eager"),
        (True, None, "sdpa"),
        (False, {"type": "dynamic", "factor": 2.0}, "sdpa"),
        (True, {"type": "linear", "factor": 3.0}, "eager"),
    ],
)
def test_converted_llama_matches_reference_forward(tmp_path, bias, rope_scaling, attn):
    config = internlm2_config(bias=bias, rope_scaling=rope_scaling)
    sd = random_internlm2_weights(config)
    source = write_checkpoint(tmp_path, config, sd)
    model = load_internlm2_as_llama(source, dtype=torch.float32, attn_implementation=attn)
    assert isinstance(model, LlamaForCausalLM)
    ids = token_ids(MAX_POS)  # within max_position_embeddings: dynamic NTK is inactive here
    diff = (llama_logits(model, ids) - reference_logits(sd, config, ids)).abs().max().item()
    assert diff < 1e-5, diff


def test_dynamic_ntk_beyond_max_positions_matches_reference(tmp_path):
    config = internlm2_config(rope_scaling={"type": "dynamic", "factor": 2.0})
    sd = random_internlm2_weights(config)
    model = load_internlm2_as_llama(write_checkpoint(tmp_path, config, sd), dtype=torch.float32)
    ids = token_ids(3 * MAX_POS)
    reference = reference_logits(sd, config, ids)
    diff = (llama_logits(model, ids) - reference).abs().max().item()
    assert diff < 1e-5, diff
    # the scaling does change the function past max_position_embeddings, so the comparison above means something
    unscaled = reference_logits(sd, {**config, "rope_scaling": None}, ids)
    assert (unscaled - reference)[:, MAX_POS:].abs().max() > 1e-2


def test_naive_qkv_split_is_caught(tmp_path):
    config = internlm2_config(bias=True)
    sd = random_internlm2_weights(config)
    llama_sd = internlm2_to_llama_state_dict(sd, config)
    q_rows, kv_rows = HIDDEN, KV_HEADS * HIDDEN // HEADS
    for i in range(LAYERS):  # the tempting but wrong contiguous q|k|v split
        for kind in ("weight", "bias"):
            wqkv = sd[f"model.layers.{i}.attention.wqkv.{kind}"]
            parts = torch.split(wqkv, [q_rows, kv_rows, kv_rows])
            for name, part in zip("qkv", parts, strict=True):
                llama_sd[f"model.layers.{i}.self_attn.{name}_proj.{kind}"] = part.clone()
    naive = LlamaForCausalLM.from_pretrained(None, config=llama_config_from_internlm2(config), state_dict=llama_sd)
    ids = token_ids(MAX_POS)
    assert (llama_logits(naive, ids) - reference_logits(sd, config, ids)).abs().max() > 1e-2


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_split_and_merge_wqkv_are_exact_inverses(kv_heads):
    config = {"hidden_size": HIDDEN, "num_attention_heads": HEADS, "num_key_value_heads": kv_heads}
    head_dim = HIDDEN // HEADS
    rows = (HEADS + 2 * kv_heads) * head_dim
    for wqkv in (torch.randn(rows, HIDDEN), torch.randn(rows)):  # weight and bias
        q, k, v = split_wqkv(wqkv, config)
        assert q.shape[0] == HEADS * head_dim and k.shape[0] == v.shape[0] == kv_heads * head_dim
        assert torch.equal(merge_wqkv(q, k, v, config), wqkv)
        q2, k2, v2 = torch.randn_like(q), torch.randn_like(k), torch.randn_like(v)
        for got, want in zip(split_wqkv(merge_wqkv(q2, k2, v2, config), config), (q2, k2, v2), strict=True):
            assert torch.equal(got, want)


def test_split_follows_the_grouped_layout():
    # rows labelled by (kv group, slot): slot < groups is a query head, then the key head, then the value head
    config = {"hidden_size": 8, "num_attention_heads": 4, "num_key_value_heads": 2}  # head_dim 2, 2 groups of 2
    labels = torch.tensor([10 * g + slot for g in range(2) for slot in range(4) for _ in range(2)], dtype=torch.float)
    q, k, v = split_wqkv(labels, config)
    assert q.tolist() == [0, 0, 1, 1, 10, 10, 11, 11]
    assert k.tolist() == [2, 2, 12, 12]
    assert v.tolist() == [3, 3, 13, 13]


@pytest.mark.parametrize("bias", [False, True])
def test_state_dict_round_trip_is_exact(bias):
    config = internlm2_config(bias=bias)
    sd = random_internlm2_weights(config)
    back = llama_to_internlm2_state_dict(internlm2_to_llama_state_dict(sd, config), config)
    assert back.keys() == sd.keys()
    assert all(torch.equal(back[k], sd[k]) for k in sd)


@pytest.mark.parametrize("bias", [False, True])
def test_load_save_load_round_trip(tmp_path, bias):
    config = internlm2_config(bias=bias, rope_scaling={"type": "dynamic", "factor": 2.0})
    sd = random_internlm2_weights(config)
    source = write_checkpoint(tmp_path / "src", config, sd)
    (source / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": [2, 6]}))
    model = load_internlm2_as_llama(source, dtype=torch.float32)
    assert model.generation_config.eos_token_id == [2, 6]  # a chat model's <|im_end|> stop survives
    out = save_as_internlm2(model, tmp_path / "out", config, copy_code_from=source)
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == [2, 6]

    saved = load_file(out / "model.safetensors")
    assert saved.keys() == sd.keys()
    assert all(torch.equal(saved[k], sd[k]) and saved[k].dtype == sd[k].dtype for k in sd)
    assert json.loads((out / "config.json").read_text()) == config  # original fields, auto_map and all
    assert (out / "modeling_internlm2.py").exists()

    again = load_internlm2_as_llama(out, dtype=torch.float32)
    ids = token_ids(2 * MAX_POS)
    assert torch.equal(llama_logits(again, ids), llama_logits(model, ids))


def test_tied_embeddings_without_output_weight(tmp_path):
    config = internlm2_config(tie=True)
    sd = random_internlm2_weights(config)
    assert "output.weight" not in sd
    model = load_internlm2_as_llama(write_checkpoint(tmp_path / "src", config, sd), dtype=torch.float32)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    ids = token_ids(MAX_POS)
    assert (llama_logits(model, ids) - reference_logits(sd, config, ids)).abs().max() < 1e-5
    out = save_as_internlm2(model, tmp_path / "out", config)
    assert load_file(out / "model.safetensors").keys() == sd.keys()


@pytest.mark.parametrize("layout", ["sharded", "bin"])
def test_sharded_and_bin_checkpoints_load_the_same(tmp_path, layout):
    config = internlm2_config(bias=True)
    sd = random_internlm2_weights(config)
    single = load_internlm2_as_llama(write_checkpoint(tmp_path / "single", config, sd), dtype=torch.float32)
    other = load_internlm2_as_llama(write_checkpoint(tmp_path / layout, config, sd, layout), dtype=torch.float32)
    ids = token_ids(MAX_POS)
    assert torch.equal(llama_logits(single, ids), llama_logits(other, ids))


def test_auto_dtype_keeps_the_checkpoint_dtype(tmp_path):
    config = internlm2_config(torch_dtype="bfloat16")
    sd = {k: v.to(torch.bfloat16) for k, v in random_internlm2_weights(config).items()}
    model = load_internlm2_as_llama(write_checkpoint(tmp_path / "src", config, sd))
    assert model.dtype == torch.bfloat16
    out = save_as_internlm2(model, tmp_path / "out", config)
    saved = load_file(out / "model.safetensors")
    assert all(torch.equal(saved[k], sd[k]) for k in sd)
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_config_mapping():
    config = internlm2_config(bias=True, rope_scaling={"type": "dynamic", "factor": 2.5}, tie=True)
    assert is_internlm2(config)
    assert is_internlm2({"architectures": ["InternLM2ForCausalLM"]})
    assert not is_internlm2({"model_type": "llama", "architectures": ["LlamaForCausalLM"]})
    llama = llama_config_from_internlm2(config)
    assert (llama.attention_bias, llama.mlp_bias, llama.tie_word_embeddings) == (True, False, True)
    assert (llama.num_key_value_heads, llama.head_dim, llama.max_position_embeddings) == (KV_HEADS, 16, MAX_POS)
    assert llama.rope_parameters == {"rope_type": "dynamic", "factor": 2.5, "rope_theta": 1e6}
    assert (llama.bos_token_id, llama.eos_token_id, llama.pad_token_id) == (1, 2, 2)
    plain = llama_config_from_internlm2(internlm2_config())
    assert plain.rope_parameters == {"rope_type": "default", "rope_theta": 1e6}
    with pytest.raises(ValueError, match="rope_scaling"):
        llama_config_from_internlm2(internlm2_config(rope_scaling={"type": "yarn", "factor": 2.0}))


def test_unknown_weights_are_refused():
    config = internlm2_config()
    sd = random_internlm2_weights(config)
    sd["model.layers.0.attention.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="unexpected InternLM2 weight"):
        internlm2_to_llama_state_dict(sd, config)


# ---- tokenizer -----------------------------------------------------------------------------------------------------

CHAT_TOKENS = {5: "<|im_start|>", 6: "<|im_end|>", 7: "<|action_start|>"}
CORPUS = [
    "Hello world, this is a tiny corpus for InternLM2 tokenizer tests.",
    "The quick brown fox jumps over the lazy dog.",
    "def f(x):\n    return x + 1\n",
    "Numbers 12345 and symbols !@#$%^&*()",
    "  leading spaces and   multiple   spaces",
]
SAMPLES = [
    "Hello world",
    "  two  spaces\nnew line",
    "中文 byte fallback ✓",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "x<|im_end|>y<|action_start|>",
    " leading space",
    "",
]


def write_sentencepiece_tokenizer(directory: Path, dummy_prefix: bool):
    """A tiny InternLM2-style tokenizer.model (byte-fallback BPE with [UNUSED_TOKEN_*] pieces that the
    tokenizer_config.json turns into chat tokens), and the sentencepiece processor for it."""
    import sentencepiece as spm

    directory.mkdir(parents=True)
    (directory / "corpus.txt").write_text("\n".join(CORPUS * 20))
    spm.SentencePieceTrainer.train(
        input=str(directory / "corpus.txt"),
        model_prefix=str(directory / "tokenizer"),
        vocab_size=400,
        model_type="bpe",
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=dummy_prefix,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        user_defined_symbols=[f"[UNUSED_TOKEN_{i}]" for i in range(5)],
        minloglevel=2,
    )
    flags = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
    added = {str(i): {"content": c, **flags} for i, c in CHAT_TOKENS.items()}
    tokenizer_config = {
        "tokenizer_class": "InternLM2Tokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]},
        "added_tokens_decoder": added,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "</s>",
        "unk_token": "<unk>",
        "chat_template": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}",
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return spm.SentencePieceProcessor(model_file=str(directory / "tokenizer.model"))


def internlm2_reference_ids(sp, text: str) -> list[int]:
    """tokenization_internlm2.InternLM2Tokenizer: added tokens split out first, sentencepiece on each span, bos
    prepended, no eos."""
    ids = [1]
    by_content = {c: i for i, c in CHAT_TOKENS.items()}
    for span in re.split("(" + "|".join(map(re.escape, CHAT_TOKENS.values())) + ")", text):
        ids += [by_content[span]] if span in by_content else sp.encode(span) if span else []
    return ids


@pytest.mark.parametrize("dummy_prefix", [True, False])
def test_tokenizer_from_sentencepiece_matches_internlm2_tokenizer(tmp_path, dummy_prefix):
    sp = write_sentencepiece_tokenizer(tmp_path / "tok", dummy_prefix)
    tokenizer = load_internlm2_tokenizer(tmp_path / "tok")
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 2, 2)
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") == 6
    for text in SAMPLES:
        assert tokenizer(text)["input_ids"] == internlm2_reference_ids(sp, text), text
    plain = "Hello world, byte fallback 中文"
    assert tokenizer.decode(tokenizer(plain)["input_ids"], skip_special_tokens=True) == plain
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n"

    # saved, it is a plain tokenizer.json that AutoTokenizer reads without remote code
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(tmp_path / "saved")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "saved")
    for text in SAMPLES:
        assert reloaded(text)["input_ids"] == internlm2_reference_ids(sp, text), text
