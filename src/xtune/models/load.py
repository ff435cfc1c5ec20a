"""Model and tokenizer loading. Nothing here downloads: paths are local directories or the local HF cache."""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    LlavaForConditionalGeneration,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from xtune.config.schema import ModelSettings
from xtune.errors import ConfigError
from xtune.io import write_atomically
from xtune.model_dirs import ARGUMENT_USE, resolve_model_dir
from xtune.models.checkpoint_files import STATE_FILE, WEIGHTS_FILE, load_trainable
from xtune.models.internlm2 import (
    is_internlm2,
    llama_config_from_internlm2,
    load_internlm2_as_llama,
    load_internlm2_tokenizer,
    read_config,
)

# A LLaVA's parts kept in 16 bits when its LLM is quantised (matched from the start of a module name); here, not in
# llava.py, because loading any model directory may meet a LLaVA one
LLAVA_NOT_QUANTISED = ["model.vision_tower", "model.multi_modal_projector", "lm_head"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".index.json", ".h5", ".msgpack", ".pt", ".pth")


def check_model_dir(model_dir: Path, needs: str = "config") -> None:
    """Say what is wrong with a model directory before transformers fails on it with a bare ValueError, OSError
    or JSONDecodeError that names neither the directory nor the fix: an empty or wrong directory, a config.json
    that is not JSON, missing weights (an interrupted download). `needs`: "tokenizer" (its files, no config.json:
    an adapter's directory has none), "config" (a randomly initialised model) or "weights"."""
    fix = "copy or download the model again, or point model.path (or the MODEL argument) at another directory"
    problem = None
    config = model_dir / "config.json"
    if not any(model_dir.iterdir()):
        problem = "is empty"
    elif config.is_file():
        try:
            parsed = json.loads(config.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ConfigError(f"{config}:{e.lineno}: not valid JSON ({e.msg}); {fix}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"{config}: byte offset {e.start} is not UTF-8, so not JSON; {fix}") from None
        if not isinstance(parsed, dict):
            raise ConfigError(f"{config}: a JSON {type(parsed).__name__}, not the object of a model config; {fix}")
    elif needs != "tokenizer":
        problem = "has no config.json"
    if problem is None and needs == "tokenizer" and not any((model_dir / f).is_file() for f in TOKENIZER_FILES):
        problem = f"has no tokenizer files ({', '.join(TOKENIZER_FILES)})"
    has_weights = needs != "weights" or any(f.name.endswith(WEIGHT_SUFFIXES) for f in model_dir.iterdir())
    if problem is None and not has_weights:
        problem = "has no weights (model.safetensors, pytorch_model.bin, or their shards and index)"
    if problem is not None:
        raise ConfigError(
            f"model directory {model_dir} {problem}: a Hugging Face model directory holds config.json, the "
            f"tokenizer files and the weights; {fix}"
        )


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name != "auto":
        return DTYPES[name]
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


@contextlib.contextmanager
def _explain_remote_code(model_dir: Path, trust_remote_code: bool) -> Iterator[None]:
    """transformers refuses a directory whose config maps the model (or tokenizer) to Python files shipped with it
    (auto_map) unless trusted, with a multi-line message about `trust_remote_code=True` that names no xtune
    setting. Say which setting trusts it, and what trusting means."""
    try:
        yield
    except ValueError as exc:
        if trust_remote_code or "trust_remote_code" not in str(exc):
            raise
        raise ConfigError(
            f"{model_dir} needs remote code: its config names Python files shipped in that directory (auto_map), "
            "which loading it would import and run. Only if you trust that code: set model.trust_remote_code: "
            "true in the config, or pass --trust-remote-code to chat and convert merge"
        ) from exc


def _is_internlm2_dir(model_dir: Path) -> bool:
    return (model_dir / "config.json").exists() and is_internlm2(read_config(model_dir))


def causal_lm_from_pretrained(model_dir: Path, trust_remote_code: bool = False, **kwargs) -> PreTrainedModel:
    """transformers' AutoModelForCausalLM, except that InternLM2 checkpoints load natively into the Llama
    implementation: their remote modeling code breaks with each transformers release."""
    check_model_dir(model_dir, "weights")
    if _is_internlm2_dir(model_dir):
        model = load_internlm2_as_llama(model_dir, **kwargs)
    elif (model_dir / "config.json").exists() and read_config(model_dir).get("model_type") == "llava":
        if "quantization_config" in kwargs:  # the LLM only
            kwargs["quantization_config"].llm_int8_skip_modules = LLAVA_NOT_QUANTISED
        model = LlavaForConditionalGeneration.from_pretrained(model_dir, local_files_only=True, **kwargs)
    else:
        with _explain_remote_code(model_dir, trust_remote_code):
            model = AutoModelForCausalLM.from_pretrained(
                model_dir, trust_remote_code=trust_remote_code, local_files_only=True, **kwargs
            )
    if "quantization_config" in kwargs:
        release_checkpoint_mapping(model)
    return model


def release_checkpoint_mapping(model: torch.nn.Module) -> None:
    """Give the unquantised tensors of a quantised model (embeddings, norms, head) memory of their own.
    transformers loads them as views of the memory-mapped safetensors file, and while one view lives the whole
    mapping stays, with every page that quantisation read still resident: a 4-bit 374M-parameter model held
    1.3 GiB of its fp32 checkpoint this way (RSS 1.90 -> 0.99 GiB after this copy)."""
    for tensor in [*model.parameters(), *model.buffers()]:
        # the packed 4/8-bit weights are integer tensors of their own already; on a GPU nothing is a view of the file
        if tensor.is_floating_point() and tensor.device.type == "cpu":
            tensor.data = tensor.data.clone()


def model_config(model_dir: Path, trust_remote_code: bool = False) -> PretrainedConfig:
    if _is_internlm2_dir(model_dir):
        return llama_config_from_internlm2(read_config(model_dir))
    with _explain_remote_code(model_dir, trust_remote_code):
        return AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code, local_files_only=True)


def load_tokenizer(
    path: str | Path, trust_remote_code: bool = False, add_special_tokens: list[str] = ()
) -> PreTrainedTokenizerBase:
    model_dir = resolve_model_dir(str(path))
    check_model_dir(model_dir, "tokenizer")
    if _is_internlm2_dir(model_dir):
        tokenizer = load_internlm2_tokenizer(model_dir)
    else:
        with _explain_remote_code(model_dir, trust_remote_code):
            tokenizer = AutoTokenizer.from_pretrained(
                model_dir, trust_remote_code=trust_remote_code, local_files_only=True
            )
    new = [t for t in add_special_tokens if t not in tokenizer.get_vocab()]
    if new:
        tokenizer.add_special_tokens({"additional_special_tokens": new}, replace_extra_special_tokens=False)
    if tokenizer.pad_token is None:
        # Padding positions are never attended to (position-ids restart) nor trained, so any id will do.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


class _DropInputCastNotice(logging.Filter):
    """bitsandbytes' 8-bit matmul logs that it casts its input to float16 on every call of every layer (hundreds
    of lines interleaved with a streamed answer). On CPU xtune keeps the rest of an 8-bit model in float32
    deliberately (see inference_dtype): the cast is expected, and the notice says nothing to act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("MatMul8bitLt: inputs will be cast")


_INPUT_CAST_NOTICE = _DropInputCastNotice()


def inference_dtype(bits: int | None, device: torch.device) -> torch.dtype:
    """The dtype of an inference model's unquantised parts, which is also what its layers compute in. LLM.int8
    multiplies in float16, so a GPU 8-bit model computes in float16 throughout and nothing is cast per layer. On
    CPU, float32 for all: in one measurement on the project's CPU (no float16 arithmetic), float16 elsewhere in the
    tiny demo model made a short 8-bit answer 3x slower (1.5 s against 0.5 s; bfloat16 3.0 s)."""
    if bits == 8 and device.type == "cuda":
        return torch.float16
    return resolve_dtype("auto", device)


def quantization_kwargs(bits: int, device: torch.device, compute_dtype: torch.dtype) -> dict:
    """from_pretrained arguments for a bitsandbytes 4-bit (NF4, double quantisation: QLoRA's) or 8-bit base."""
    from transformers import BitsAndBytesConfig

    if bits == 4:
        quant = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
    elif bits == 8:
        quant = BitsAndBytesConfig(load_in_8bit=True)
        logging.getLogger("bitsandbytes.autograd._functions").addFilter(_INPUT_CAST_NOTICE)
    else:
        raise ConfigError(f"--bits {bits}: choose 4 or 8")
    return {
        "quantization_config": quant,
        "device_map": {"": device.index or 0} if device.type == "cuda" else {"": "cpu"},
    }


def load_base_model(
    settings: ModelSettings,
    device: torch.device | None = None,
    seed: int = 0,
    compute_dtype: torch.dtype | None = None,
) -> PreTrainedModel:
    """The model to train. QLoRA's 4-bit layers compute in `compute_dtype` (training's autocast dtype; default
    the model's dtype): autocast does not reach into bitsandbytes, which would otherwise run them in fp32 under
    bf16 autocast and keep fp32 activations."""
    device = device or default_device()
    model_dir = resolve_model_dir(settings.path)
    check_model_dir(model_dir)
    dtype = resolve_dtype(settings.dtype, device)
    attn = None if settings.attn_implementation == "auto" else settings.attn_implementation
    common = dict(dtype=dtype, attn_implementation=attn)
    if settings.random_init:
        if settings.method == "qlora":
            raise ConfigError(
                "model.random_init with method qlora: save the initialised model first "
                "(save_random_init) and load it quantised from there"
            )
        config = model_config(model_dir, settings.trust_remote_code)
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=settings.trust_remote_code, **common)
    else:
        quant = quantization_kwargs(4, device, compute_dtype or dtype) if settings.method == "qlora" else {}
        model = causal_lm_from_pretrained(model_dir, settings.trust_remote_code, **common, **quant)
    if settings.method != "qlora":  # bitsandbytes placed it already
        model.to(device)
    model.config.use_cache = False  # a cache in training ignores per-sample position restarts (packing)
    return model


def save_random_init(settings: ModelSettings, out: Path, seed: int) -> ModelSettings:
    """Write the seeded random initialisation of a random_init model to `out` (with its tokenizer) and return
    settings that load it from there: an adapter needs its base on disk for chat and merge, and QLoRA needs
    saved weights to quantise."""
    init = settings.model_copy(update={"method": "full"})
    model = load_base_model(init, torch.device("cpu"), seed)
    tokenizer = load_tokenizer(settings.path, settings.trust_remote_code)
    write_atomically(out, lambda tmp: (model.save_pretrained(tmp), tokenizer.save_pretrained(tmp)))
    return settings.model_copy(update={"path": str(out.resolve()), "random_init": False})


def fit_embeddings(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> bool:
    """Grow the embeddings (and head) when the tokenizer has tokens the model has no rows for; True if grown."""
    if len(tokenizer) <= model.get_input_embeddings().num_embeddings:
        return False
    model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)
    return True


def embedding_module_names(model: PreTrainedModel) -> list[str]:
    """Names (last component) of the input embedding and, unless tied to it, the output head."""
    embeddings = {id(model.get_input_embeddings())}
    head = model.get_output_embeddings()
    if head is not None and head.weight is not model.get_input_embeddings().weight:
        embeddings.add(id(head))
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if id(module) in embeddings})


def causal_lm(model: torch.nn.Module) -> PreTrainedModel:
    """The transformers CausalLM inside a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def with_score_head(lm: PreTrainedModel, pad_token_id: int | None) -> PreTrainedModel:
    """The CausalLM's decoder under a new scalar head, as transformers' AutoModelForSequenceClassification with one
    label (a reward model), so that its save loads back with that class. The decoder is moved over, not copied."""
    config = copy.deepcopy(lm.config)
    config.num_labels, config.pad_token_id, config.architectures = 1, pad_token_id, None
    with torch.device("meta"):  # the new model's own decoder is never allocated: the trained one replaces it
        model = AutoModelForSequenceClassification.from_config(config)
    setattr(model, model.base_model_prefix, lm.base_model)
    weight = next(lm.parameters())
    score = torch.nn.Linear(config.hidden_size, 1, bias=False, device=weight.device, dtype=lm.dtype)
    torch.nn.init.normal_(score.weight, std=getattr(config, "initializer_range", 0.02))
    model.score = score
    return model


def head_is_tied(model: PreTrainedModel) -> bool:
    head = model.get_output_embeddings()
    return head is not None and head.weight is model.get_input_embeddings().weight


def attach_adapters(
    model: PreTrainedModel,
    settings: ModelSettings,
    train_embeddings: bool = False,
    modules_to_save: list[str] = (),
    task_type: str = "CAUSAL_LM",
) -> PreTrainedModel:
    """LoRA/QLoRA adapters per the settings; with `train_embeddings` (new tokens) the embedding and head are
    trained in full and saved with the adapter, so the new rows are learned and survive a merge. Modules named
    in `modules_to_save` (LLaVA's projector) are also trained in full and saved with the adapter."""
    if settings.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if settings.method == "full":
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if settings.method == "qlora":
        # Checkpointing is on already (above): PEFT would turn it on again through transformers' deprecated
        # gradient_checkpointing_enable, which warns.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        # bitsandbytes repacks 4-bit weights in place for its CPU inference kernel (AVX512-BF16) on the first
        # eval-mode no-grad forward, and that kernel has no backward: after an evaluation, training would
        # silently lose every gradient through the quantized layers. Keep the trainable layout.
        for module in model.modules():
            if getattr(module, "support_avx512bf16_for_cpu", False):
                module.support_avx512bf16_for_cpu = False
    lora = LoraConfig(
        r=settings.lora.r,
        lora_alpha=settings.lora.alpha,
        lora_dropout=settings.lora.dropout,
        target_modules=settings.lora.target_modules,
        modules_to_save=[*(embedding_module_names(model) if train_embeddings else []), *modules_to_save] or None,
        # a tied head must use the trained copy of the embedding; otherwise it keeps the frozen rows (PEFT >= 0.18)
        ensure_weight_tying=train_embeddings and head_is_tied(model),
        task_type=task_type,  # SEQ_CLS (a reward model): PEFT trains and saves the score head in full
    )
    return get_peft_model(model, lora)


WORK_DIR_BASE = "base_model"  # a base that training writes into the work dir (random_init, LLaVA's assembled model)


def adapter_base_path(adapter_dir: Path) -> str:
    """The base model an adapter was trained on, from its adapter_config.json (see resolve_base)."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    base = config.get("base_model_name_or_path")
    if not base:
        raise ConfigError(
            f"{adapter_dir}/adapter_config.json names no base model (base_model_name_or_path); name it yourself: "
            f"xtune chat BASE --adapter {adapter_dir}"
        )
    return resolve_base(base, adapter_dir)


def base_reference(base: str | Path, out_dir: Path, work_dir: Path) -> str:
    """How an output in `out_dir` records its base: relative to it (`../base_model`) when both lie in `work_dir`, so
    that the work dir can be moved or copied whole; otherwise as given."""
    path, work_dir = Path(base), work_dir.resolve()
    if path.is_absolute() and path.resolve().is_relative_to(work_dir) and out_dir.resolve().is_relative_to(work_dir):
        return os.path.relpath(path.resolve(), out_dir.resolve())
    return str(base)


def resolve_base(recorded: str, adapter_dir: Path) -> str:
    """The base an output in `adapter_dir` recorded (base_reference). A relative path is read from `adapter_dir`;
    PEFT itself reads one from the current directory, so a relative path found there is kept too (a repo id as well).
    An absolute `.../base_model` that no longer exists was the work dir's own base: a moved work dir has it beside."""
    path = Path(recorded).expanduser()
    if not path.is_absolute():
        beside = adapter_dir / path
        return str(beside.resolve()) if beside.is_dir() else recorded
    moved = adapter_dir.resolve().parent / WORK_DIR_BASE
    if not path.exists() and path.name == WORK_DIR_BASE and moved.is_dir():
        return str(moved)
    return recorded


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
    model_dir = resolve_model_dir(model_path, ARGUMENT_USE)
    check_checkpoint_dir(model_dir)
    if adapter is None and (model_dir / "adapter_config.json").exists():
        try:
            base_dir = resolve_model_dir(adapter_base_path(model_dir), ARGUMENT_USE)
        except ConfigError as e:  # the path came from the adapter, not from the user: say so, and how to override it
            raise ConfigError(
                f"{model_dir / 'adapter_config.json'} names the base model: {e}; or name the base yourself: "
                f"xtune chat BASE --adapter {model_dir}"
            ) from None
        adapter, model_dir = str(model_dir), base_dir
    adapter_dir = resolve_model_dir(adapter, ARGUMENT_USE) if adapter else None
    if adapter_dir is not None:
        check_checkpoint_dir(adapter_dir)
    source = adapter_dir or model_dir
    has_tokenizer = any((source / f).exists() for f in ("tokenizer.json", "tokenizer_config.json"))
    tokenizer = load_tokenizer(source if has_tokenizer else model_dir, trust_remote_code)
    dtype = dtype or inference_dtype(bits, device)
    quant = quantization_kwargs(bits, device, dtype) if bits else {}
    model = causal_lm_from_pretrained(model_dir, trust_remote_code, dtype=dtype, **quant)
    if not bits:
        model.to(device)
    if adapter_dir is not None:
        fit_embeddings(model, tokenizer)  # the adapter was trained with added tokens: its rows need a home
        model = _load_adapter(model, adapter_dir)
    model.eval()
    return model, tokenizer, source


def _load_adapter(model: PreTrainedModel, adapter_dir: Path) -> torch.nn.Module:
    """The adapter in `adapter_dir` on `model`: a saved PEFT adapter, or a training checkpoint's LoRA weights, which
    keep the names they have in the model (see xtune.train.checkpoint)."""
    from peft import PeftConfig, PeftModel, get_peft_model

    if not (adapter_dir / WEIGHTS_FILE).is_file():
        return PeftModel.from_pretrained(model, adapter_dir)
    config = PeftConfig.from_pretrained(adapter_dir)
    config.inference_mode = False  # as in training, so that the trainable parameters are the ones the file holds
    model = get_peft_model(model, config)
    load_trainable(adapter_dir, model, "its adapter_config.json does not describe the adapter it holds")
    model.requires_grad_(False)
    return model


def check_checkpoint_dir(path: Path) -> None:
    """A training checkpoint (checkpoint-N) is usable as final/ is when it carries the files final/ has beside the
    weights; say what to do with the ones that do not: sharded ones (FSDP2, DeepSpeed) and those of an older xtune."""
    if not (path / STATE_FILE).is_file():
        return
    fix = "use the run's final/, or `xtune train --resume` the run to its end, which writes final/"
    if not (path / WEIGHTS_FILE).is_file():
        raise ConfigError(f"{path} is a sharded checkpoint (FSDP2 or DeepSpeed), which only --resume reads; {fix}")
    if not any((path / name).is_file() for name in ("adapter_config.json", "config.json")):
        raise ConfigError(
            f"{path} has no adapter_config.json or config.json (a LLaVA projector or full checkpoint, or one written "
            f"by an older xtune), so it cannot be loaded on its own; {fix}"
        )
