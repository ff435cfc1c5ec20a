"""xtune: fine-tune large language models with one config file."""

__version__ = "0.1.0"
