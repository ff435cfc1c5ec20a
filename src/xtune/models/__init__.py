"""Loading models and tokenizers from local directories, applying LoRA/QLoRA, merging and exporting."""

from xtune.models.load import attach_adapters, load_base_model, load_tokenizer, resolve_model_dir

__all__ = ["attach_adapters", "load_base_model", "load_tokenizer", "resolve_model_dir"]
