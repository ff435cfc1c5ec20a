"""The recipe's multimodal hooks: the model to train, how batches get their images, and what is saved."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from xtune.config.schema import Config
from xtune.models.load import base_reference, resolve_base
from xtune.multimodal.data import ImageCollator, map_fn_of
from xtune.multimodal.model import (
    PROJECTOR_FILE,
    build_base,
    image_processor,
    image_token_count,
    load_llava,
    prepare_for_training,
    save_processor,
    save_projector,
)
from xtune.train.distributed import World, main_first

BASE_POINTER = "xtune_llava.json"  # in a stage-1 output: the base model its projector belongs to


@dataclass
class MultimodalRun:
    cfg: Config
    work_dir: Path

    def __post_init__(self) -> None:
        vision = self.cfg.model.vision
        self.image_tokens = image_token_count(vision)
        self.image_processor = image_processor(vision, self.cfg.data.pad_image_to_square)
        self.base_dir = self.work_dir / "base_model"
        self.map_fn_of = map_fn_of(self.cfg, self.image_tokens)

    def model(
        self,
        tokenizer: PreTrainedTokenizerBase,
        device: torch.device,
        world: World,
        compute_dtype: torch.dtype | None = None,
    ) -> torch.nn.Module:
        with main_first(world):
            if world.is_main:
                build_base(self.cfg.model, tokenizer, self.base_dir, self.cfg.training.seed)
        llava = load_llava(self.base_dir.resolve(), self.cfg.model, device, compute_dtype)
        self.config = llava.config
        return prepare_for_training(llava, self.cfg.model)

    def collator(self, tokenizer: PreTrainedTokenizerBase) -> ImageCollator:
        return ImageCollator(self.image_processor, tokenizer.pad_token_id)

    def save(self, model: torch.nn.Module, out: Path, tokenizer: PreTrainedTokenizerBase, weights: bool = True) -> None:
        """Stage 1 (frozen) writes the projector and where its base is; other methods the adapter or model (the
        recipe does). Every output gets the processor files; a checkpoint (`weights` False) only them."""
        if self.cfg.model.method == "frozen" and weights:
            save_projector(model, out)
            base = base_reference(self.base_dir.resolve(), out, self.work_dir)  # `out` is final/'s temporary sibling
            (out / BASE_POINTER).write_text(json.dumps({"base_model": base}))
        save_processor(out, self.image_processor, tokenizer, self.config)


def is_projector_dir(path: Path) -> bool:
    return (path / PROJECTOR_FILE).is_file() and (path / BASE_POINTER).is_file()


def projector_base(path: Path) -> str:
    return resolve_base(json.loads((path / BASE_POINTER).read_text())["base_model"], path)
