"""The training loss and gradient accumulation. References: transformers' own causal-LM loss
(`model(input_ids, labels=labels).loss`, a mean over the shifted labels that are not -100), and for accumulation the
definition: an optimizer step minimises the mean over every trained token of its window, so batch_size=1 with
4 accumulated micro-batches is the same step as batch_size=4 without accumulation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from xtune.data.encode import IGNORE_INDEX
from xtune.data.packing import Row, collate
from xtune.train import loss as loss_module
from xtune.train.loss import count_trained_tokens, loss_sum
from xtune.train.recipe import FinetuneRecipe

from .conftest import read_metrics, small_config

TINY_LLAMA = Path(__file__).resolve().parents[2] / "src" / "xtune" / "assets" / "tiny-llama"


@pytest.fixture(scope="module")
def model():
    config = AutoConfig.from_pretrained(TINY_LLAMA)
    config.num_hidden_layers = 2
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).train()


def grads(model) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def assert_same_grads(got: dict, want: dict, atol: float = 1e-6) -> None:
    assert set(got) == set(want)
    assert any(g.abs().max() > 1e-4 for g in want.values())  # not vacuous
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=atol, msg=name)


def random_rows(lengths: list[int], prompt_lengths: list[int], vocab: int, seed: int) -> list[Row]:
    """Rows of one sample each: a prompt (labels ignored) then a trained response."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for n, prompt in zip(lengths, prompt_lengths, strict=True):
        ids = torch.randint(4, vocab, (n,), generator=generator).tolist()
        rows.append(Row(ids, [IGNORE_INDEX] * prompt + ids[prompt:], list(range(n))))
    return rows


def test_loss_sum_over_trained_tokens_is_transformers_loss(model, monkeypatch):
    """Unpadded batch: loss_sum / count_trained_tokens equals HF's mean loss, value and gradients; also through
    the chunked (checkpointed) head path."""
    batch = collate(random_rows([24, 24, 24], [5, 11, 0], 900, seed=1), pad_token_id=0)
    n = count_trained_tokens(batch["labels"])
    assert n == 19 + 13 + 23  # shifted: a row's first label is never a target

    reference = model(input_ids=batch["input_ids"], labels=batch["labels"]).loss
    reference.backward()
    want = grads(model)

    ours = loss_sum(model, batch) / n
    ours.backward()
    assert abs(ours.item() - reference.item()) <= 1e-6
    assert_same_grads(grads(model), want)

    monkeypatch.setattr(loss_module, "CHUNK_TOKENS", 7)
    head_rows = []  # rows of every head call, the backward's recomputation included
    hook = model.lm_head.register_forward_hook(lambda module, args, out: head_rows.append(args[0].shape[0]))
    try:
        chunked = loss_sum(model, batch) / n
        chunked.backward()
    finally:
        hook.remove()
    assert abs(chunked.item() - reference.item()) <= 1e-6
    assert_same_grads(grads(model), want)
    # full-vocabulary logits exist for one chunk at a time, never for the whole batch (55 positions, padded to 256)
    assert max(head_rows) == 7 and sum(head_rows) == 2 * loss_module.POSITIONS_MULTIPLE


def test_padded_batch_costs_what_its_rows_cost_alone(model):
    """Padding is never trained and never changes a row's loss: the sum over a padded batch is the sum of each
    row's HF loss (mean) times its trained tokens."""
    rows = random_rows([30, 9, 17], [4, 2, 16], 900, seed=2)
    batch = collate(rows, pad_token_id=0)
    assert batch["input_ids"].shape == (3, 30)
    total = loss_sum(model, batch)
    total.backward()
    got = grads(model)

    reference = 0.0
    for row in rows:
        alone = collate([row], pad_token_id=0)
        n = count_trained_tokens(alone["labels"])
        reference = reference + model(input_ids=alone["input_ids"], labels=alone["labels"]).loss * n
    reference.backward()
    assert count_trained_tokens(batch["labels"]) == 26 + 7 + 1  # labels[:, 1:]: a first label is never a target
    assert abs(total.item() - reference.item()) <= 1e-6 * reference.item()
    assert_same_grads(got, grads(model), atol=1e-5)


def recipe_for(tmp_path: Path, cache_dir: Path, batch_size: int, accumulation: int) -> FinetuneRecipe:
    cfg = small_config(
        "full",
        cache_dir,
        training={
            "max_steps": 1,
            "batch_size": batch_size,
            "gradient_accumulation": accumulation,
            "max_grad_norm": None,  # compare raw gradients
            "lr_schedule": "constant",
            "warmup_ratio": 0.0,
        },
        evaluation={"inputs": []},
    )
    recipe = FinetuneRecipe(cfg, tmp_path / f"bs{batch_size}x{accumulation}", device=torch.device("cpu"))
    recipe.setup()
    return recipe


def train_one_step(recipe: FinetuneRecipe) -> dict[str, torch.Tensor]:
    """Run recipe.train() for its single step; returns the gradients the optimizer stepped with."""
    seen = {}

    def record(optimizer, args, kwargs):
        seen.update({n: p.grad.clone() for n, p in recipe.model.named_parameters() if p.grad is not None})

    handle = recipe.optimizer.register_step_pre_hook(record)
    recipe.train()
    handle.remove()
    assert seen
    return seen


def test_accumulated_step_equals_one_big_batch(tmp_path, cache_dir):
    accumulated = recipe_for(tmp_path, cache_dir, batch_size=1, accumulation=4)
    big = recipe_for(tmp_path, cache_dir, batch_size=4, accumulation=1)
    for (name, p), (_, q) in zip(accumulated.model.named_parameters(), big.model.named_parameters(), strict=True):
        assert torch.equal(p, q), name  # same seed, same initial weights
    before = {name: p.detach().clone() for name, p in big.model.named_parameters()}

    # Both see the same four rows: the epoch order depends on the seed only, not on the batch size.
    stream = accumulated.micro_batches(0)
    micro = [next(stream)[0] for _ in range(4)]
    together, _ = next(big.micro_batches(0))
    for i, mb in enumerate(micro):
        width = mb["input_ids"].shape[1]
        assert torch.equal(together["input_ids"][i, :width], mb["input_ids"][0])
        assert torch.equal(together["labels"][i, :width], mb["labels"][0])
        assert (together["labels"][i, width:] == IGNORE_INDEX).all()
    counts = [count_trained_tokens(mb["labels"]) for mb in micro]
    assert len(set(counts)) > 1  # rows of different lengths: a mean of micro-batch means would differ

    # Reference, from transformers' loss on each row alone: the token-weighted mean over the window.
    model = accumulated.model
    losses = [model(input_ids=mb["input_ids"], labels=mb["labels"]).loss for mb in micro]
    reference = sum(loss * n for loss, n in zip(losses, counts, strict=True)) / sum(counts)
    reference.backward()
    want = grads(model)
    mean_of_means = sum(loss.item() for loss in losses) / 4
    assert abs(mean_of_means - reference.item()) > 1e-3  # the two definitions are distinguishable here

    got_accumulated = train_one_step(accumulated)
    got_big = train_one_step(big)
    [step_accumulated] = read_metrics(accumulated.work_dir)
    [step_big] = read_metrics(big.work_dir)
    assert step_accumulated["trained_tokens"] == step_big["trained_tokens"] == sum(counts)
    assert abs(step_accumulated["loss"] - reference.item()) <= 1e-6
    assert abs(step_big["loss"] - reference.item()) <= 1e-6
    assert step_accumulated["grad_norm"] == pytest.approx(step_big["grad_norm"], rel=1e-5)
    assert_same_grads(got_accumulated, want)
    assert_same_grads(got_big, want)
    # And so the same update (AdamW, first step: about -lr * sign(grad)). Where a gradient is ~1e-7, float noise
    # between the two summation orders can tip that ratio, so compare where the gradient is well above the noise.
    lr = accumulated.cfg.training.lr
    for (name, p), (_, q) in zip(accumulated.model.named_parameters(), big.model.named_parameters(), strict=True):
        determined = want[name].abs() > 1e-6
        update_accumulated, update_big = (p - before[name])[determined], (q - before[name])[determined]
        assert update_big.abs().max() > 0.5 * lr, name
        torch.testing.assert_close(update_accumulated, update_big, rtol=0, atol=1e-6, msg=name)
