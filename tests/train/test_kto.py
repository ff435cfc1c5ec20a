"""KTO: the loss equals TRL's KTOTrainer (the oracle) on the same tiny model and samples, KL term included; it starts
at 0.5 per sample when policy and reference agree; the kto format scores only the final reply, rendered by the
same template as SFT, and pairs each sample with its KL sequence (the previous record's reply)."""

from __future__ import annotations

import copy
import json
import re
from contextlib import nullcontext

import pytest
import torch

from xtune.assets import resolve_path
from xtune.cli import main
from xtune.config.schema import DatasetSettings, DataSettings, PreferenceSettings
from xtune.data.dataset import encode_records
from xtune.data.encode import IGNORE_INDEX, EncodedSample, joined
from xtune.data.packing import collate, pack
from xtune.train.distributed import World
from xtune.train.objectives import KTO, Forwards, reference_pass

from .conftest import read_metrics
from .test_preference import dpo_config, policy_and_reference, run_recipe

SAMPLES = [
    {"prompt": "Hi there, who are you?", "completion": " I am the assistant.", "label": True},
    {"prompt": "What is 2+2?", "completion": " five", "label": False},
    {"prompt": "Name a colour.", "completion": " Blue, like the sky.", "label": True},
    {"prompt": "Say something.", "completion": " I do not know any words at all.", "label": False},
]


def samples_from_kto_batch(batch) -> list[EncodedSample]:
    """TRL's KTO batch (each sample's sequence and its KL sequence; completion masks mark the scored tokens) as
    xtune's samples."""

    def sequence(ids, attention, completion) -> EncodedSample:
        ids, completion = ids[attention.bool()], completion[attention.bool()]
        return EncodedSample(ids.tolist(), torch.where(completion.bool(), ids, IGNORE_INDEX).tolist())

    keys = [f"{p}{k}" for p in ("", "KL_") for k in ("input_ids", "attention_mask", "completion_mask")]
    out = []
    for i, label in enumerate(batch["label"]):
        matched, kl = (sequence(*(batch[k][i] for k in keys[j : j + 3])) for j in (0, 3))
        out.append(joined([matched, kl], label=bool(label)))
    return out


@pytest.mark.parametrize("swap", [False, True], ids=["kl_clamped", "kl_positive"])
def test_kto_loss_equals_trl(swap, one_layer_model_dir, tiny_tokenizer, tmp_path):
    """TRL's _compute_loss on its own batch (KL sequences rotated within the batch, the reference model's
    log-probs) against xtune's KTO on the same token ids, packed, the reference from the reference pass. Swapping
    policy and reference flips the sign of the KL estimate: one case clamps it at 0, the other uses it."""
    from datasets import Dataset
    from trl import KTOConfig, KTOTrainer

    policy, reference = policy_and_reference(one_layer_model_dir)
    if swap:
        policy, reference = reference, policy
    settings = PreferenceSettings(beta=0.3, desirable_weight=1.5, undesirable_weight=0.7)
    args = KTOConfig(
        output_dir=str(tmp_path / "trl"),
        per_device_train_batch_size=len(SAMPLES),
        report_to=[],
        use_cpu=True,
        bf16=False,
        max_length=64,
        beta=settings.beta,
        desirable_weight=settings.desirable_weight,
        undesirable_weight=settings.undesirable_weight,
    )
    # TRL patches the model's head: it gets copies
    trainer = KTOTrainer(
        copy.deepcopy(policy),
        copy.deepcopy(reference),
        args=args,
        train_dataset=Dataset.from_list(SAMPLES),
        processing_class=tiny_tokenizer,
    )
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        want = trainer._compute_loss(trainer.model, batch, return_outputs=False).item()
    trl_kl = trainer._metrics["eval"]["kl"][-1]  # the models are in eval mode: no dropout
    assert (trl_kl == 0) != swap  # the case this parameter names

    rows = pack(samples_from_kto_batch(batch), max_length=256)
    assert len(rows) == 1  # every sample and its KL sequence share one packed row
    kto = KTO(settings, World())
    forwards = Forwards(lambda r: collate(r, pad_token_id=0), torch.device("cpu"), 2, nullcontext, tmp_path)
    reference_pass(reference, rows, forwards, World())
    xtune_batch = collate(rows, pad_token_id=0)
    with torch.no_grad():
        total = kto.loss_sum(policy, xtune_batch).item()
    metrics = kto.metrics(total, kto.count(xtune_batch))
    assert metrics["samples"] == len(SAMPLES)
    assert metrics["loss"] == pytest.approx(want, abs=1e-6)
    # fp32 sums of ~100 log-probs (TRL's) against xtune's fp64 ones: the estimate agrees to their rounding
    assert metrics["kl"] == pytest.approx(trl_kl, rel=1e-5, abs=1e-6)


def kto_records() -> list[dict]:
    """The bundled pairs as unpaired KTO samples: each chosen reply desirable, each rejected one not."""
    out = []
    for line in resolve_path("builtin:data/tiny_preference.jsonl").open(encoding="utf-8"):
        pair = json.loads(line)
        for key, label in (("chosen", True), ("rejected", False)):
            prompt = [{"role": "user", "content": pair["prompt"]}]
            out.append({"messages": [*prompt, {"role": "assistant", "content": pair[key]}], "label": label})
    return out


@pytest.mark.parametrize("method", ["lora", "full"])
def test_kto_starts_at_half(method, tmp_path):
    """Policy == reference at step 0 (LoRA: the zero-initialised adapters disabled; full: the reference pass): every
    log-ratio and the KL estimate are 0, so each sample's loss is 1 - sigmoid(0) = 0.5 and the rewards are 0; one
    step separates desirable from undesirable replies."""
    path = tmp_path / "kto.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in kto_records()), encoding="utf-8")
    cfg = dpo_config(method, tmp_path / "cache", objective="kto")
    cfg.data.datasets = [DatasetSettings(path=str(path), format="kto")]
    recipe = run_recipe(cfg, tmp_path / "run")
    assert recipe.data.kind == "labelled"
    records = read_metrics(tmp_path / "run")
    assert abs(records[0]["loss"] - 0.5) < 1e-6 and records[0]["samples"] == 4
    assert records[0]["kl"] == 0 and records[0]["rewards/chosen"] == 0 and records[0]["rewards/rejected"] == 0
    assert records[1]["loss"] < 0.5 and records[1]["rewards/margin"] > 0


def test_kto_format_scores_the_final_reply_with_the_sft_render(tmp_path, tiny_tokenizer, capsys):
    """The kto sample renders as SFT renders the same messages (byte-identical prompt), only its final reply is
    trained, and its KL sequence is the same prompt answered by the previous record's reply. check-dataset counts
    the samples and their labels."""
    records = [
        {
            "messages": [
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b"},
                {"role": "user", "content": "c"},
                {"role": "assistant", "content": "Fine, thanks."},
            ],
            "label": True,
        },
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "What?"}], "label": False},
    ]

    def encoded(fmt: str) -> list[EncodedSample]:
        path = tmp_path / f"{fmt}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        dataset = DatasetSettings(path=str(path), format=fmt)
        data = DataSettings(datasets=[dataset], template="qwen_chat", max_length=128, cache=False)
        return [s for _, s in encode_records(dataset, data, tiny_tokenizer)]

    kto, sft = encoded("kto"), encoded("openai")
    decode = tiny_tokenizer.decode
    for i, (sample, plain) in enumerate(zip(kto, sft, strict=True)):
        assert sample.label is records[i]["label"]
        own, kl = sample.part_slices()
        assert sample.input_ids[own] == plain.input_ids  # the same text, token for token
        trained = [t for t in sample.labels[own] if t != IGNORE_INDEX]
        assert decode(trained) == records[i]["messages"][-1]["content"] + "<|im_end|>"
        previous = records[i - 1]["messages"][-1]["content"]
        assert decode([t for t in sample.labels[kl] if t != IGNORE_INDEX]) == previous + "<|im_end|>"
        prompt = sample.labels[own].index(trained[0])
        assert sample.input_ids[kl][:prompt] == sample.input_ids[own][:prompt]

    data = json.dumps([{"path": str(tmp_path / "kto.jsonl"), "format": "kto"}])
    main(["check-dataset", "tiny_assistant_lora", "--set", "training.objective=kto", "--set", f"data.datasets={data}"])
    out = capsys.readouterr().out
    assert re.search(r"usable samples\s+2\b", out) and re.search(r"desirable / undesirable\s+1 / 1\b", out)
