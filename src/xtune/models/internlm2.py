"""InternLM2 / InternLM2.5 checkpoints loaded natively as transformers' Llama, and written back.

InternLM2 is Llama with renamed modules and one fused, *grouped* query-key-value projection, so no remote code is
needed. Facts taken from the published `modeling_internlm2.py` (InternLM/InternLM, internlm/internlm2-*):

- `wqkv` rows are laid out per key-value head: for each of the `num_key_value_heads` groups, the group's
  `num_attention_heads // num_key_value_heads` query heads, then its key head, then its value head, each `head_dim`
  rows (`rearrange(qkv, "b q (h gs d) -> b q h gs d", gs=2 + groups)`). A contiguous q|k|v split is wrong.
- RoPE is rotate-half on the unpermuted head layout, exactly as transformers' Llama, so q/k rows are not permuted
  (InternLM's own `tools/convert2llama.py` does the same).
- `bias` puts a bias on `wqkv` and `wo` alike, which is Llama's `attention_bias`; the MLP never has one.
- `rope_scaling` is `{"type": "dynamic"|"linear", "factor": f}` with the Llama formulas of the time: dynamic NTK
  rescales the base from the total sequence length once it exceeds `max_position_embeddings`. One forward gives
  the same numbers as transformers' "dynamic"; across calls the original keeps a grown base for later, shorter
  sequences while transformers goes back to the unscaled one below max_position_embeddings.

Tokenizer: InternLM2 ships a sentencepiece `tokenizer.model` with remote `tokenization_internlm2.py` (added tokens
split out, then `[bos] + sentencepiece.encode(span)`). transformers' LlamaTokenizer is not used for it: its chat
tokens overwrite `[UNUSED_TOKEN_*]` pieces at fixed ids, which LlamaTokenizer would append as new ids, and its
Metaspace prefix goes only before the first span. `load_internlm2_tokenizer` builds what InternLM2's own fast
converter builds instead.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

INTERNLM2_ARCHITECTURE = "InternLM2ForCausalLM"

# Module renames that are one-to-one (wqkv is handled apart). Suffixes after "model.layers.N.".
_LAYER_RENAMES = {
    "attention.wo": "self_attn.o_proj",
    "feed_forward.w1": "mlp.gate_proj",
    "feed_forward.w3": "mlp.up_proj",
    "feed_forward.w2": "mlp.down_proj",
    "attention_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_TOP_RENAMES = {
    "model.tok_embeddings.weight": "model.embed_tokens.weight",
    "model.norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_KEY = re.compile(r"^model\.layers\.(\d+)\.(.+)\.(weight|bias)$")


def is_internlm2(config_dict: Mapping) -> bool:
    """True for an InternLM2 / InternLM2.5 causal LM config.json (model_type or architecture)."""
    return config_dict.get("model_type") == "internlm2" or INTERNLM2_ARCHITECTURE in (
        config_dict.get("architectures") or []
    )


def _dims(config_dict: Mapping) -> tuple[int, int, int]:
    """(num_attention_heads, num_key_value_heads, head_dim), with the original config's defaults."""
    heads = config_dict["num_attention_heads"]
    kv_heads = config_dict.get("num_key_value_heads") or heads
    return heads, kv_heads, config_dict["hidden_size"] // heads


def _rope_parameters(config_dict: Mapping) -> dict:
    # transformers 5 keeps theta and scaling together in `rope_parameters`; the formulas of its "dynamic" and
    # "linear" types are the ones InternLM2 copied from Llama, against max_position_embeddings.
    params: dict = {"rope_type": "default", "rope_theta": float(config_dict.get("rope_theta", 10000))}
    scaling = config_dict.get("rope_scaling")
    if scaling:
        kind = scaling.get("type") or scaling.get("rope_type")
        if kind not in ("dynamic", "linear"):
            raise ValueError(f"InternLM2 rope_scaling type {kind!r} is not 'dynamic' or 'linear'")
        params.update(rope_type=kind, factor=float(scaling["factor"]))
    return params


def llama_config_from_internlm2(config_dict: Mapping) -> LlamaConfig:
    """The LlamaConfig that computes the same function as an InternLM2 config.json."""
    heads, kv_heads, head_dim = _dims(config_dict)
    config = LlamaConfig(
        vocab_size=config_dict.get("vocab_size", 103168),
        hidden_size=config_dict["hidden_size"],
        intermediate_size=config_dict["intermediate_size"],
        num_hidden_layers=config_dict["num_hidden_layers"],
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        hidden_act=config_dict.get("hidden_act", "silu"),
        max_position_embeddings=config_dict.get("max_position_embeddings", 2048),
        initializer_range=config_dict.get("initializer_range", 0.02),
        rms_norm_eps=config_dict.get("rms_norm_eps", 1e-6),
        pad_token_id=config_dict.get("pad_token_id", 0),
        bos_token_id=config_dict.get("bos_token_id", 1),
        eos_token_id=config_dict.get("eos_token_id", 2),
        tie_word_embeddings=config_dict.get("tie_word_embeddings", False),
        rope_parameters=_rope_parameters(config_dict),
        attention_bias=bool(config_dict.get("bias", True)),  # the original defaults to bias=True
        mlp_bias=False,  # InternLM2MLP's w1/w2/w3 are always bias-free
    )
    config.architectures = ["LlamaForCausalLM"]
    dtype = config_dict.get("torch_dtype") or config_dict.get("dtype")
    if dtype:
        config.dtype = dtype
    return config


def split_wqkv(wqkv: torch.Tensor, config_dict: Mapping) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Grouped `wqkv` weight (rows, hidden) or bias (rows,) -> separate q, k, v in head order."""
    heads, kv_heads, head_dim = _dims(config_dict)
    groups = heads // kv_heads
    grouped = wqkv.reshape(kv_heads, groups + 2, head_dim, *wqkv.shape[1:])
    q = grouped[:, :groups].reshape(heads * head_dim, *wqkv.shape[1:])
    k = grouped[:, groups].reshape(kv_heads * head_dim, *wqkv.shape[1:])
    v = grouped[:, groups + 1].reshape(kv_heads * head_dim, *wqkv.shape[1:])
    return q.contiguous(), k.contiguous(), v.contiguous()


def merge_wqkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, config_dict: Mapping) -> torch.Tensor:
    """Inverse of `split_wqkv`: interleave each key-value head's query heads, key head and value head."""
    heads, kv_heads, head_dim = _dims(config_dict)
    rest = q.shape[1:]
    parts = (
        q.reshape(kv_heads, heads // kv_heads, head_dim, *rest),
        k.reshape(kv_heads, 1, head_dim, *rest),
        v.reshape(kv_heads, 1, head_dim, *rest),
    )
    return torch.cat(parts, dim=1).reshape(-1, *rest).contiguous()


def internlm2_to_llama_state_dict(sd: Mapping[str, torch.Tensor], config_dict: Mapping) -> dict[str, torch.Tensor]:
    """InternLM2 keys -> LlamaForCausalLM keys; unknown keys raise rather than load silently wrong."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in sd.items():
        if key in _TOP_RENAMES:
            out[_TOP_RENAMES[key]] = tensor
            continue
        match = _LAYER_KEY.match(key)
        if key.endswith("rotary_emb.inv_freq"):  # a buffer some old .bin files carry; recomputed from config
            continue
        if not match:
            raise ValueError(f"unexpected InternLM2 weight {key!r}")
        layer, module, kind = match.groups()
        prefix = f"model.layers.{layer}."
        if module == "attention.wqkv":
            for name, part in zip(("q", "k", "v"), split_wqkv(tensor, config_dict), strict=True):
                out[f"{prefix}self_attn.{name}_proj.{kind}"] = part
        elif module in _LAYER_RENAMES:
            out[f"{prefix}{_LAYER_RENAMES[module]}.{kind}"] = tensor
        else:
            raise ValueError(f"unexpected InternLM2 weight {key!r}")
    return out


def llama_to_internlm2_state_dict(sd: Mapping[str, torch.Tensor], config_dict: Mapping) -> dict[str, torch.Tensor]:
    """LlamaForCausalLM keys -> the original InternLM2 layout (inverse of `internlm2_to_llama_state_dict`)."""
    top = {llama: orig for orig, llama in _TOP_RENAMES.items()}
    layer_renames = {llama: orig for orig, llama in _LAYER_RENAMES.items()}
    out: dict[str, torch.Tensor] = {}
    for key, tensor in sd.items():
        if key in top:
            out[top[key]] = tensor
            continue
        match = _LAYER_KEY.match(key)
        if not match:
            raise ValueError(f"unexpected Llama weight {key!r}")
        layer, module, kind = match.groups()
        prefix = f"model.layers.{layer}."
        if module == "self_attn.q_proj":
            k, v = sd[f"{prefix}self_attn.k_proj.{kind}"], sd[f"{prefix}self_attn.v_proj.{kind}"]
            out[f"{prefix}attention.wqkv.{kind}"] = merge_wqkv(tensor, k, v, config_dict)
        elif module in ("self_attn.k_proj", "self_attn.v_proj"):
            continue  # merged with q_proj
        elif module in layer_renames:
            out[f"{prefix}{layer_renames[module]}.{kind}"] = tensor
        else:
            raise ValueError(f"unexpected Llama weight {key!r}")
    return out


def read_state_dict(model_dir: str | Path) -> dict[str, torch.Tensor]:
    """All weights of a checkpoint directory: safetensors (single or sharded) first, else pytorch_model*.bin."""
    model_dir = Path(model_dir)
    for single, index in (
        ("model.safetensors", "model.safetensors.index.json"),
        ("pytorch_model.bin", "pytorch_model.bin.index.json"),
    ):
        if (model_dir / index).exists():
            weight_map = json.loads((model_dir / index).read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        elif (model_dir / single).exists():
            files = [single]
        else:
            continue
        sd: dict[str, torch.Tensor] = {}
        for name in files:
            path = model_dir / name
            # weights_only: a .bin is a pickle, and only plain tensors may come out of it
            sd.update(load_file(path) if name.endswith(".safetensors") else torch.load(path, weights_only=True))
        return sd
    raise FileNotFoundError(f"{model_dir} has no model.safetensors(.index.json) or pytorch_model.bin(.index.json)")


def read_config(model_dir: str | Path) -> dict:
    return json.loads((Path(model_dir) / "config.json").read_text())


def load_internlm2_as_llama(
    model_dir: str | Path,
    dtype: torch.dtype | str = "auto",
    attn_implementation: str | None = "sdpa",
    **from_pretrained_kwargs,
) -> LlamaForCausalLM:
    """An InternLM2 checkpoint as a LlamaForCausalLM, without remote code. `dtype="auto"` keeps the checkpoint's
    dtype; extra keyword arguments (device_map, quantization_config, ...) go to `from_pretrained`."""
    config_dict = read_config(model_dir)
    if not is_internlm2(config_dict):
        raise ValueError(f"{model_dir}/config.json is not an InternLM2 config")
    config = llama_config_from_internlm2(config_dict)
    sd = internlm2_to_llama_state_dict(read_state_dict(model_dir), config_dict)
    if dtype == "auto":  # from_pretrained cannot infer it from an in-memory state dict
        dtype = next(iter(sd.values())).dtype
    # from_pretrained(None, state_dict=...) builds on the meta device and ties/initialises like a normal load
    model, info = LlamaForCausalLM.from_pretrained(
        None,
        config=config,
        state_dict=sd,
        dtype=dtype,
        attn_implementation=attn_implementation,
        output_loading_info=True,
        **from_pretrained_kwargs,
    )
    # from_pretrained only warns and initialises randomly; a converted checkpoint must cover the model exactly
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if problems:
        raise ValueError(f"{model_dir}: InternLM2 weights do not fit the Llama model: {problems}")
    # from_pretrained(None) names the model "None", which PEFT writes into adapter_config.json as the base
    model.name_or_path = model.config.name_or_path = str(model_dir)
    if (Path(model_dir) / "generation_config.json").exists():  # chat models stop on <|im_end|> through it
        model.generation_config = GenerationConfig.from_pretrained(model_dir)
    return model


def internlm2_config_from_llama(llama_config: LlamaConfig, original_config_dict: Mapping, dtype: torch.dtype) -> dict:
    """The original config.json, with the fields a fine-tune can change (vocab size, dtype) taken from the model."""
    config = dict(original_config_dict)
    heads, kv_heads, head_dim = _dims(config)
    expected = (config["hidden_size"], config["num_hidden_layers"], heads, kv_heads, head_dim)
    actual = (
        llama_config.hidden_size,
        llama_config.num_hidden_layers,
        llama_config.num_attention_heads,
        llama_config.num_key_value_heads,
        llama_config.head_dim,
    )
    if expected != actual:
        raise ValueError(f"model shape {actual} does not match the original InternLM2 config {expected}")
    config["architectures"] = [INTERNLM2_ARCHITECTURE]
    config["model_type"] = "internlm2"
    config["vocab_size"] = llama_config.vocab_size
    config["torch_dtype"] = str(dtype).removeprefix("torch.")
    return config


def save_as_internlm2(
    llama_model: PreTrainedModel,
    out_dir: str | Path,
    original_config_dict: Mapping,
    copy_code_from: str | Path | None = None,
) -> Path:
    """Write config.json (original fields, auto_map kept) and model.safetensors in InternLM2's key layout.
    `copy_code_from`: the original checkpoint directory, whose remote-code .py files auto_map points at."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu() for k, v in llama_model.state_dict().items()}
    if llama_model.config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)  # tied to the embedding; the original omits output.weight then too
    weights = llama_to_internlm2_state_dict(sd, original_config_dict)
    # safetensors refuses tensors that share storage, so give each its own
    save_file({k: v.clone().contiguous() for k, v in weights.items()}, out / "model.safetensors", {"format": "pt"})
    dtype = next(iter(weights.values())).dtype
    config = internlm2_config_from_llama(llama_model.config, original_config_dict, dtype)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if llama_model.generation_config is not None:
        llama_model.generation_config.save_pretrained(out)
    if copy_code_from is not None:
        for path in Path(copy_code_from).glob("*.py"):
            shutil.copy(path, out / path.name)
    return out


def _token_content(value: str | Mapping | None) -> str | None:
    return value.get("content") if isinstance(value, Mapping) else value


def _build_sentencepiece_tokenizer(model_dir: Path, added: Mapping[str, Mapping]) -> Tokenizer:
    """tokenizer.model as a `tokenizers` BPE, mirroring InternLM2's own fast converter (tokenization_internlm2_fast):
    ids 0-2 are <unk> <s> </s>; pieces at the ids of tokenizer_config's added_tokens_decoder take those tokens'
    content (the chat tokens overwrite [UNUSED_TOKEN_*] pieces, so they keep their ids); no pre-tokenizer, and the
    sentencepiece dummy prefix goes before each span between special tokens, as sentencepiece would add it."""
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import AddedToken, decoders, normalizers
    from tokenizers.models import BPE
    from transformers.convert_slow_tokenizer import generate_merges

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString((model_dir / "tokenizer.model").read_bytes())
    if proto.trainer_spec.model_type != 2:  # 2 = BPE; InternLM2's converter refuses anything else too
        raise ValueError(f"{model_dir}/tokenizer.model is not a sentencepiece BPE model")
    pieces = ["<unk>", "<s>", "</s>"] + [p.piece for p in proto.pieces[3:]]
    for index, token in added.items():
        pieces[int(index)] = token["content"]
    vocab = {piece: index for index, piece in enumerate(pieces)}
    bpe = BPE(vocab, generate_merges(vocab), unk_token="<unk>", fuse_unk=True, byte_fallback=True)
    tokenizer = Tokenizer(bpe)
    spaces = [normalizers.Replace(" ", "▁")]
    if proto.normalizer_spec.add_dummy_prefix:
        spaces.insert(0, normalizers.Prepend("▁"))
    tokenizer.normalizer = normalizers.Sequence(spaces)
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    flags = ("single_word", "lstrip", "rstrip", "normalized", "special")
    tokenizer.add_special_tokens(
        [AddedToken(t["content"], **{f: t[f] for f in flags if f in t}) for _, t in sorted(added.items())]
    )
    return tokenizer


def load_internlm2_tokenizer(model_dir: str | Path) -> PreTrainedTokenizerBase:
    """InternLM2's tokenizer without remote code. tokenizer.json when the directory has one; otherwise
    tokenizer.model converted the way InternLM2's own fast tokenizer does it (byte-fallback BPE, <s> prepended, no
    </s> appended), with tokenizer_config.json's special tokens, ids and chat template. `save_pretrained` then writes
    a tokenizer.json that AutoTokenizer loads without trust_remote_code."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    model_dir = Path(model_dir)
    config_path = model_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    if (model_dir / "tokenizer.json").exists():
        return PreTrainedTokenizerFast.from_pretrained(model_dir, local_files_only=True)
    tokenizer = _build_sentencepiece_tokenizer(model_dir, config.get("added_tokens_decoder", {}))
    bos = _token_content(config.get("bos_token")) or "<s>"
    if config.get("add_bos_token", True):  # tokenization_internlm2's defaults: add_bos_token=True, no eos
        bos_id = tokenizer.token_to_id(bos)
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, bos_id)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=bos,
        eos_token=_token_content(config.get("eos_token")) or "</s>",
        unk_token=_token_content(config.get("unk_token")) or "<unk>",
        pad_token=_token_content(config.get("pad_token")) or "</s>",
        chat_template=config.get("chat_template"),
        padding_side=config.get("padding_side", "left"),  # InternLM2TokenizerFast pads left
        clean_up_tokenization_spaces=False,
        model_max_length=config.get("model_max_length", int(1e30)),
    )
