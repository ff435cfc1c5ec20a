"""The LLaVA model: a CLIP/SigLIP vision encoder, a Linear-GELU-Linear projector and an LLM, as transformers'
own `LlavaForConditionalGeneration`, so that what xtune trains and exports is the standard Hugging Face LLaVA
format that transformers and serving stacks load without xtune.

Training first assembles the base model once into `work_dir/base_model` (vision encoder + LLM, InternLM2
converted to Llama, the projector initialised or loaded from stage 1) and loads it from there like any checkpoint:
quantised for QLoRA, and as the base that adapters, chat and merge refer to.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AutoConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PretrainedConfig,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.modeling_auto import MODEL_MAPPING
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from xtune.config.schema import ModelSettings, VisionSettings
from xtune.errors import ConfigError
from xtune.io import write_atomically
from xtune.models.load import (
    attach_adapters,
    causal_lm,
    causal_lm_from_pretrained,
    fit_embeddings,
    load_base_model,
    load_tokenizer,
    quantization_kwargs,
    resolve_base,
    resolve_dtype,
    resolve_model_dir,
)

PROJECTOR_FILE = "projector.safetensors"
BASE_FILE = "xtune_base.json"  # in a base_model directory: what it was assembled from
# Never quantised: the vision encoder and projector are small, and the head must stay exact.
# Processor files written next to every trained model and export, so AutoProcessor loads them.
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
VISION_USE = "set model.vision.path to it (--set model.vision.path={dir})"  # see resolve_model_dir

BASE_POINTER = "xtune_llava.json"  # in a stage-1 output: the base model its projector belongs to
IMAGE_TOKEN = "<image>"  # where a sample's image features go; LLaVA's image_token


def vision_config(settings: VisionSettings) -> PretrainedConfig:
    """The vision encoder's config; of a full CLIP/SigLIP directory (text tower too), its vision half."""
    config = AutoConfig.from_pretrained(resolve_model_dir(settings.path, VISION_USE), local_files_only=True)
    return getattr(config, "vision_config", config)


def select_strategy(settings: VisionSettings, config: PretrainedConfig) -> str:
    return settings.select_strategy or ("full" if "siglip" in config.model_type else "default")


def image_token_count(settings: VisionSettings) -> int:
    """Image tokens per image: one per patch, plus CLIP's CLS token unless the `default` strategy drops it."""
    config = vision_config(settings)
    has_cls = config.model_type.startswith("clip")
    return (config.image_size // config.patch_size) ** 2 + has_cls - (select_strategy(settings, config) == "default")


def multimodal_tokenizer(settings: ModelSettings) -> PreTrainedTokenizerBase:
    """The LLM's tokenizer with the image token added (its embedding row is replaced by image features)."""
    return load_tokenizer(settings.path, settings.trust_remote_code, [*settings.add_special_tokens, IMAGE_TOKEN])


def image_processor(settings: VisionSettings, pad_to_square: bool) -> LlavaImageProcessorPil:
    """LLaVA's image processor with the vision encoder's sizes and normalisation; `do_pad` pads to square with
    the mean colour first. Saved with the model, so plain transformers preprocesses exactly as training did."""
    from transformers import AutoImageProcessor

    vision_dir = resolve_model_dir(settings.path, VISION_USE)
    if not (vision_dir / "preprocessor_config.json").exists():
        raise ConfigError(f"{vision_dir} has no preprocessor_config.json; copy the vision encoder's processor there")
    source = AutoImageProcessor.from_pretrained(vision_dir, local_files_only=True).to_dict()
    keys = ("size", "crop_size", "do_resize", "do_center_crop", "resample", "do_rescale", "rescale_factor")
    keys += ("do_normalize", "image_mean", "image_std", "do_convert_rgb")
    return LlavaImageProcessorPil(**{k: source[k] for k in keys if source.get(k) is not None}, do_pad=pad_to_square)


def _vision_encoder(settings: VisionSettings, seed: int) -> torch.nn.Module:
    config = vision_config(settings)
    model_class = MODEL_MAPPING[type(config)]  # CLIPVisionModel, SiglipVisionModel, ...
    if settings.random_init:
        torch.manual_seed(seed)
        return model_class(config)
    return model_class.from_pretrained(
        resolve_model_dir(settings.path, VISION_USE), config=config, dtype="auto", local_files_only=True
    )


def build_base(settings: ModelSettings, tokenizer: PreTrainedTokenizerBase, out: Path, seed: int) -> Path:
    """Assemble vision encoder + projector + LLM into a Hugging Face LLaVA directory at `out` (reused when it
    was assembled from the same parts). Stage 2 starts from stage 1's projector (vision.projector_path)."""
    vision = settings.vision
    spec = {"model": settings.model_dump(include={"path", "random_init", "vision"}), "seed": seed}
    if (out / BASE_FILE).exists() and json.loads((out / BASE_FILE).read_text()) == spec:
        return out
    if settings.random_init:
        init = settings.model_copy(update={"method": "full", "vision": None, "dtype": "float32"})
        text = load_base_model(init, torch.device("cpu"), seed)
    else:  # the checkpoint's own dtype: no upcast copy of a large LLM on disk
        text = causal_lm_from_pretrained(resolve_model_dir(settings.path), settings.trust_remote_code, dtype="auto")
    encoder = _vision_encoder(vision, seed)
    config = LlavaConfig(
        vision_config=encoder.config,
        text_config=text.config,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=image_token_count(vision),
        projector_hidden_act="gelu",
        vision_feature_layer=vision.feature_layer,
        vision_feature_select_strategy=select_strategy(vision, encoder.config),
        tie_word_embeddings=text.config.tie_word_embeddings,
    )
    with torch.device("meta"):  # a skeleton: its parts are the loaded models below
        llava = LlavaForConditionalGeneration(config)
    llava.model.vision_tower = encoder
    llava.model.language_model = getattr(text, text.base_model_prefix)
    llava.lm_head = text.get_output_embeddings()
    torch.manual_seed(seed)
    llava.model.multi_modal_projector = LlavaMultiModalProjector(config).to(text.dtype)
    llava.generation_config = text.generation_config
    if vision.projector_path:
        load_projector(llava, vision.projector_path)
    fit_embeddings(llava, tokenizer)  # a row for the image token
    llava.config.use_cache = True  # the saved model is for inference too

    def write(tmp: Path) -> None:
        llava.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / BASE_FILE).write_text(json.dumps(spec))

    return write_atomically(out, write)


def load_llava(
    model_dir: Path, settings: ModelSettings, device: torch.device, compute_dtype: torch.dtype | None = None
) -> LlavaForConditionalGeneration:
    """A LLaVA directory loaded for training: the LLM quantised to 4 bits for QLoRA (computing in `compute_dtype`,
    as load_base_model), the rest as is."""
    dtype = resolve_dtype(settings.dtype, device)
    quant = quantization_kwargs(4, device, compute_dtype or dtype) if settings.method == "qlora" else {}
    attn = None if settings.attn_implementation == "auto" else settings.attn_implementation
    model = causal_lm_from_pretrained(model_dir, dtype=dtype, attn_implementation=attn, **quant)
    if not quant:
        model.to(device)
    model.config.use_cache = model.config.text_config.use_cache = False  # see load_base_model
    return model


def prepare_for_training(model: LlavaForConditionalGeneration, settings: ModelSettings) -> torch.nn.Module:
    """What trains: `frozen` (stage 1) only the projector; `lora`/`qlora` (stage 2) the projector and LoRA on the
    LLM (and on the vision encoder with vision.lora); `full` the projector and the whole LLM. The vision encoder
    is never trained in full."""
    model.requires_grad_(False)
    if settings.method in ("frozen", "full"):
        if settings.gradient_checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.model.multi_modal_projector.requires_grad_(True)
        if settings.method == "full":
            model.model.language_model.requires_grad_(True)
            model.lm_head.requires_grad_(True)
        return model
    targets = lora_targets(model, settings)
    lora = settings.lora.model_copy(update={"target_modules": targets})
    return attach_adapters(
        model,
        settings.model_copy(update={"lora": lora}),
        train_embeddings=bool(settings.add_special_tokens),
        modules_to_save=["multi_modal_projector"],
    )


def lora_targets(model: LlavaForConditionalGeneration, settings: ModelSettings) -> list[str]:
    """Full names of the Linear layers LoRA adapts: the LLM's (those named in lora.target_modules, or all), and
    the vision encoder's with vision.lora. Never the projector, which trains in full."""
    wanted = settings.lora.target_modules
    roots = ("model.language_model.", *(("model.vision_tower.",) if settings.vision.lora else ()))
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
        and name.startswith(roots)
        and (wanted == "all-linear" or name.rsplit(".", 1)[-1] in wanted)
    ]


def projector_module(model: torch.nn.Module) -> torch.nn.Module:
    return causal_lm(model).model.multi_modal_projector


def save_projector(model: torch.nn.Module, out_dir: Path) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in projector_module(model).state_dict().items()}
    save_file(state, out_dir / PROJECTOR_FILE)


def projector_file(path: str | Path) -> Path:
    """The projector.safetensors of stage 1's output directory (or the file itself), which must exist."""
    path = Path(path).expanduser()
    file = path / PROJECTOR_FILE if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"model.vision.projector_path: {file} does not exist; point it at stage 1's output (final)")
    return file


def load_projector(model: torch.nn.Module, path: str | Path) -> None:
    """Stage 1's projector weights (its output directory or the projector.safetensors in it)."""
    file = projector_file(path)
    projector = projector_module(model)
    weights = load_file(file)
    expected = {k: tuple(v.shape) for k, v in projector.state_dict().items()}
    if {k: tuple(v.shape) for k, v in weights.items()} != expected:
        raise ConfigError(
            f"{file}: the projector's shapes { ({k: tuple(v.shape) for k, v in weights.items()}) } do not fit this "
            f"model's {expected}; stage 1 must use the same vision encoder and LLM"
        )
    projector.load_state_dict(weights)


def save_processor(out_dir: Path, processor: LlavaImageProcessorPil, tokenizer, config: LlavaConfig) -> None:
    """The LlavaProcessor files (image processor, processor config with the image token count), so that
    `AutoProcessor.from_pretrained(out_dir)` turns "<image>\\n..." into the prompts xtune trained on."""
    from transformers import LlavaProcessor

    vision = config.vision_config
    processor = LlavaProcessor(
        image_processor=processor,
        tokenizer=tokenizer,
        patch_size=vision.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        num_additional_image_tokens=int(vision.model_type.startswith("clip")),
        image_token=IMAGE_TOKEN,
        chat_template=tokenizer.chat_template,
    )
    processor.save_pretrained(out_dir)


def is_projector_dir(path: Path) -> bool:
    return (path / PROJECTOR_FILE).is_file() and (path / BASE_POINTER).is_file()


def projector_base(path: Path) -> str:
    return resolve_base(json.loads((path / BASE_POINTER).read_text())["base_model"], path)
