"""Multi-process training over gloo on CPU: 2 processes reproduce the losses of 1 process with the same global
batch (the reference), and what they export loads and matches."""

import json

import pytest
from peft import PeftModel
from torch.distributed.checkpoint import FileSystemReader
from transformers import AutoModelForCausalLM

from xtune.config.presets import get_preset, merge
from xtune.config.schema import validate_config
from xtune.errors import ConfigError
from xtune.multimodal.train import task_for
from xtune.train import recipe
from xtune.train.distributed import World

from .conftest import load_base, logits, losses, xtune_train


@pytest.fixture(scope="module")
def runs(tmp_path_factory, single_process_run):
    root = tmp_path_factory.mktemp("dist")
    xtune_train("tiny_assistant_lora", root / "lora_ddp", nproc=2)
    xtune_train("tiny_assistant_full", root / "full_fsdp", "--fsdp", nproc=2)
    xtune_train("tiny_assistant_lora", root / "lora_fsdp", "--fsdp", nproc=2)
    return {
        "lora_single": single_process_run("tiny_assistant_lora"),
        "lora_ddp": root / "lora_ddp",
        "full_single": single_process_run("tiny_assistant_full"),
        "full_fsdp": root / "full_fsdp",
        "lora_fsdp": root / "lora_fsdp",
    }


def adapter_logits(work_dir):
    return logits(PeftModel.from_pretrained(load_base(work_dir / "base_model", quantized=False), work_dir / "final"))


def test_ddp_lora_reproduces_single_process_losses_and_adapter(runs):
    single, ddp = losses(runs["lora_single"]), losses(runs["lora_ddp"])
    assert len(ddp) == 4 and ddp == pytest.approx(single, abs=1e-4)
    assert single[0] != pytest.approx(single[-1], abs=1e-3)  # it trained
    assert (adapter_logits(runs["lora_single"]) - adapter_logits(runs["lora_ddp"])).abs().max() < 1e-4


def test_fsdp_full_reproduces_single_process_losses_and_exports_a_consolidated_model(runs):
    single, fsdp = losses(runs["full_single"]), losses(runs["full_fsdp"])
    assert len(fsdp) == 4 and fsdp == pytest.approx(single, abs=1e-4)
    exported = AutoModelForCausalLM.from_pretrained(runs["full_fsdp"] / "final")
    reference = AutoModelForCausalLM.from_pretrained(runs["full_single"] / "final")
    assert (logits(exported) - logits(reference)).abs().max() < 1e-4
    checkpoint = runs["full_fsdp"] / "checkpoint-2"
    assert (checkpoint / "sharded").is_dir() and json.loads((checkpoint / "trainer_state.json").read_text())[
        "world_size"
    ] == 2


def test_fsdp_resumes_from_its_sharded_checkpoint(runs, tmp_path):
    resumed = tmp_path / "resumed"
    xtune_train("tiny_assistant_full", resumed, "--fsdp", "--resume", str(runs["full_fsdp"] / "checkpoint-2"), nproc=2)
    assert losses(resumed) == pytest.approx(losses(runs["full_fsdp"])[2:], abs=1e-5)


def test_fsdp_lora_reproduces_single_process_losses_and_saves_the_adapter_alone(runs):
    # Rank 0 alone draws the random_init base, so each rank drew different LoRA A matrices; FSDP2 trained a mix of
    # their shards (grad norm 4.92 vs 4.63 at step 1) until wrap broadcast rank 0's weights first.
    single, fsdp = losses(runs["lora_single"]), losses(runs["lora_fsdp"])
    assert len(fsdp) == 4 and fsdp == pytest.approx(single, abs=1e-4)
    assert (adapter_logits(runs["lora_single"]) - adapter_logits(runs["lora_fsdp"])).abs().max() < 1e-5
    saved = FileSystemReader(runs["lora_fsdp"] / "checkpoint-2" / "sharded").read_metadata().state_dict_metadata
    weights = [k for k in saved if k.startswith("model.")]
    assert weights and all(".lora_" in k for k in weights)  # the checkpoint skips the frozen base


LLAVA_STAGES = [("tiny_llava_pretrain", "frozen"), ("tiny_llava_lora_finetune", "lora")]


@pytest.mark.parametrize(("preset", "method"), LLAVA_STAGES)
def test_fsdp_refuses_llava_adapter_stages_clearly(monkeypatch, tmp_path, preset, method):
    # stage 1 would write its projector from FSDP2's shards; refused before any process group is needed
    monkeypatch.setattr(recipe, "init_world", lambda: World(rank=0, size=2))
    cfg = validate_config(merge(get_preset(preset), {"training": {"engine": "fsdp"}}))
    with pytest.raises(ConfigError, match=f"--fsdp does not support LLaVA's {method} stage"):
        recipe.FinetuneRecipe(cfg, tmp_path, task=task_for(cfg)).setup()
