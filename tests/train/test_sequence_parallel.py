"""Sequence parallelism trains what one process trains: 2 ranks sharing every row (sequence_parallel 2) log the
per-step losses of one process with the same global batch, for full and LoRA training, packed and padded rows,
DDP, FSDP2 and DeepSpeed ZeRO-3, with and without gradient checkpointing (one torchrun for all cases); what it
cannot do is refused before anything is loaded."""

import re
import subprocess
import sys
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import MistralConfig, MistralForCausalLM

from xtune.config import resolve_config
from xtune.config.presets import get_preset, merge
from xtune.config.schema import validate_config
from xtune.data.packing import Row, collate
from xtune.errors import ConfigError
from xtune.multimodal.train import task_for
from xtune.train import recipe
from xtune.train.distributed import World
from xtune.train.sequence_parallel import SequenceParallel

from .conftest import losses
from .sequence_parallel_worker import CASES, case_config, train

WORKER = Path(__file__).with_name("sequence_parallel_worker.py")


@pytest.fixture(scope="module")
def sp_runs(tmp_path_factory, cache_dir, xtune_env):
    root = tmp_path_factory.mktemp("sp")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", str(WORKER)]
    result = subprocess.run(
        [*command, str(root), str(cache_dir)], capture_output=True, text=True, timeout=300, env=xtune_env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return root


@pytest.mark.parametrize("name", CASES)
def test_sequence_parallel_reproduces_single_process_losses(sp_runs, name, tmp_path, cache_dir):
    train(case_config(name, 1, cache_dir), tmp_path)
    single, parallel = losses(tmp_path), losses(sp_runs / name)
    assert len(parallel) == 5 and parallel == pytest.approx(single, abs=1e-4)
    assert single[0] != pytest.approx(single[-1], abs=1e-3)  # it trained


@pytest.mark.parametrize(
    ("update", "size", "message"),
    [
        ({}, 3, "3 process(es) do not split into groups of 2"),
        ({"compile": True}, 2, "not supported with training.compile"),
    ],
)
def test_sequence_parallel_refuses_what_it_cannot_train(monkeypatch, tmp_path, update, size, message):
    monkeypatch.setattr(recipe, "init_world", lambda: World(rank=0, size=size))
    raw = merge(get_preset("tiny_assistant_lora"), {"training": {"sequence_parallel": 2, **update}})
    with pytest.raises(ConfigError, match=re.escape(message)):
        recipe.FinetuneRecipe(validate_config(raw), tmp_path).setup()
    assert not tmp_path.joinpath("train.log").exists()


def test_sequence_parallel_refuses_llava(monkeypatch, tmp_path):
    monkeypatch.setattr(recipe, "init_world", lambda: World(rank=0, size=2))
    cfg = validate_config(merge(get_preset("tiny_llava_pretrain"), {"training": {"sequence_parallel": 2}}))
    with pytest.raises(ConfigError, match=r"LLaVA \(model.vision\) is not supported with sequence parallelism"):
        recipe.FinetuneRecipe(cfg, tmp_path, task=task_for(cfg)).setup()


def test_sp_name_option_is_the_preset_with_sequences_split():
    for base in ("tiny_assistant_full", "internlm2_chat_7b_qlora_alpaca_e1_gpu8"):  # a listed name, a v0 name
        cfg, name = resolve_config(f"{base}_sp4")
        assert name == f"{base}_sp4" and cfg.training.sequence_parallel == 4
        assert cfg.model_dump() == merge(resolve_config(base)[0].model_dump(), {"training": {"sequence_parallel": 4}})
    with pytest.raises(ConfigError, match="neither a config file nor a preset name"):
        resolve_config("tiny_assistant_nothing_sp2")


def test_sequence_parallel_refuses_a_sliding_window_shorter_than_the_rows():
    config = MistralConfig(hidden_size=64, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    config.num_key_value_heads, config.sliding_window = 2, 512
    model = MistralForCausalLM(config)
    with pytest.raises(ConfigError, match="mistral attends within a sliding window of 512 tokens"):
        SequenceParallel(size=2).attach(model, max_length=1024)


def stub_recipe(sp: SequenceParallel, rows: list[Row]) -> recipe.FinetuneRecipe:
    """A recipe with what micro_batches reads, and no model."""
    stub = recipe.FinetuneRecipe.__new__(recipe.FinetuneRecipe)
    stub.cfg = validate_config(merge(get_preset("tiny_assistant_full"), {"training": {"batch_size": 2}}))
    stub.data, stub.collate = SimpleNamespace(rows=rows), partial(collate, pad_token_id=0)
    stub.batches_per_epoch, stub.sequence_parallel = len(rows) // 2, sp
    return stub


def test_the_ranks_of_a_group_share_each_micro_batch_and_resume_where_they_stopped():
    # 4 ranks in 2 groups of 2: group g reads what data rank g of 2 reads without sequence parallelism, each rank
    # its half of each row, targets shifted before the cut; a resumed stream goes on with the same batches.
    lengths = [5, 8, 3, 7, 6, 9, 4, 5]
    rows = [Row(list(range(10, 10 + n)), [-100, *range(11, 10 + n)], list(range(n))) for n in lengths]
    for data_rank in range(2):
        plain = stub_recipe(SequenceParallel(data_rank=data_rank, data_size=2), rows).micro_batches(0)
        groups = [stub_recipe(SequenceParallel(2, r, data_rank, 2), rows).micro_batches(0) for r in range(2)]
        resumed = [stub_recipe(SequenceParallel(2, r, data_rank, 2), rows).micro_batches(4) for r in range(2)]
        for index in range(6):  # past the end of the first epoch (4 batches, 2 per data rank)
            whole, real = next(plain)
            halves = [next(g) for g in groups]
            if index >= 2:
                assert all(
                    torch.equal(next(r)[0]["input_ids"], h[0]["input_ids"])
                    for r, h in zip(resumed, halves, strict=True)
                )
            assert sum(n for _, n in halves) == real
            joined = {k: torch.cat([h[0][k] for h in halves], dim=1) for k in halves[0][0]}
            width = whole["input_ids"].shape[1]
            assert joined["input_ids"].shape[1] in (width, width + 1)  # padded to a multiple of 2
            assert torch.equal(joined["input_ids"][:, :width], whole["input_ids"])
            assert torch.equal(joined["shift_labels"][:, : width - 1], whole["labels"][:, 1:])
            assert (joined["shift_labels"][:, width - 1 :] == -100).all()
            assert torch.equal(joined["position_ids"][:, :width], whole["position_ids"])
