"""Tasks: what a batch is and how the model is built and saved. TextTask trains a language model on text; a task
with images beside the text lives in xtune.multimodal, a layer above this one, and is handed to the recipe by its
caller (xtune.multimodal.train.task_for). The recipe runs either the same way: a batch is a dict of tensors whose
`labels` say what is trained, and every other entry goes to the model as it is."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from xtune.config.schema import Config, DatasetSettings
from xtune.data.formats import MapFn
from xtune.data.packing import Row, collate, needs_flat_batches
from xtune.errors import ConfigError
from xtune.model_dirs import resolve_model_dir
from xtune.models.checkpoint_files import write_weight_index
from xtune.models.export import merge_adapter
from xtune.models.load import (
    adapter_base_path,
    attach_adapters,
    base_reference,
    fit_embeddings,
    load_base_model,
    load_tokenizer,
    save_random_init,
    with_score_head,
)
from xtune.train.distributed import World, main_first


class TextTask:
    """A causal language model (full, LoRA or QLoRA) trained on tokenized text."""

    # Each dataset's map function where the formats need settings; None: each format's own.
    map_fn_of: Callable[[DatasetSettings], MapFn] | None = None

    def __init__(self, cfg: Config, work_dir: Path, world: World):
        if cfg.model.vision is not None and type(self) is TextTask:
            raise ConfigError(
                "model.vision is set: the config trains on images too, which xtune.multimodal's task does; "
                "`xtune train` chooses it (in Python: FinetuneRecipe(cfg, work_dir, task=task_for(cfg)))"
            )
        self.cfg, self.work_dir, self.world = cfg, work_dir, world

    def tokenizer(self) -> PreTrainedTokenizerBase:
        m = self.cfg.model
        return load_tokenizer(m.path, m.trust_remote_code, m.add_special_tokens)

    def model(
        self, tokenizer: PreTrainedTokenizerBase, device: torch.device, compute_dtype: torch.dtype | None
    ) -> torch.nn.Module:
        """The LLM to train: loaded (or randomly initialised, saved as the adapter's base) with its adapters."""
        cfg, world = self.cfg, self.world
        model_settings = cfg.model
        if model_settings.random_init and model_settings.method != "full":
            base_dir = self.work_dir / "base_model"
            with main_first(world):
                if world.is_main:
                    save_random_init(model_settings, base_dir, cfg.training.seed)
            model_settings = model_settings.model_copy(update={"path": str(base_dir.resolve()), "random_init": False})
        elif (resolve_model_dir(model_settings.path) / "adapter_config.json").is_file():
            # An adapter from an earlier run (SFT before DPO): its merged model is the base, and the reference.
            adapter_dir = resolve_model_dir(model_settings.path)
            base_dir = self.work_dir / "base_model"
            with main_first(world):
                if world.is_main:
                    merge_adapter(adapter_base_path(adapter_dir), str(adapter_dir), base_dir)
            model_settings = model_settings.model_copy(update={"path": str(base_dir.resolve())})
        base = load_base_model(model_settings, device, cfg.training.seed, compute_dtype)
        grown = fit_embeddings(base, tokenizer)
        # new tokens need trained rows whether the embedding grew or already had spare (untrained) rows for them
        train_embeddings = grown or bool(cfg.model.add_special_tokens)
        if cfg.training.objective == "reward":  # a scalar head on the decoder: a reward model
            scorer = with_score_head(base, tokenizer.pad_token_id)
            return attach_adapters(scorer, cfg.model, train_embeddings=train_embeddings, task_type="SEQ_CLS")
        return attach_adapters(base, cfg.model, train_embeddings=train_embeddings)

    def describe_sample(self, input_ids: Sequence[int], tokenizer: PreTrainedTokenizerBase) -> str:
        """A line about a sample's inputs beyond its text, for log-dataset ('' for text)."""
        return ""

    def collator(
        self, tokenizer: PreTrainedTokenizerBase, model: torch.nn.Module
    ) -> Callable[[Sequence[Row]], dict[str, torch.Tensor]]:
        return partial(collate, pad_token_id=tokenizer.pad_token_id, flatten=needs_flat_batches(model))

    def write_checkpoint_files(self, model: torch.nn.Module, out: Path, tokenizer: PreTrainedTokenizerBase) -> None:
        """The model's small files that make a checkpoint usable as final/ is, beside its trainable.safetensors:
        never a second copy of the weights."""
        if not write_adapter_configs(model, out):  # a full fine-tune: the checkpoint holds every parameter
            model.config.save_pretrained(out)
            if getattr(model, "generation_config", None) is not None:  # a reward model generates nothing
                model.generation_config.save_pretrained(out)
            write_weight_index(out, model)

    def save(
        self,
        model: torch.nn.Module,
        out: Path,
        tokenizer: PreTrainedTokenizerBase,
        state_dict: dict[str, torch.Tensor] | None,
    ) -> str:
        """Write the trained weights (`state_dict`: gathered by a sharding engine; None: the model's own) into final/'s
        temporary `out`; what was saved, for the log."""
        if hasattr(model, "peft_config"):
            # A grown embedding and head are in modules_to_save already; PEFT's default ("auto": the vocabulary
            # changed) would add the untrained resized originals and a second copy of each, 3x the bytes.
            model.save_pretrained(out, save_embedding_layers=False, state_dict=state_dict)
            return "adapter"
        model.save_pretrained(out, state_dict=state_dict)
        return "model"


def point_adapters_at_base(model: torch.nn.Module, work_dir: Path) -> None:
    """Make adapter_config.json of final/ and each checkpoint-N/ (a sibling of final/) name the base model as seen
    from there."""
    for adapter in getattr(model, "peft_config", {}).values():
        if base := adapter.base_model_name_or_path:
            adapter.base_model_name_or_path = base_reference(base, work_dir / "final", work_dir)


def write_adapter_configs(model: torch.nn.Module, out: Path) -> bool:
    """adapter_config.json as PEFT writes it into final/; False where the model has no adapter."""
    if not hasattr(model, "peft_config"):
        return False
    for adapter in model.peft_config.values():
        adapter = copy.copy(adapter)
        adapter.inference_mode = True
        adapter.save_pretrained(out)
    return True
