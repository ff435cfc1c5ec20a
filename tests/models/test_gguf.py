"""`xtune convert gguf`: the GGUF file of a LoRA-trained tiny model holds the merged weights (read back by gguf's own
reader), runs as the Hugging Face model does (transformers' GGUF loader, which undoes llama.cpp's Q/K layout as
llama.cpp defines it, is the oracle), and carries the tokenizer, end-of-turn EOS and chat template chat uses.

The bases' Q and K weights are scaled up so that attention is sharp: with a random init's near-uniform attention,
logits barely depend on the rotary layout and a missing Q/K permutation would go unnoticed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from gguf import GGUFReader, GGUFValueType, TokenType
from peft import PeftModel
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, Qwen3Config

from xtune.chat.generate import GenerationSettings
from xtune.chat.session import ChatSession
from xtune.cli import main
from xtune.models.gguf import FAMILIES, unpermute_for_rope
from xtune.templates import get_template

TINY_LLAMA = Path(__file__).resolve().parents[2] / "src" / "xtune" / "assets" / "tiny-llama"
TEMPLATE = "qwen_chat"
SYSTEM = "You are a tiny test model."
CONFIG_YAML = f"model:\n  method: lora\ndata:\n  template: {TEMPLATE}\nevaluation:\n  system: {SYSTEM}\n"
CONVERSATION = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Who are you?"},
]


def tiny_config(family: str):
    config = AutoConfig.from_pretrained(TINY_LLAMA)
    config.num_hidden_layers = 1
    if family == "qwen3":  # q/k norms, and rotary halves in llama.cpp too (no permutation)
        sizes = {k: v for k, v in config.to_dict().items() if k not in ("model_type", "architectures")}
        # head_dim 128: transformers' GGUF reader takes Qwen3's default, not the file's attention.key_length
        config = Qwen3Config(**{**sizes, "head_dim": 128})
    return config


@pytest.fixture(scope="module", params=["llama", "qwen3"])
def trained(request, tmp_path_factory, save_trained_adapter) -> tuple[str, Path, Path]:
    """(family, base dir, adapter dir): a random tiny model with sharp attention and a LoRA adapter with non-zero B,
    saved as training saves final/ (tokenizer with the chat template, xtune_config.yaml)."""
    family = request.param
    root = tmp_path_factory.mktemp(f"gguf_{family}")
    base_dir, adapter_dir = root / "base", root / "final"
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(tiny_config(family), dtype=torch.float32)
    with torch.no_grad():
        for name, p in base.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(20)
    base.save_pretrained(base_dir)
    # a tokenizer whose EOS is not the template's end of turn (as Llama 3's <|end_of_text|> is not <|eot_id|>)
    AutoTokenizer.from_pretrained(TINY_LLAMA, eos_token="<|endoftext|>").save_pretrained(base_dir)
    save_trained_adapter(base, base_dir, adapter_dir, TEMPLATE, CONFIG_YAML)
    return family, base_dir, adapter_dir


def merged_reference(base_dir: Path, adapter_dir: Path):
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    return PeftModel.from_pretrained(base, adapter_dir).merge_and_unload().eval()


def sample_ids() -> torch.Tensor:
    return torch.randint(4, 900, (2, 24), generator=torch.Generator().manual_seed(0))


def export(adapter_dir: Path, out: Path, out_type: str) -> Path:
    main(["convert", "gguf", str(adapter_dir), str(out), "--type", out_type])
    return out


def gguf_logits(path: Path) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=sample_ids()).logits


def test_f32_file_holds_the_merged_weights_and_runs_as_the_hf_model(trained, tmp_path):
    family, base_dir, adapter_dir = trained
    out = export(adapter_dir, tmp_path / "model.gguf", "f32")  # the adapter directory: merged automatically
    reference = merged_reference(base_dir, adapter_dir)
    config = reference.config

    reader = GGUFReader(out)
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[FAMILIES[family].arch.upper()], config.num_hidden_layers)
    expected = {
        names.get_name(k, try_suffixes=(".weight", ".bias")): (k, v)
        for k, v in reference.state_dict().items()
        if not (config.tie_word_embeddings and k == "lm_head.weight")
    }
    assert sorted(t.name for t in reader.tensors) == sorted(expected)
    for tensor in reader.tensors:
        hf_name, weight = expected[tensor.name]
        data = torch.from_numpy(tensor.data.copy()).reshape(weight.shape)
        if FAMILIES[family].rope_pairs_interleaved and hf_name.endswith("q_proj.weight"):
            data = unpermute_for_rope(data, config.num_attention_heads, config.num_attention_heads)
        elif FAMILIES[family].rope_pairs_interleaved and hf_name.endswith("k_proj.weight"):
            data = unpermute_for_rope(data, config.num_attention_heads, config.num_key_value_heads)
        assert torch.equal(data, weight), hf_name

    with torch.no_grad():
        hf_logits = reference(input_ids=sample_ids()).logits
    assert (gguf_logits(out) - hf_logits).abs().max() < 1e-4

    # tokenizer: control tokens stay whole, EOS is the template's end of turn, the embedded template is chat's
    field = reader.get_field("tokenizer.ggml.token_type")
    types = [int(field.parts[i][0]) for i in field.data]
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    for token in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        assert types[tokenizer.convert_tokens_to_ids(token)] == TokenType.CONTROL
    assert reader.get_field("tokenizer.ggml.pre").contents() == "gpt-2"
    from_gguf = AutoTokenizer.from_pretrained(out.parent, gguf_file=out.name)
    assert tokenizer.eos_token == "<|endoftext|>" and from_gguf.eos_token == "<|im_end|>"  # the end of turn
    text = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert from_gguf(text, add_special_tokens=False).input_ids == tokenizer(text, add_special_tokens=False).input_ids
    assert from_gguf("<|im_start|><|im_end|>", add_special_tokens=False).input_ids == [2, 3]
    session = ChatSession(reference, tokenizer, get_template(TEMPLATE), GenerationSettings(), system=SYSTEM)
    messages = [{"role": "system", "content": SYSTEM}, *CONVERSATION]
    embedded = reader.get_field("tokenizer.chat_template")
    assert embedded.types == [GGUFValueType.STRING]
    prompt = from_gguf.apply_chat_template(
        messages, chat_template=embedded.contents(), add_generation_prompt=True, tokenize=False
    )
    assert tokenizer.decode(session.prompt_ids(CONVERSATION)) == prompt

    modelfile = (tmp_path / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./model.gguf\n")
    assert f'SYSTEM """{SYSTEM}"""' in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile


# Measured (max |logit difference|, logits of magnitude ~1.4): llama 0.21, qwen3 0.024; relative RMS error 5.8% and
# 1.5%. Both are sharp-attention models (Q/K scaled by 20), where a small error in a score moves the softmax; f16
# gives 0.0085 and 0.0009 on the same models. The bound leaves some room over the worse of the two.
Q8_0_LOGITS_BOUND = 0.3


def test_q8_0_weights_within_their_block_bound_and_logits_close(trained, tmp_path):
    family, base_dir, adapter_dir = trained
    out = export(adapter_dir, tmp_path / "model-q8_0.gguf", "q8_0")
    reference = merged_reference(base_dir, adapter_dir)
    config = reference.config
    from gguf import GGMLQuantizationType, dequantize

    weights = dict(reference.state_dict())
    quantized = [t for t in GGUFReader(out).tensors if t.tensor_type == GGMLQuantizationType.Q8_0]
    assert {t.name for t in quantized} >= {"token_embd.weight", "output.weight", "blk.0.attn_q.weight"}
    for tensor in quantized:
        if tensor.name != "token_embd.weight" and not tensor.name.startswith("blk.0.ffn"):
            continue
        hf = weights["model.embed_tokens.weight" if tensor.name == "token_embd.weight" else _ffn(tensor.name)]
        data = torch.from_numpy(dequantize(tensor.data, GGMLQuantizationType.Q8_0)).reshape(hf.shape)
        blocks, got = hf.reshape(-1, 32), data.reshape(-1, 32)
        # Q8_0: per block of 32, a scale d = max|x| / 127 stored as f16 and round(x / d): error <= d / 2 from the
        # rounding plus up to 127 * d * 2^-11 from d's f16 rounding
        bound = blocks.abs().amax(dim=1, keepdim=True) / 127 * (0.5 + 127 * 2**-11) + 1e-7
        assert ((got - blocks).abs() <= bound).all(), tensor.name

    with torch.no_grad():
        hf_logits = reference(input_ids=sample_ids()).logits
    assert (gguf_logits(out) - hf_logits).abs().max() < Q8_0_LOGITS_BOUND
    assert config.model_type == family


def _ffn(name: str) -> str:
    part = {"ffn_gate": "gate_proj", "ffn_up": "up_proj", "ffn_down": "down_proj"}[name.split(".")[2]]
    return f"model.layers.0.mlp.{part}.weight"


def test_sentencepiece_vocabulary_and_merged_system_template(tmp_path):
    """Llama 2, Mistral, InternLM2 and Gemma ship a SentencePiece tokenizer.model: the file carries its pieces, scores
    and types (the vocabulary padded to the embedding's rows), and transformers' reader of it tokenizes as the
    model's own tokenizer, added special tokens included; Mistral's Modelfile puts the system text in the first
    [INST] block as the template does."""
    import io
    import json

    import sentencepiece

    model_dir = tmp_path / "spm"
    model_dir.mkdir()
    text = [f"Question: {q} Answer: {a}." for q, a in [("What colour is the sky?", "blue"), ("Cats?", "four legs")]]
    piece_model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(text * 20), model_writer=piece_model, vocab_size=320, model_type="bpe",
        byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
    )  # fmt: skip
    (model_dir / "tokenizer.model").write_bytes(piece_model.getvalue())
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    (model_dir / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer", **special}))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": ["[TOOL]"]})
    tokenizer.save_pretrained(model_dir)
    config = AutoConfig.from_pretrained(TINY_LLAMA, num_hidden_layers=1, vocab_size=len(tokenizer) + 3, eos_token_id=2)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(model_dir)
    (model_dir / "xtune_config.yaml").write_text("data:\n  template: mistral\nevaluation:\n  system: Be brief.\n")

    out = export(model_dir, tmp_path / "out" / "spm.gguf", "f16")
    reader = GGUFReader(out)
    assert reader.get_field("tokenizer.ggml.model").contents() == "llama"
    assert len(reader.get_field("tokenizer.ggml.scores").contents()) == config.vocab_size
    from_gguf = AutoTokenizer.from_pretrained(out.parent, gguf_file=out.name)
    sample = "Question: What colour is the grass? [TOOL] Answer: green!"
    assert (
        from_gguf(sample, add_special_tokens=False).input_ids == tokenizer(sample, add_special_tokens=False).input_ids
    )
    assert tokenizer.convert_tokens_to_ids("[TOOL]") in from_gguf(sample, add_special_tokens=False).input_ids
    modelfile = (out.parent / "Modelfile").read_text()
    assert '{{ else if eq .Role "user" }} [INST] {{ if $system }}{{ $system }}\n\n{{ end }}{{ .Content }} [/INST]' in (
        modelfile
    )
    assert 'SYSTEM """Be brief."""' in modelfile and 'PARAMETER stop "</s>"' in modelfile


def test_an_export_that_fails_while_writing_leaves_no_file(one_layer_model_dir, tmp_path, monkeypatch):
    from xtune.models import gguf as gguf_export

    out = tmp_path / "model.gguf"
    out.write_bytes(b"the previous export")
    converted = []

    def fail_on_the_third(array, qtype):
        converted.append(qtype)
        if len(converted) == 3:
            raise OSError("disk went away")
        return encode(array, qtype)

    encode = gguf_export._encode
    monkeypatch.setattr(gguf_export, "_encode", fail_on_the_third)
    with pytest.raises(OSError, match="disk went away"):
        gguf_export.export_gguf(str(one_layer_model_dir), out, "bf16")
    assert out.read_bytes() == b"the previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]  # no temporary file, no Modelfile

    monkeypatch.setattr(gguf_export, "_encode", encode)
    gguf_export.export_gguf(str(one_layer_model_dir), out, "bf16")
    assert {t.tensor_type.name for t in GGUFReader(out).tensors} == {"BF16", "F32"}


def test_llama3_rope_factors_give_transformers_rotary_frequencies():
    """Llama 3.1's rope scaling goes in as llama.cpp's rope_freqs.weight, by which llama.cpp divides each rotary
    frequency: the quotients are transformers' own llama3 frequencies."""
    import numpy as np
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from xtune.models.gguf import _llama3_rope_freqs

    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0}
    rope.update(high_freq_factor=4.0, original_max_position_embeddings=8192)
    config = LlamaConfig(hidden_size=256, num_attention_heads=4, head_dim=64, rope_parameters=rope)
    expected, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    factors = _llama3_rope_freqs(config)
    assert factors.min() == 1.0 and factors.max() == 8.0  # both ends and the smooth band between them
    plain = 1.0 / 500000.0 ** (np.arange(0, 64, 2) / 64)
    np.testing.assert_allclose(plain / factors, expected.numpy(), rtol=1e-6)
