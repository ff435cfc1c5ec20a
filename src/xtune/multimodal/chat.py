"""Chatting about images: loading any LLaVA output (stage 1 projector, stage 2 adapter, merged directory) and a
session whose first user turn carries the images, as in training."""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoProcessor, PreTrainedTokenizerBase

from xtune.chat.generate import GenerationSettings
from xtune.chat.session import ChatSession
from xtune.errors import ConfigError
from xtune.models.llava import is_projector_dir, load_projector, projector_base
from xtune.models.load import ARGUMENT_USE, causal_lm, load_for_inference, load_tokenizer, resolve_model_dir
from xtune.multimodal.data import image_prompt, load_image
from xtune.templates import ChatTemplate


def load_llava_for_inference(
    model_path: str,
    adapter: str | None = None,
    bits: int | None = None,
    trust_remote_code: bool = False,
    device: torch.device | None = None,
    dtype: torch.dtype | str | None = None,
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase, Path]:
    """load_for_inference, plus stage 1 outputs (a projector and the base it belongs to)."""
    model_dir = resolve_model_dir(model_path, ARGUMENT_USE)
    if adapter is None and is_projector_dir(model_dir):
        model, _, _ = load_for_inference(projector_base(model_dir), None, bits, trust_remote_code, device, dtype)
        load_projector(model, model_dir)
        return model, load_tokenizer(model_dir), model_dir
    return load_for_inference(model_path, adapter, bits, trust_remote_code, device, dtype)


def is_llava(model: torch.nn.Module) -> bool:
    return getattr(causal_lm(model).config, "model_type", None) == "llava"


class ImageChatSession(ChatSession):
    """A conversation about images: their tokens open the first user turn (where training put them), and their
    pixels go with every prompt, since each turn re-reads the whole history."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        template: ChatTemplate | None,
        settings: GenerationSettings,
        image_processor,
        system: str | None = None,
    ):
        super().__init__(model, tokenizer, template, settings, system)
        self.image_processor = image_processor
        self.image_tokens = causal_lm(model).config.image_seq_length
        self.pixel_values: torch.Tensor | None = None

    def set_images(self, images: list[Image.Image]) -> None:
        """Talk about these images from now on (the history starts over)."""
        self.reset()
        self.pixel_values = self.image_processor(images, return_tensors="pt")["pixel_values"] if images else None

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        if self.pixel_values is not None:
            first = messages[0]
            content = image_prompt(first["content"], self.image_tokens, len(self.pixel_values))
            messages = [{**first, "content": content}, *messages[1:]]
        return super().prompt_ids(messages)

    def model_inputs(self) -> dict[str, torch.Tensor] | None:
        return {"pixel_values": self.pixel_values} if self.pixel_values is not None else None


@functools.lru_cache(maxsize=4)  # a server opens a session per request
def image_processor(source: Path):
    try:
        return AutoProcessor.from_pretrained(source, local_files_only=True).image_processor
    except (OSError, ValueError) as e:
        message = f"{source}: no LLaVA processor files (processor_config.json) to read images with: {e}"
        raise ConfigError(message) from None


def image_session(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    template: ChatTemplate | None,
    settings: GenerationSettings,
    source: Path,
    images: list[str],
    system: str | None = None,
) -> ImageChatSession:
    """A session about `images` with the image processor saved in `source` (every xtune LLaVA output has it)."""
    if not is_llava(model):
        raise ConfigError(f"--image needs a LLaVA model (xtune.multimodal); {source} is a text-only model")
    session = ImageChatSession(model, tokenizer, template, settings, image_processor(source), system)
    session.set_images([load_image(str(Path(p).expanduser())) for p in images])
    return session
