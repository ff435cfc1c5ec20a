"""What a run leaves behind is usable wherever it goes: every checkpoint-N loads as final/ does (chat, convert merge,
and `convert checkpoint`/`pth_to_hf` for a standalone copy), and a work dir whose adapters train on its own base_model/
(random_init, LLaVA) still chats and merges after it was moved.

One LoRA run of 4 steps with a checkpoint at step 2, moved to another folder before any test reads it, and a run of
2 steps that stops where the checkpoint was taken (constant learning rate, no dropout: the first two steps of both
runs are the same computation), whose final/ is what checkpoint-2 must load as."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from xtune.cli import main
from xtune.models.checkpoint_files import WEIGHTS_FILE
from xtune.models.load import adapter_base_path, load_for_inference
from xtune.train.checkpoint import MANIFEST_FILE, check_checkpoint
from xtune.train.recipe import FinetuneRecipe

from .conftest import logits, small_config

CPU = torch.device("cpu")
PROMPT = ["--greedy", "--max-new-tokens", "6", "--prompt", "请介绍一下你自己"]


def train(method: str, cache_dir: Path, work_dir: Path, steps: int) -> Path:
    cfg = small_config(
        method,
        cache_dir,
        training={"max_steps": steps, "lr_schedule": "constant", "warmup_ratio": 0.0},
        saving={"save_steps": 2, "save_total_limit": 1},
        evaluation={"inputs": []},
    )
    recipe = FinetuneRecipe(cfg, work_dir, device=CPU)
    recipe.setup()
    return recipe.train()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cache_dir):
    root = tmp_path_factory.mktemp("lifecycle")
    train("lora", cache_dir, root / "before_move", steps=4)
    shutil.copytree(root / "before_move", root / "moved")
    shutil.rmtree(root / "before_move")  # moved: nothing is left where it was trained
    reference = train("lora", cache_dir, root / "two_steps", steps=2)
    moved = root / "moved"
    return SimpleNamespace(
        root=root, moved=moved, checkpoint=moved / "checkpoint-2", base=moved / "base_model", reference=reference
    )


def inference_logits(path: Path, adapter: Path | None = None) -> torch.Tensor:
    model, _, _ = load_for_inference(str(path), str(adapter) if adapter else None, device=CPU, dtype=torch.float32)
    return logits(model)


def chat_reply(capsys, *args: str) -> str:
    capsys.readouterr()
    main(["chat", *args, *PROMPT])
    return capsys.readouterr().out


def test_a_checkpoint_carries_what_final_carries_beside_the_weights(runs):
    files = {p.name for p in runs.checkpoint.iterdir()}
    assert {"adapter_config.json", "tokenizer.json", "tokenizer_config.json", "xtune_config.yaml"} <= files
    assert {p.name for p in runs.checkpoint.iterdir() if "safetensors" in p.name} == {WEIGHTS_FILE, "rng.safetensors"}
    manifest = json.loads((runs.checkpoint / MANIFEST_FILE).read_text())["files"]
    assert set(manifest) == files - {MANIFEST_FILE}  # all covered: resume checks them
    assert check_checkpoint(runs.checkpoint) is None


def test_a_checkpoint_loads_as_the_final_of_a_run_that_stopped_there(runs, capsys):
    want = inference_logits(runs.reference)
    assert not torch.allclose(want, inference_logits(runs.moved / "final"), atol=1e-3)  # steps 3-4 changed it
    torch.testing.assert_close(inference_logits(runs.checkpoint), want, rtol=0, atol=1e-5)
    assert chat_reply(capsys, str(runs.checkpoint)) == chat_reply(capsys, str(runs.reference))


@pytest.mark.parametrize("command", ["checkpoint", "pth_to_hf"])
def test_convert_checkpoint_writes_a_final_style_directory_plain_peft_loads(runs, tmp_path, command, capsys):
    out = tmp_path / "hf"
    main(["convert", command, str(runs.checkpoint), str(out)])
    assert {"adapter_model.safetensors", "tokenizer.json", "xtune_config.yaml"} <= {p.name for p in out.iterdir()}
    # OUT lies outside the work dir: it names the base by its full path, as PEFT reads it
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(runs.base)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(runs.base, dtype=torch.float32), out)
    torch.testing.assert_close(logits(model), inference_logits(runs.reference), rtol=0, atol=1e-5)


def test_convert_merge_takes_a_checkpoint(runs, tmp_path, capsys):
    out = tmp_path / "merged"
    main(["convert", "merge", str(runs.base), str(runs.checkpoint), str(out)])
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    torch.testing.assert_close(logits(merged), inference_logits(runs.reference), rtol=0, atol=1e-5)


def test_a_moved_work_dir_chats_and_merges_from_its_own_base(runs, tmp_path, capsys):
    final = runs.moved / "final"
    for adapter_dir in (final, runs.checkpoint):
        assert json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == (
            "../base_model"
        )
        assert adapter_base_path(adapter_dir) == str(runs.base.resolve())
    reply = chat_reply(capsys, str(final))
    assert reply.strip() and chat_reply(capsys, str(runs.base), "--adapter", str(final)) == reply
    main(["convert", "merge", str(runs.base), str(final), str(tmp_path / "merged")])
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    torch.testing.assert_close(logits(merged), inference_logits(final), rtol=0, atol=1e-5)


def test_an_adapter_of_an_older_xtune_finds_the_moved_base_beside_it(runs, tmp_path):
    """Adapters written before bases were recorded relatively name the work dir's base_model/ by its old full path."""
    work_dir = tmp_path / "work"
    shutil.copytree(runs.moved / "final", work_dir / "final")
    (work_dir / "base_model").symlink_to(runs.base)
    config_file = work_dir / "final" / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"] = str(runs.root / "before_move" / "base_model")  # gone
    config_file.write_text(json.dumps(config))
    assert adapter_base_path(work_dir / "final") == str(work_dir / "base_model")


def test_a_full_fine_tune_checkpoint_loads_as_a_model(tmp_path, cache_dir, capsys):
    train("full", cache_dir, tmp_path / "full", steps=3)
    checkpoint = tmp_path / "full" / "checkpoint-2"
    assert check_checkpoint(checkpoint) is None
    weights = load_file(checkpoint / WEIGHTS_FILE)
    model, _, _ = load_for_inference(str(checkpoint), device=CPU, dtype=torch.float32)
    state = model.state_dict()
    for name, tensor in weights.items():
        torch.testing.assert_close(state[name], tensor, rtol=0, atol=0, msg=name)
    assert chat_reply(capsys, str(checkpoint)).strip()


def test_a_sharded_checkpoint_says_what_to_do(tmp_path, capsys):
    checkpoint = tmp_path / "work" / "checkpoint-4"
    (checkpoint / "sharded").mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text('{"step": 4}')
    with pytest.raises(SystemExit) as exit_info:
        main(["chat", str(checkpoint), "--prompt", "hi"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"xtune: error: {checkpoint} is a sharded checkpoint (FSDP2 or DeepSpeed), which only --resume reads; use "
        "the run's final/, or `xtune train --resume` the run to its end, which writes final/"
    ]
