"""DeepSpeed ZeRO over gloo on CPU: 2 processes under torchrun reproduce the losses of 1 process with the same global
batch, export what loads with plain transformers/PEFT and matches, and resume from DeepSpeed's own checkpoint. No
op is compiled (client AdamW; the CPU shared-memory op is declared unavailable), so no run waits for a C++ build."""

import json

import pytest
from peft import PeftModel
from transformers import AutoModelForCausalLM

from xtune.cli import main
from xtune.config.presets import get_preset, merge
from xtune.config.schema import validate_config
from xtune.errors import ConfigError
from xtune.train.deepspeed_engine import load_deepspeed_config

from .conftest import load_base, logits, losses, read_metrics, xtune_train

# 2 ranks x 2 micro-batches of 1 row: each step trains the 4 rows of the reference's 2 micro-batches of 2 rows (the
# epoch order does not depend on the batch size), and DeepSpeed's own accumulation (its 1/accumulation loss scaling,
# its boundary) is in play.
ZERO = ("--set", "training.batch_size=1", "--set", "training.gradient_accumulation=2")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, single_process_run):
    root = tmp_path_factory.mktemp("deepspeed")
    xtune_train("tiny_assistant_lora", root / "lora_zero2", "--deepspeed", "zero2", *ZERO, nproc=2)
    xtune_train("tiny_assistant_full", root / "full_zero3", "--deepspeed", "zero3", *ZERO, nproc=2)
    xtune_train("tiny_assistant_qlora", root / "qlora_zero3", "--deepspeed", "zero3", *ZERO, nproc=2)
    return {
        "lora_zero2": root / "lora_zero2",
        "full_zero3": root / "full_zero3",
        "qlora_zero3": root / "qlora_zero3",
        "lora_single": single_process_run("tiny_assistant_lora"),
        "full_single": single_process_run("tiny_assistant_full"),
        "qlora_single": single_process_run("tiny_assistant_qlora"),
    }


def grad_norms(work_dir) -> list[float]:
    return [r["grad_norm"] for r in read_metrics(work_dir)]


def adapter_logits(work_dir, quantized: bool):
    base = load_base(work_dir / "base_model", quantized=quantized)
    return logits(PeftModel.from_pretrained(base, work_dir / "final"))


@pytest.mark.parametrize("method, stage", [("lora", "zero2"), ("qlora", "zero3")])
def test_adapters_reproduce_single_process_losses_and_export_a_peft_adapter(runs, method, stage):
    single, zero = losses(runs[f"{method}_single"]), losses(runs[f"{method}_{stage}"])
    assert len(zero) == 4 and zero == pytest.approx(single, abs=1e-4)
    assert single[0] != pytest.approx(single[-1], abs=1e-3)  # it trained
    # DeepSpeed computes and clips the norm itself: it sees the gradients of the global token mean too
    assert grad_norms(runs[f"{method}_{stage}"]) == pytest.approx(grad_norms(runs[f"{method}_single"]), rel=1e-3)
    quantized = method == "qlora"
    difference = adapter_logits(runs[f"{method}_{stage}"], quantized) - adapter_logits(
        runs[f"{method}_single"], quantized
    )
    assert difference.abs().max() < 1e-4


def test_zero3_full_reproduces_single_process_losses_and_exports_a_consolidated_model(runs):
    single, zero3 = losses(runs["full_single"]), losses(runs["full_zero3"])
    assert len(zero3) == 4 and zero3 == pytest.approx(single, abs=1e-4)
    assert grad_norms(runs["full_zero3"]) == pytest.approx(grad_norms(runs["full_single"]), rel=1e-3)
    exported = AutoModelForCausalLM.from_pretrained(runs["full_zero3"] / "final")
    reference = AutoModelForCausalLM.from_pretrained(runs["full_single"] / "final")
    assert (logits(exported) - logits(reference)).abs().max() < 1e-4
    checkpoint = runs["full_zero3"] / "checkpoint-2"
    assert (checkpoint / "latest").read_text() == "deepspeed"  # DeepSpeed's layout: its tools work on it
    assert len(list((checkpoint / "deepspeed").glob("*optim_states.pt"))) == 2  # one partition per rank
    assert json.loads((checkpoint / "trainer_state.json").read_text())["world_size"] == 2
    recorded = json.loads((runs["full_zero3"] / "deepspeed_config.json").read_text())
    assert recorded["zero_optimization"]["stage"] == 3 and recorded["gradient_accumulation_steps"] == 2


def test_zero3_resumes_from_its_checkpoint(runs, tmp_path):
    resumed = tmp_path / "resumed"
    checkpoint = str(runs["full_zero3"] / "checkpoint-2")
    xtune_train("tiny_assistant_full", resumed, "--deepspeed", "zero3", *ZERO, "--resume", checkpoint, nproc=2)
    assert losses(resumed) == pytest.approx(losses(runs["full_zero3"])[2:], abs=1e-5)


def test_one_process_zero3_offload_matches_plain_training(single_process_run, tmp_path):
    """One process still gets DeepSpeed (a one-rank process group): ZeRO-3 with weights and optimizer offloaded,
    accumulating 2 micro-batches."""
    xtune_train("tiny_assistant_full", tmp_path / "offload", "--deepspeed", "zero3_offload")
    reference = single_process_run("tiny_assistant_full")
    assert losses(tmp_path / "offload") == pytest.approx(losses(reference), abs=1e-4)
    assert grad_norms(tmp_path / "offload") == pytest.approx(grad_norms(reference), rel=1e-3)


# ---------------------------------------------------------------------------------------------- config errors
def training(**overrides):
    raw = merge(get_preset("tiny_assistant_full"), {"training": {"engine": "deepspeed", **overrides}})
    return validate_config(raw).training


def test_builtin_configs_get_xtune_s_batch_accumulation_and_clipping():
    for name in ("zero1", "zero2", "zero2_offload", "zero3", "zero3_offload"):
        config = load_deepspeed_config(training(deepspeed=name, batch_size=3, gradient_accumulation=5))
        assert config["train_micro_batch_size_per_gpu"] == 3 and config["gradient_accumulation_steps"] == 5
        assert config["gradient_clipping"] == 1.0 and "stage" in config["zero_optimization"]
    assert load_deepspeed_config(training(deepspeed="zero2", max_grad_norm=None))["gradient_clipping"] == 0.0


def test_a_user_json_may_say_auto_but_not_contradict_xtune(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 2}, "gradient_accumulation_steps": "auto"}))
    assert (
        load_deepspeed_config(training(deepspeed=str(path), gradient_accumulation=4))["gradient_accumulation_steps"]
        == 4
    )
    path.write_text(json.dumps({"train_micro_batch_size_per_gpu": 7}))
    with pytest.raises(ConfigError, match="'train_micro_batch_size_per_gpu'.*training.batch_size"):
        load_deepspeed_config(training(deepspeed=str(path)))
    path.write_text(json.dumps({"optimizer": {"type": "AdamW"}}))
    with pytest.raises(ConfigError, match="remove 'optimizer'"):
        load_deepspeed_config(training(deepspeed=str(path)))
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_deepspeed_config(training(deepspeed=str(path)))
    with pytest.raises(ConfigError, match="cannot read"):
        load_deepspeed_config(training(deepspeed=str(tmp_path / "missing.json")))


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({}, "training.engine deepspeed needs training.deepspeed: zero1"),
        ({"deepspeed": "zero4"}, "'zero4': choose zero1"),
        ({"engine": "ddp", "deepspeed": "zero2"}, "set engine: deepspeed"),
    ],
)
def test_schema_names_the_key_and_the_choices(overrides, message):
    with pytest.raises(ConfigError, match=message):
        training(**overrides)


def test_fsdp_and_deepspeed_together_are_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "tiny_assistant_full", "--fsdp", "--deepspeed", "zero3"])
    assert exit_info.value.code == 2 and "--fsdp and --deepspeed" in capsys.readouterr().err
