"""Shared fixtures: the tokenizer shipped with xtune, and a private `datasets` cache for every test session."""

from pathlib import Path

import datasets
import pytest
from transformers import AutoTokenizer

TINY_LLAMA = Path(__file__).resolve().parents[1] / "src" / "xtune" / "assets" / "tiny-llama"


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """Byte-level BPE; specials <s> (bos), <|im_end|> (eos), <|endoftext|> (pad), <|im_start|>. Tests that change
    it (chat_template) must do so through monkeypatch."""
    return AutoTokenizer.from_pretrained(TINY_LLAMA)


@pytest.fixture(scope="session", autouse=True)
def _datasets_cache(tmp_path_factory):
    """`datasets.load_dataset` writes Arrow caches; keep them out of the user's ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf_datasets_cache"))
    yield
    mp.undo()
