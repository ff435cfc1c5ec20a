"""Preference objectives: the losses equal TRL's (the oracle, a test dependency only) on the same tiny model and
pairs, DPO starts at ln 2 when policy and reference agree (LoRA: adapters disabled; full: the cached reference
pass, reused on resume), and a pair packed into one row scores as each of its sequences alone."""

from __future__ import annotations

import copy
import json
import math
from contextlib import nullcontext

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from xtune.config.presets import get_preset, merge
from xtune.config.schema import DatasetSettings, DataSettings, PreferenceSettings, validate_config
from xtune.data.dataset import encode_records, tokenized_dataset
from xtune.data.encode import IGNORE_INDEX, EncodedSample, joined
from xtune.data.packing import collate, pack, single_rows
from xtune.train.distributed import World
from xtune.train.objectives import Forwards, Preference, reference_pass, token_logps
from xtune.train.recipe import FinetuneRecipe

from .conftest import read_metrics

PAIRS = [
    {"prompt": "Hi there, who are you?", "chosen": " I am the assistant.", "rejected": " No."},
    {"prompt": "What is 2+2?", "chosen": " 4, of course.", "rejected": " five"},
    {"prompt": "Name a colour.", "chosen": " Blue, like the sky.", "rejected": " I do not know any colours at all."},
]


def policy_and_reference(model_dir) -> tuple[torch.nn.Module, torch.nn.Module]:
    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    torch.manual_seed(1)  # a reference with other weights: the log-ratios are far from zero
    reference = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir), dtype=torch.float32)
    return policy.eval(), reference.eval()


def xtune_mean_loss(objective: str, settings: PreferenceSettings, policy, reference, pairs, cache_dir) -> float:
    """xtune's loss over `pairs` (EncodedSample pairs) packed into rows, the reference from the reference pass."""
    rows = pack(pairs, max_length=128)
    assert len(rows) < len(pairs)  # pairs share rows
    preference = Preference(objective, settings, World())
    if preference.needs_reference:
        forwards = Forwards(lambda r: collate(r, pad_token_id=0), torch.device("cpu"), 2, nullcontext, cache_dir)
        reference_pass(reference, rows, forwards, World())
    batch = collate(rows, pad_token_id=0)
    with torch.no_grad():
        total = preference.loss_sum(policy, batch).item()
    return preference.metrics(total, preference.count(batch))["loss"]


def trl_trainer(kind: str, model, reference, tokenizer, tmp_path, batch_size: int, **options):
    """A TRL trainer on PAIRS (text prompt and completions, tokenized TRL's way)."""
    from datasets import Dataset

    if kind == "dpo":
        from trl import DPOConfig as Config
        from trl import DPOTrainer as Trainer

        extra = {"ref_model": reference}
    elif kind == "cpo":
        from trl.experimental.cpo import CPOConfig as Config
        from trl.experimental.cpo import CPOTrainer as Trainer

        extra = {}
    else:
        from trl.experimental.orpo import ORPOConfig as Config
        from trl.experimental.orpo import ORPOTrainer as Trainer

        extra = {}
    args = Config(
        output_dir=str(tmp_path / "trl"),
        per_device_train_batch_size=batch_size,
        report_to=[],
        use_cpu=True,
        bf16=False,
        max_length=64,
        **options,
    )
    return Trainer(model, **extra, args=args, train_dataset=Dataset.from_list(PAIRS), processing_class=tokenizer)


def pairs_from_dpo_batch(batch) -> list[EncodedSample]:
    """TRL's DPO batch (chosen rows, then rejected rows; completion_mask marks the scored tokens) as xtune pairs."""
    sequences = []
    for ids, attention, completion in zip(
        *(batch[k] for k in ("input_ids", "attention_mask", "completion_mask")), strict=True
    ):
        ids, completion = ids[attention.bool()], completion[attention.bool()]
        sequences.append(EncodedSample(ids.tolist(), torch.where(completion.bool(), ids, IGNORE_INDEX).tolist()))
    n = len(sequences) // 2
    return [joined([c, r]) for c, r in zip(sequences[:n], sequences[n:], strict=True)]


def pair_from_cpo_batch(batch) -> EncodedSample:
    """TRL's CPO/ORPO batch of one pair (labels -100 on the prompt) as an xtune pair."""
    return joined(
        [
            EncodedSample(batch[f"{k}_input_ids"][0].tolist(), batch[f"{k}_labels"][0].tolist())
            for k in ("chosen", "rejected")
        ]
    )


# xtune objective and settings -> TRL trainer, its options, and pairs per batch (1 where TRL's SFT term is a token mean
# over the whole batch rather than xtune's mean over pairs)
CASES = {
    "dpo": ("dpo", {}, "dpo", {"loss_type": ["sigmoid"]}, 3),
    "ipo": ("ipo", {}, "dpo", {"loss_type": ["ipo"]}, 3),
    "hinge": ("hinge", {}, "dpo", {"loss_type": ["hinge"]}, 3),
    "dpo_sft": ("dpo", {"sft_weight": 0.5}, "dpo", {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.5]}, 1),
    "simpo": (
        "simpo",
        {"label_smoothing": 0.1, "gamma": 0.7},
        "cpo",
        {"loss_type": "simpo", "cpo_alpha": 0.0, "simpo_gamma": 0.7, "label_smoothing": 0.1},
        1,
    ),
    "orpo": ("orpo", {"orpo_lambda": 0.2}, "orpo", {"beta": 0.2}, 1),
}


@pytest.mark.parametrize("case", CASES)
def test_losses_equal_trl(case, one_layer_model_dir, tiny_tokenizer, tmp_path):
    objective, settings, kind, options, batch_size = CASES[case]
    settings = PreferenceSettings(beta=0.1, **settings)
    policy, reference = policy_and_reference(one_layer_model_dir)
    if kind == "dpo":
        options = {"beta": 0.1, **options}
    # TRL patches the model's head: it gets copies
    trainer = trl_trainer(kind, copy.deepcopy(policy), reference, tiny_tokenizer, tmp_path, batch_size, **options)
    for batch in trainer.get_train_dataloader():
        with torch.no_grad():
            if kind == "dpo":
                want = trainer._compute_loss(trainer.model, batch, return_outputs=False).item()
                pairs = pairs_from_dpo_batch(batch)
            else:
                loss, metrics = trainer.get_batch_loss_metrics(trainer.model, batch, train_eval="train")
                want = loss.item()
                if kind == "orpo":  # TRL's NLL term counts the prompt's tokens too; xtune's, the reply's alone
                    want += -metrics["nll_loss"] - metrics["logps/chosen"]
                pairs = [pair_from_cpo_batch(batch)]
        if len(pairs) == 1:  # packed with a copy of itself, so that a row holds two pairs
            pairs = pairs * 2
        have = xtune_mean_loss(objective, settings, policy, reference, pairs, tmp_path)
        assert have == pytest.approx(want, abs=1e-6)


def dpo_config(method: str, cache_dir, **training):
    raw = merge(
        get_preset(f"tiny_assistant_{method}"),
        {
            "model": {"lora": {"r": 8}} if method != "full" else {},
            "data": {
                "datasets": [{"path": "builtin:data/tiny_preference.jsonl", "format": "preference"}],
                "max_length": 96,
                "cache_dir": str(cache_dir),
            },
            "training": {"objective": "dpo", "max_steps": 2, "batch_size": 4, "log_every": 1, **training},
            "saving": {"save_steps": 1},
            "evaluation": {"inputs": []},
        },
    )
    return validate_config(raw)


def run_recipe(cfg, work_dir, resume=None) -> FinetuneRecipe:
    recipe = FinetuneRecipe(cfg, work_dir, device=torch.device("cpu"))
    recipe.setup(resume=resume)
    recipe.train()
    return recipe


@pytest.mark.parametrize("method", ["lora", "full"])
def test_dpo_starts_at_ln2_and_full_reuses_its_reference_on_resume(method, tmp_path, cache_dir):
    """Policy == reference at step 0: LoRA's reference is the model with its (zero-initialised) adapters disabled,
    full fine-tuning's the log-probs of the reference pass. A resumed full run reads them from the cache and
    continues as the uninterrupted run did."""
    cfg = dpo_config(method, tmp_path / "cache")
    first = run_recipe(cfg, tmp_path / "run")
    records = read_metrics(tmp_path / "run")
    assert abs(records[0]["loss"] - math.log(2)) < 1e-6
    assert records[0]["rewards/accuracy"] == 0 and records[0]["pairs"] == 4
    assert records[1]["loss"] < math.log(2) and records[1]["rewards/margin"] > 0  # one step learns the preference
    if method == "lora":
        assert "reference_logps" not in first.collate(first.data.rows[:1])  # disabled adapters, nothing computed
        return
    log = (tmp_path / "run" / "train.log").read_text()
    assert "reference pass: log-probs of 96 replies" in log
    (tmp_path / "run" / "final").rename(tmp_path / "first_final")
    resumed = run_recipe(cfg, tmp_path / "run", resume=str(tmp_path / "run" / "checkpoint-1"))
    assert "reference log-probs from cache" in (tmp_path / "run" / "train.log").read_text()
    assert [r.reference_logps for r in resumed.data.rows] == [r.reference_logps for r in first.data.rows]
    assert read_metrics(tmp_path / "run")[1]["loss"] == pytest.approx(records[1]["loss"], abs=1e-6)


PAIR_RECORDS = [
    {"prompt": "Hi", "chosen": "Hello! How can I help you today?", "rejected": "What?"},
    {
        "prompt": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
        "chosen": "c",
        "rejected": "d",
    },
    {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "I do not know any colours at all, sorry."},
]


def encoded_pairs(tmp_path, tokenizer, max_length=128, records=PAIR_RECORDS):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    dataset = DatasetSettings(path=str(path), format="preference")
    data = DataSettings(datasets=[dataset], template="qwen_chat", max_length=max_length, cache=False)
    return [s for _, s in encode_records(dataset, data, tokenizer)]


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "gradient_checkpointing"])
def test_packed_pairs_score_as_each_sequence_alone(checkpointing, one_layer_model_dir, tiny_tokenizer, tmp_path):
    """Each pair is one row (chosen then rejected, positions restarting) or pairs share a packed row: the training
    forward (train mode, gradients on) gives each sequence the log-probs of its reply run alone."""
    model = AutoModelForCausalLM.from_pretrained(one_layer_model_dir, dtype=torch.float32)
    if checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    pairs = encoded_pairs(tmp_path, tiny_tokenizer)

    def alone(ids: list[int], labels: list[int]) -> float:
        with torch.no_grad():
            logps = model(input_ids=torch.tensor([ids])).logits[0, :-1].log_softmax(-1)
        targets = torch.tensor(labels[1:])
        trained = targets != IGNORE_INDEX
        return logps[trained].gather(1, targets[trained, None]).double().sum().item()

    for rows in (single_rows(pairs), pack(pairs, max_length=256)):
        have = token_logps(model, collate(rows, pad_token_id=tiny_tokenizer.pad_token_id))
        want = []  # batch order: row by row, sequences left to right (chosen, then rejected, of each pair)
        for row in rows:
            starts = [i for i, p in enumerate(row.position_ids) if p == 0] + [len(row)]
            want += [alone(row.input_ids[a:b], row.labels[a:b]) for a, b in zip(starts, starts[1:], strict=False)]
        assert have.requires_grad
        assert (have.detach() - torch.tensor(want)).abs().max().item() < 1e-5
    assert len(pack(pairs, max_length=256)) < len(pairs)


def test_pairs_share_the_prompt_and_only_the_final_reply_trains(tmp_path, tiny_tokenizer):
    """Chosen and rejected render the prompt (with the template's default system prompt) as the same text; earlier
    assistant turns are context; a pair whose reply is truncated away is dropped and counted."""
    pairs = encoded_pairs(tmp_path, tiny_tokenizer)
    decode = tiny_tokenizer.decode
    for pair, record in zip(pairs, PAIR_RECORDS, strict=True):
        chosen, rejected = (pair.input_ids[s] for s in pair.part_slices())
        chosen_labels, rejected_labels = (pair.labels[s] for s in pair.part_slices())
        prompt = next(i for i, label in enumerate(chosen_labels) if label != IGNORE_INDEX)
        assert chosen[:prompt] == rejected[:prompt] and decode(chosen[:prompt]).endswith("<|im_start|>assistant\n")
        assert decode([t for t in chosen_labels if t != IGNORE_INDEX]) == record["chosen"] + "<|im_end|>"
        assert decode([t for t in rejected_labels if t != IGNORE_INDEX]) == record["rejected"] + "<|im_end|>"
    # max_length 24 cuts the replies of the pairs with longer prompts (the second and third) away entirely
    path = tmp_path / "pairs.jsonl"
    dataset = DatasetSettings(path=str(path), format="preference")
    data = DataSettings(datasets=[dataset], template="qwen_chat", max_length=24, cache=False)
    samples, stats = tokenized_dataset(dataset, data, tiny_tokenizer)
    assert stats.dropped == {"a reply truncated away within max_length": 2} and len(samples) == 1
    assert samples[0].input_ids[: samples[0].parts[0]] == pairs[0].input_ids[:24]


def test_reward_model_ranks_held_out_pairs_and_loads_as_sequence_classification(tmp_path, capsys):
    """objective reward on the tiny pairs (chosen replies end with " :)"): `xtune score` ranks >= 90% of the pairs held
    out of training correctly, and final/ loads with AutoModelForSequenceClassification, whose own forward (the last
    non-pad token) gives the scores xtune read at each sequence's last token."""
    from transformers import AutoModelForSequenceClassification

    from xtune.assets import resolve_path
    from xtune.cli import main

    records = [json.loads(line) for line in resolve_path("builtin:data/tiny_preference.jsonl").open(encoding="utf-8")]
    held_in, held_out = tmp_path / "held_in.jsonl", tmp_path / "held_out.jsonl"
    held_in.write_text("".join(json.dumps(r) + "\n" for i, r in enumerate(records) if i % 4), encoding="utf-8")
    held_out.write_text("".join(json.dumps(r) + "\n" for r in records[::4]), encoding="utf-8")
    cfg = dpo_config("full", tmp_path / "cache", objective="reward", max_steps=10, batch_size=8)
    cfg.data.datasets[0].path = str(held_in)
    final = run_recipe(cfg, tmp_path / "run").work_dir / "final"
    capsys.readouterr()
    main(["score", str(final), "--data", str(held_out)])
    lines = capsys.readouterr().out.strip().splitlines()
    accuracy = float(lines[-1].removeprefix("pairwise accuracy: ").split("%")[0]) / 100
    assert accuracy >= 0.9 and lines[-1].endswith(f"of {len(records[::4])} pairs")
    model = AutoModelForSequenceClassification.from_pretrained(final).eval()
    first = json.loads(lines[0])
    pair = encoded_pairs(tmp_path, AutoTokenizer.from_pretrained(final), 96, records[:1])[0]
    with torch.no_grad():
        scores = [model(input_ids=torch.tensor([pair.input_ids[s]])).logits.item() for s in pair.part_slices()]
    assert scores == pytest.approx([first["chosen"], first["rejected"]], abs=1e-5)
