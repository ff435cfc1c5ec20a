"""Shared fixtures: the tokenizer shipped with xtune, private caches for every test session, one torch thread."""

import os
import sys
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


@pytest.fixture(scope="module")
def learning_threads():
    """Two torch threads for a module whose fixture trains in-process for hundreds of steps: there one thread leaves
    half of a 2-core machine idle (100 steps of the tool-use run: 42 s on two threads, 77 s on one). pytest runs
    the modules one at a time, so nothing of the suite competes for the cores meanwhile."""
    before = torch.get_num_threads()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def one_layer_model_dir(tmp_path_factory) -> Path:
    """A complete model directory (weights, config, tokenizer) of the tiny Llama with one layer, random weights:
    for tests that load a model the way users do, without training one. Read-only: copy it to change it."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = tmp_path_factory.mktemp("one_layer") / "tiny-llama"
    config = AutoConfig.from_pretrained(TINY_LLAMA)
    config.num_hidden_layers = 1
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(path)
    AutoTokenizer.from_pretrained(TINY_LLAMA).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def save_trained_adapter():
    """save(base, base_dir, adapter_dir, template, config_yaml): a rank-4 LoRA adapter on every linear layer of `base`
    (a model saved in base_dir with its tokenizer) with random non-zero B, so that merging it changes the weights,
    saved the way training saves final/: the tokenizer with the chat template, and xtune_config.yaml."""
    from peft import LoraConfig, get_peft_model

    from xtune.templates import get_template

    def save(base, base_dir: Path, adapter_dir: Path, template: str, config_yaml: str) -> None:
        lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
        model = get_peft_model(base, lora)
        model.peft_config["default"].base_model_name_or_path = str(base_dir)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.05)
        model.save_pretrained(adapter_dir)
        tokenizer = AutoTokenizer.from_pretrained(base_dir)
        tokenizer.chat_template = get_template(template).to_jinja()
        tokenizer.save_pretrained(adapter_dir)
        (adapter_dir / "xtune_config.yaml").write_text(config_yaml)

    return save


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("xtune_cache")


@pytest.fixture(scope="session")
def xtune_env(cache_dir) -> dict[str, str]:
    """Environment for `python -m xtune.cli` subprocesses. One thread: the tiny model gains nothing from more, and
    on a busy machine OpenMP threads spinning against other processes make runs several times slower."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", XTUNE_CACHE=str(cache_dir))
    env["HF_DATASETS_CACHE"] = str(cache_dir / "hf_datasets")
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


@pytest.fixture(scope="session")
def xtune_cmd() -> list[str]:
    return [sys.executable, "-m", "xtune.cli"]
