"""A trained model as one GGUF file for llama.cpp and Ollama, written with `gguf` (llama.cpp's own writer).

What goes wrong in exports elsewhere, and is done here on purpose:
- llama.cpp's Llama graph applies rotary embeddings to interleaved pairs (GPT-J style), Hugging Face's Llama to
  the two halves of each head (GPT-NeoX style): the rows of Q and K are permuted so that both compute the same
  attention (llama.cpp's convert_hf_to_gguf does the same). Qwen and Gemma run NeoX-style in llama.cpp: no permute.
- The end-of-sequence id is the template's end-of-turn token (`<|im_end|>`, `<|eot_id|>`), or generation never stops.
- Added special tokens are typed CONTROL, so llama.cpp keeps `<|im_start|>` whole instead of spelling it out.
- The chat template is the one xtune trained with, as jinja (`tokenizer.chat_template`); it writes the BOS text
  itself where the format has one, so the file says not to add another.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import track
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from xtune.errors import ConfigError
from xtune.io import write_file_atomically
from xtune.model_dirs import checkpoint_model_type
from xtune.models.checkpoint_files import trained_system, trained_template
from xtune.models.load import ARGUMENT_USE, adapter_base_path, load_for_inference, resolve_model_dir
from xtune.templates import Template
from xtune.templates.ollama import modelfile

GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")


@dataclass(frozen=True)
class Family:
    arch: str  # gguf.MODEL_ARCH_NAMES value
    rope_pairs_interleaved: bool  # llama.cpp's graph rotates interleaved pairs: permute Q/K rows
    norm_offset: float = 0.0  # Gemma's RMSNorm multiplies by (1 + weight); llama.cpp by weight


# Hugging Face model_type -> how llama.cpp runs it. InternLM2 is loaded as Llama (xtune.models.internlm2).
FAMILIES = {
    "llama": Family("llama", True),
    "mistral": Family("llama", True),  # llama.cpp converts Mistral as Llama
    "qwen2": Family("qwen2", False),
    "qwen3": Family("qwen3", False),
    "gemma": Family("gemma", False, norm_offset=1.0),
}

# The pre-tokenizer splits of byte-level BPE vocabularies, by the name llama.cpp gives them (tokenizer.ggml.pre):
# llama.cpp splits text with its own built-in regex for that name, so the name must match the vocabulary's split.
_PRE_TOKENIZERS = {
    "llama-bpe": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+",
    "qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+",
}


def export_gguf(
    model_path: str,
    out: str | Path,
    out_type: str = "f16",
    adapter: str | None = None,
    template_name: str | None = None,
    trust_remote_code: bool = False,
) -> Path:
    """Write MODEL (a model directory, an adapter directory, final/ or checkpoint-N; adapters merged) as one GGUF file
    OUT, and an Ollama `Modelfile` beside it."""
    import gguf

    if out_type not in GGUF_TYPES:
        raise ConfigError(f"--type {out_type}: choose one of {', '.join(GGUF_TYPES)}")
    model_dir = resolve_model_dir(model_path, ARGUMENT_USE)
    model_type = _original_model_type(model_dir, adapter)
    if model_type is not None:  # refused before the weights load; a directory without config.json: load_for_inference
        _family(model_dir, "llama" if model_type == "internlm2" else model_type)
    model, tokenizer, source = load_for_inference(
        model_path, adapter=adapter, trust_remote_code=trust_remote_code, device=torch.device("cpu"), dtype="auto"
    )
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    family = _family(model_dir, model.config.model_type)  # InternLM2 arrives as llama
    template = trained_template(source, tokenizer, template_name, model_type)
    out = Path(out)
    writer = gguf.GGUFWriter(None, family.arch)
    _add_hyperparameters(writer, model, out_type, source.name)
    _add_vocabulary(writer, tokenizer, model.config.vocab_size, [source, *_base_dirs(model_dir, adapter)])
    end_of_turn = _end_of_turn_id(tokenizer, template)
    writer.add_eos_token_id(end_of_turn)
    writer.add_eot_token_id(end_of_turn)
    if tokenizer.bos_token_id is not None:
        writer.add_bos_token_id(tokenizer.bos_token_id)
    if tokenizer.pad_token_id is not None:
        writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(False)  # the template writes it (as chat does), where the format has one
    writer.add_chat_template(template.to_jinja())
    # Streamed: the tensor table first, then one tensor converted at a time, so the export holds the model and
    # a single converted tensor, not a second copy of the whole model.
    weights = [(name, shape, load, _tensor_type(shape, out_type)) for name, shape, load in gguf_tensors(model, family)]
    for name, shape, _, qtype in weights:
        writer.add_tensor_info(name, *_tensor_info(shape, qtype))

    def write(tmp: Path) -> None:
        writer.path = tmp
        writer.write_header_to_file(tmp)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for _, _, load, qtype in track(weights, f"writing {out.name}", console=Console(stderr=True), transient=True):
            writer.write_tensor_data(_encode(load(), qtype))
        writer.close()

    write_file_atomically(out, write)
    system = trained_system(source)
    write_file_atomically(
        out.with_name("Modelfile"),
        lambda tmp: tmp.write_text(modelfile(out.name, template, tokenizer, system), encoding="utf-8"),
    )
    return out


def _family(model_dir: Path, model_type: str) -> Family:
    if model_type not in FAMILIES:
        raise ConfigError(
            f"{model_dir}: GGUF export does not support the {model_type!r} architecture; it supports "
            f"{', '.join([*FAMILIES, 'internlm2'])}. Merge it (`xtune convert merge`) and use llama.cpp's own "
            "convert_hf_to_gguf.py"
        )
    return FAMILIES[model_type]


def _base_dirs(model_dir: Path, adapter: str | None) -> list[Path]:
    """Where the base's own files are (tokenizer.model), for an adapter directory."""
    if adapter:
        return [model_dir]
    if (model_dir / "adapter_config.json").exists():
        return [resolve_model_dir(adapter_base_path(model_dir), ARGUMENT_USE)]
    return []


def _original_model_type(model_dir: Path, adapter: str | None) -> str | None:
    for directory in [*_base_dirs(model_dir, adapter), model_dir]:
        if (directory / "config.json").exists():
            return checkpoint_model_type(str(directory))
    return None


def gguf_tensors(model: PreTrainedModel, family: Family):
    """(gguf name, shape, load) for each weight, where load() gives the float32 array in llama.cpp's layout."""
    import gguf

    config = model.config
    names = gguf.get_tensor_name_map(_arch(family), config.num_hidden_layers)
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    rope_freqs = _llama3_rope_freqs(config)
    if rope_freqs is not None:
        yield "rope_freqs.weight", rope_freqs.shape, lambda: rope_freqs
    for hf_name, tensor in model.state_dict().items():
        if config.tie_word_embeddings and hf_name == "lm_head.weight":
            continue  # llama.cpp reads the output head from the embedding when the file has none
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ConfigError(f"GGUF export: no llama.cpp name for the {config.model_type} weight {hf_name!r}")

        def load(hf_name: str = hf_name, tensor: torch.Tensor = tensor) -> np.ndarray:
            data = tensor.detach().to(torch.float32)
            if family.rope_pairs_interleaved and hf_name.endswith("q_proj.weight"):
                data = permute_for_rope(data, heads, heads)
            elif family.rope_pairs_interleaved and hf_name.endswith("k_proj.weight"):
                data = permute_for_rope(data, heads, kv_heads)
            if family.norm_offset and hf_name.endswith("norm.weight"):
                data = data + family.norm_offset
            return data.numpy()

        yield name, tuple(tensor.shape), load


def permute_for_rope(weight: torch.Tensor, heads: int, kv_heads: int) -> torch.Tensor:
    """Rows of each head reordered from halves (HF: dims i and i + d/2 rotate together) to interleaved pairs (llama.cpp:
    dims 2i and 2i + 1), as llama.cpp's convert_hf_to_gguf.py permutes them."""
    n = kv_heads if heads != kv_heads else heads
    return weight.reshape(n, 2, weight.shape[0] // n // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def unpermute_for_rope(weight: torch.Tensor, heads: int, kv_heads: int) -> torch.Tensor:
    n = kv_heads if heads != kv_heads else heads
    return weight.reshape(n, weight.shape[0] // n // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _tensor_type(shape: tuple[int, ...], out_type: str):
    """A tensor's type in the file: 1-d tensors (norms, biases) stay f32 as llama.cpp's converter keeps them, and
    rows that do not fill Q8_0's blocks of 32 go f16."""
    import gguf

    types = gguf.GGMLQuantizationType
    if out_type == "f32" or len(shape) == 1:
        return types.F32
    if out_type == "q8_0" and shape[-1] % gguf.GGML_QUANT_SIZES[types.Q8_0][0]:
        return types.F16
    return {"f16": types.F16, "bf16": types.BF16, "q8_0": types.Q8_0}[out_type]


def _tensor_info(shape: tuple[int, ...], qtype) -> tuple:
    """add_tensor_info's shape, numpy dtype, byte count and raw type for a tensor of `shape` stored as `qtype`."""
    import gguf
    from gguf.quants import quant_shape_to_byte_shape

    plain = {gguf.GGMLQuantizationType.F32: np.float32, gguf.GGMLQuantizationType.F16: np.float16}
    if qtype in plain:
        return shape, np.dtype(plain[qtype]), math.prod(shape) * np.dtype(plain[qtype]).itemsize, None
    byte_shape = quant_shape_to_byte_shape(shape, qtype)
    return byte_shape, np.dtype(np.uint8), math.prod(byte_shape), qtype


def _encode(array: np.ndarray, qtype) -> np.ndarray:
    import gguf
    from gguf.quants import quantize

    if qtype == gguf.GGMLQuantizationType.F32:
        return array.astype(np.float32)
    if qtype == gguf.GGMLQuantizationType.F16:
        return array.astype(np.float16)
    return quantize(array, qtype)


def _arch(family: Family):
    import gguf

    return next(arch for arch, name in gguf.MODEL_ARCH_NAMES.items() if name == family.arch)


def _add_hyperparameters(writer, model: PreTrainedModel, out_type: str, name: str) -> None:
    import gguf

    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    rope = dict(getattr(config, "rope_parameters", None) or {})
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    rope_type = rope.get("rope_type", "default")
    if rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif rope_type not in ("default", "llama3"):  # llama3: the rope_freqs tensor (gguf_tensors)
        raise ConfigError(
            f"GGUF export: rope_type {rope_type!r} (config.json rope_scaling) is not supported; "
            "supported: default, linear, llama3"
        )
    file_types = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }
    writer.add_file_type(file_types[out_type])


def _llama3_rope_freqs(config) -> np.ndarray | None:
    """Llama 3.1's rope scaling as llama.cpp takes it: one factor per rotary frequency (rope_freqs.weight)."""
    rope = dict(getattr(config, "rope_parameters", None) or {})
    if rope.get("rope_type") != "llama3":
        return None
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    freqs = 1.0 / (rope["rope_theta"] ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old_context = rope["original_max_position_embeddings"]
    factors = []
    for freq in freqs:
        wavelength = 2 * math.pi / freq
        if wavelength < old_context / high:
            factors.append(1.0)
        elif wavelength > old_context / low:
            factors.append(factor)
        else:
            smooth = (old_context / wavelength - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, dtype=np.float32)


def _add_vocabulary(writer, tokenizer: PreTrainedTokenizerBase, vocab_size: int, dirs: list[Path]) -> None:
    """Tokens, their types and the merges (byte-level BPE) or scores (SentencePiece), padded to the embedding's rows."""
    import gguf

    spm = next((d / "tokenizer.model" for d in dirs if (d / "tokenizer.model").is_file()), None)
    tokens, types, scores = _sentencepiece_vocabulary(spm) if spm is not None else ([], [], [])
    if spm is None:
        state = json.loads(tokenizer.backend_tokenizer.to_str())
        if state["model"]["type"] != "BPE":
            raise ConfigError(
                f"GGUF export: a {state['model']['type']} tokenizer without a tokenizer.model is not supported "
                "(byte-level BPE or SentencePiece)"
            )
        vocab = state["model"]["vocab"]
        tokens = [None] * (max(vocab.values()) + 1)
        for token, i in vocab.items():
            tokens[i] = token
        types = [gguf.TokenType.NORMAL] * len(tokens)
        merges = [m if isinstance(m, str) else " ".join(m) for m in state["model"]["merges"]]
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(_pre_tokenizer_name(state["pre_tokenizer"]))
        writer.add_token_merges(merges)
    else:
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
    for i, added in tokenizer.added_tokens_decoder.items():
        while len(tokens) <= i:
            tokens.append(None)
            types.append(gguf.TokenType.UNUSED)
            scores.append(-1000.0)
        tokens[i] = added.content
        types[i] = gguf.TokenType.CONTROL if added.special else gguf.TokenType.USER_DEFINED
    if len(tokens) > vocab_size:
        raise ConfigError(
            f"GGUF export: the tokenizer has {len(tokens)} tokens but the model's embedding only {vocab_size} rows"
        )
    while len(tokens) < vocab_size:  # rows the tokenizer never produces (vocabularies padded to a multiple)
        tokens.append(None)
        types.append(gguf.TokenType.UNUSED)
        scores.append(-1000.0)
    for i, token in enumerate(tokens):
        if token is None:
            tokens[i], types[i] = f"[PAD{i}]", gguf.TokenType.UNUSED
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    if spm is not None:
        writer.add_token_scores(scores)


def _sentencepiece_vocabulary(path: Path) -> tuple[list, list, list]:
    import gguf
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
    tokens, types, scores = [], [], []
    for i in range(sp.vocab_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        if sp.is_unknown(i):
            types.append(gguf.TokenType.UNKNOWN)
        elif sp.is_control(i):
            types.append(gguf.TokenType.CONTROL)
        elif sp.is_unused(i):
            types.append(gguf.TokenType.UNUSED)
        elif sp.is_byte(i):
            types.append(gguf.TokenType.BYTE)
        else:
            types.append(gguf.TokenType.NORMAL)
    return tokens, types, scores


def _pre_tokenizer_name(pre_tokenizer: dict | None) -> str:
    """llama.cpp's name for how this vocabulary splits text before the merges (tokenizer.ggml.pre)."""
    steps = (pre_tokenizer or {}).get("pretokenizers") or ([pre_tokenizer] if pre_tokenizer else [])
    splits = [s["pattern"].get("Regex") for s in steps if s["type"] == "Split"]
    byte_level = [s for s in steps if s["type"] == "ByteLevel"]
    if not splits and len(byte_level) == 1 and byte_level[0].get("use_regex", True):
        return "gpt-2"
    if len(splits) == 1:
        for name, regex in _PRE_TOKENIZERS.items():
            if splits[0] == regex:
                return name
    raise ConfigError(
        f"GGUF export: llama.cpp has no pre-tokenizer known to match this tokenizer's ({json.dumps(pre_tokenizer)}); "
        f"supported: gpt-2, {', '.join(_PRE_TOKENIZERS)}, and SentencePiece vocabularies"
    )


def _end_of_turn_id(tokenizer: PreTrainedTokenizerBase, template: Template) -> int:
    """The token a reply ends with in this template: llama.cpp stops there."""
    for word in template.stop_words_for(tokenizer.eos_token):
        ids = tokenizer(word, add_special_tokens=False).input_ids
        if len(ids) == 1:
            return ids[0]
    if tokenizer.eos_token_id is None:
        raise ConfigError("GGUF export: the template's end of turn is not one token and the tokenizer has no EOS")
    return tokenizer.eos_token_id
