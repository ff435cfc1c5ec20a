"""Shared fixtures: the tokenizer shipped with xtune, private caches for every test session, one torch thread."""

from pathlib import Path

import datasets
import pytest
import torch
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


@pytest.fixture(scope="session", autouse=True)
def _xtune_cache(tmp_path_factory):
    """Tokenized-data caches go to a temporary folder, not the user's ~/.cache/xtune."""
    mp = pytest.MonkeyPatch()
    mp.setenv("XTUNE_CACHE", str(tmp_path_factory.mktemp("xtune_cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """The tiny test models train fastest on one thread (measured: two threads were several times slower on a
    loaded 2-core machine); subprocesses get OMP_NUM_THREADS=1 from the test helpers that start them."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
