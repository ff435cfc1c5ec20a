"""Model and tokenizer loading. Nothing here downloads: paths are local directories or the local HF cache."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from xtune.assets import resolve_path
from xtune.config.schema import ModelSettings
from xtune.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_model_dir(path: str) -> Path:
    """A local directory, a builtin: asset, or a repo id already in the local Hugging Face cache."""
    local = resolve_path(path)
    if local.is_dir():
        return local
    if not path.startswith(("/", ".", "~")) and path.count("/") == 1:
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(path, local_files_only=True))
        except Exception:  # not cached: fall through to the error that says what to do
            pass
    raise ConfigError(
        f"model path {path!r} is not a local directory. xtune never downloads: fetch the model first (for "
        f"example `huggingface-cli download {path} --local-dir ./models/{Path(path).name}`) and set "
        f"model.path to that directory (--set model.path=./models/{Path(path).name})."
    )


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name != "auto":
        return DTYPES[name]
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_tokenizer(path: str | Path, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(
        resolve_model_dir(str(path)), trust_remote_code=trust_remote_code, local_files_only=True
    )
    if tokenizer.pad_token is None:
        # Padding positions are never attended to (position-ids restart) nor trained, so any id will do.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(settings: ModelSettings, device: torch.device | None = None, seed: int = 0) -> PreTrainedModel:
    """The base model, with LoRA/QLoRA adapters attached when the method asks for them."""
    return attach_adapters(load_base_model(settings, device, seed), settings)


def load_base_model(settings: ModelSettings, device: torch.device | None = None, seed: int = 0) -> PreTrainedModel:
    device = device or default_device()
    model_dir = resolve_model_dir(settings.path)
    dtype = resolve_dtype(settings.dtype, device)
    common = dict(
        dtype=dtype, attn_implementation=settings.attn_implementation, trust_remote_code=settings.trust_remote_code
    )
    if settings.random_init:
        if settings.method == "qlora":
            raise ConfigError(
                "model.random_init with method qlora: save the initialised model first "
                "(save_random_init) and load it quantised from there"
            )
        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=settings.trust_remote_code)
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, **common)
    elif settings.method == "qlora":
        from transformers import BitsAndBytesConfig

        quant = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype if dtype != torch.float16 else torch.float16,
        )
        model = AutoModelForCausalLM.from_pretrained(
            model_dir,
            quantization_config=quant,
            local_files_only=True,
            device_map={"": device.index or 0} if device.type == "cuda" else {"": "cpu"},
            **common,
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, **common)
    if settings.method != "qlora":  # bitsandbytes placed it already
        model.to(device)
    model.config.use_cache = False  # a cache in training ignores per-sample position restarts (packing)
    return model


def save_random_init(settings: ModelSettings, out: Path, seed: int) -> ModelSettings:
    """Write the seeded random initialisation of a random_init model to `out` (with its tokenizer) and return
    settings that load it from there: an adapter needs its base on disk for chat and merge, and QLoRA needs
    saved weights to quantise."""
    from xtune.io import write_atomically

    init = settings.model_copy(update={"method": "full"})
    model = load_base_model(init, torch.device("cpu"), seed)
    tokenizer = load_tokenizer(settings.path, settings.trust_remote_code)
    write_atomically(out, lambda tmp: (model.save_pretrained(tmp), tokenizer.save_pretrained(tmp)))
    return settings.model_copy(update={"path": str(out.resolve()), "random_init": False})


def attach_adapters(model: PreTrainedModel, settings: ModelSettings) -> PreTrainedModel:
    if settings.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if settings.method == "full":
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if settings.method == "qlora":
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=settings.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    lora = LoraConfig(
        r=settings.lora.r,
        lora_alpha=settings.lora.alpha,
        lora_dropout=settings.lora.dropout,
        target_modules=settings.lora.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def adapter_base_path(adapter_dir: Path) -> str:
    """The base model an adapter was trained on, from its adapter_config.json."""
    import json

    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    base = config.get("base_model_name_or_path")
    if not base:
        raise ConfigError(f"{adapter_dir}/adapter_config.json names no base model; pass the base model path")
    return base


def load_for_inference(
    model_path: str,
    adapter: str | None = None,
    bits: int | None = None,
    trust_remote_code: bool = False,
    device: torch.device | None = None,
    dtype: torch.dtype | str | None = None,
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase, Path]:
    """A model ready to chat: MODEL may be a full model directory or an adapter directory (its base is read
    from adapter_config.json). Returns the model, the tokenizer (the adapter's, which carries the training
    chat template, when it has one) and the directory whose xtune_config.yaml describes the training."""
    device = device or default_device()
    model_dir = resolve_model_dir(model_path)
    if adapter is None and (model_dir / "adapter_config.json").exists():
        adapter, model_dir = str(model_dir), resolve_model_dir(adapter_base_path(model_dir))
    adapter_dir = resolve_model_dir(adapter) if adapter else None
    kwargs: dict = dict(
        dtype=dtype or resolve_dtype("auto", device), trust_remote_code=trust_remote_code, local_files_only=True
    )
    if bits in (4, 8):
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = (
            BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=resolve_dtype("auto", device)
            )
            if bits == 4
            else BitsAndBytesConfig(load_in_8bit=True)
        )
        kwargs["device_map"] = {"": device.index or 0} if device.type == "cuda" else {"": "cpu"}
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    if bits not in (4, 8):
        model.to(device)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir)
    model.eval()
    source = adapter_dir or model_dir
    has_tokenizer = any((source / f).exists() for f in ("tokenizer.json", "tokenizer_config.json"))
    tokenizer = load_tokenizer(source if has_tokenizer else model_dir, trust_remote_code)
    return model, tokenizer, source
