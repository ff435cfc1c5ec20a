"""LLaVA as a training task: the model to train, how batches get their images, and what is saved."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from xtune.config.schema import Config
from xtune.errors import ConfigError
from xtune.models.llava import (
    BASE_POINTER,
    build_base,
    image_processor,
    image_token_count,
    load_llava,
    multimodal_tokenizer,
    prepare_for_training,
    projector_file,
    save_processor,
    save_projector,
)
from xtune.models.load import base_reference
from xtune.multimodal.data import ImageCollator, describe_image_tokens, map_fn_of
from xtune.train.distributed import World, main_first
from xtune.train.task import TextTask, write_adapter_configs


class LlavaTask(TextTask):
    """A LLaVA model (vision tower, projector, LLM) on image-text rows. Batches carry `pixel_values`, which the
    recipe hands to the model with the rest of the batch."""

    def __init__(self, cfg: Config, work_dir: Path, world: World):
        if world.distributed and cfg.training.engine == "fsdp" and cfg.model.method != "full":
            # Stage 1 writes its projector from the module itself, which FSDP2 leaves sharded; the LoRA stage with
            # a vision tower has not been checked against one process.
            raise ConfigError(
                f"--fsdp does not support LLaVA's {cfg.model.method} stage yet; train it on several processes with "
                "the default DDP engine or --deepspeed"
            )
        super().__init__(cfg, work_dir, world)
        vision = cfg.model.vision
        if vision.projector_path:  # before any work: stage 2 cannot start without stage 1's output
            projector_file(vision.projector_path)
        self.image_tokens = image_token_count(vision)
        self.image_processor = image_processor(vision, cfg.data.pad_image_to_square)
        self.base_dir = work_dir / "base_model"
        self.map_fn_of = map_fn_of(cfg, self.image_tokens)

    def tokenizer(self) -> PreTrainedTokenizerBase:
        return multimodal_tokenizer(self.cfg.model)

    def model(
        self, tokenizer: PreTrainedTokenizerBase, device: torch.device, compute_dtype: torch.dtype | None
    ) -> torch.nn.Module:
        with main_first(self.world):
            if self.world.is_main:
                build_base(self.cfg.model, tokenizer, self.base_dir, self.cfg.training.seed)
        llava = load_llava(self.base_dir.resolve(), self.cfg.model, device, compute_dtype)
        self.config = llava.config
        return prepare_for_training(llava, self.cfg.model)

    def describe_sample(self, input_ids: Sequence[int], tokenizer: PreTrainedTokenizerBase) -> str:
        return describe_image_tokens(input_ids, tokenizer)  # where the image features replace the image tokens

    def collator(self, tokenizer: PreTrainedTokenizerBase, model: torch.nn.Module) -> ImageCollator:
        return ImageCollator(self.image_processor, tokenizer.pad_token_id)

    def write_checkpoint_files(self, model: torch.nn.Module, out: Path, tokenizer: PreTrainedTokenizerBase) -> None:
        # A full fine-tune's checkpoint holds the weights but is not a LLaVA directory; stage 1 needs no files
        write_adapter_configs(model, out)
        if self.cfg.model.method != "frozen":
            save_processor(out, self.image_processor, tokenizer, self.config)

    def save(
        self,
        model: torch.nn.Module,
        out: Path,
        tokenizer: PreTrainedTokenizerBase,
        state_dict: dict[str, torch.Tensor] | None,
    ) -> str:
        """Stage 1 (frozen) writes the projector and where its base is; other methods the adapter or model. Every
        output gets the processor files."""
        if self.cfg.model.method == "frozen":
            save_projector(model, out)
            base = base_reference(self.base_dir.resolve(), out, self.work_dir)  # `out` is final/'s temporary sibling
            (out / BASE_POINTER).write_text(json.dumps({"base_model": base}))
            saved = "projector"
        else:
            saved = super().save(model, out, tokenizer, state_dict)
        save_processor(out, self.image_processor, tokenizer, self.config)
        return saved


def task_for(cfg: Config) -> type[TextTask]:
    """The task that trains `cfg`: images beside the text (model.vision) are LlavaTask's, text TextTask's."""
    return LlavaTask if cfg.model.vision is not None else TextTask
