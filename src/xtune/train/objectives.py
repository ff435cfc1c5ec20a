"""Training objectives: what the loss of a batch is. An objective gives, for each micro-batch, the loss summed over
what it trains and the count that sum is normalised by; the recipe divides the global window's sum by the global
count, so accumulation and the number of ranks change nothing. `sft`: next-token cross-entropy, the mean over
every trained token. Preference objectives (dpo, ipo, hinge, simpo, orpo) build on token_logps: the mean over pairs
of a loss on the log-probabilities of each pair's chosen and rejected reply; `reward` trains a scalar head on pairs
(Bradley-Terry); `kto`, the mean over unpaired replies labelled desirable or not.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from xtune.config.schema import (
    LABELLED_FORMATS,
    PREFERENCE_FORMATS,
    PREFERENCE_OBJECTIVES,
    PreferenceSettings,
    TrainingSettings,
)
from xtune.data.dataset import TrainingData
from xtune.data.encode import IGNORE_INDEX
from xtune.data.packing import Row
from xtune.errors import ConfigError
from xtune.io import write_atomically
from xtune.models.load import causal_lm
from xtune.train.distributed import World, all_reduce_sum, main_first
from xtune.train.loss import count_targets, head_logits, head_loss, hidden_states, loss_sum
from xtune.train.metrics import logger


class Objective(Protocol):
    def prepare(self, model: torch.nn.Module, data: TrainingData, run: Forwards) -> None:
        """Once before training, with the model as loaded: compute what the objective needs ahead (full-model DPO:
        the reference log-probabilities, kept in the rows)."""
        ...

    def count(self, batch: dict[str, torch.Tensor]) -> int: ...

    def loss_sum(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...

    def metrics(self, loss_sum: float, count: float) -> dict[str, float]: ...


@dataclass
class Forwards:
    """What Objective.prepare may use of the run to run the model over the data as training does."""

    collate: Callable[[Sequence[Row]], dict[str, torch.Tensor]]
    device: torch.device
    batch_size: int
    autocast: Callable[[], AbstractContextManager]
    cache_dir: Path  # where results computed ahead are cached (beside the tokenized data)


def check_data(objective: str, formats: Sequence[str], kind: str | None = None, generates: bool = False) -> None:
    """Pairwise objectives train on pairs only, kto on labelled samples only, sft on single conversations only. Before
    the data is read, the built-in formats say which they hold (`kind` None); once it is tokenized, the samples say
    for any format (`kind`: TrainingData.kind). `generates`: evaluation.inputs are set, which a reward model cannot
    answer."""
    if objective == "reward" and generates:
        raise ConfigError(
            "training.objective reward trains a scorer, which answers no evaluation.inputs; set evaluation.inputs: []"
        )
    if kind is None:
        if any(":" in f for f in formats):  # a map function: known once tokenized
            return
        kinds = {"pairs" if f in PREFERENCE_FORMATS else "labelled" if f in LABELLED_FORMATS else "" for f in formats}
        kind = "labelled" if "labelled" in kinds else "pairs" if "pairs" in kinds else "conversations"
    wants = "conversations" if objective == "sft" else "labelled" if objective == "kto" else "pairs"
    if kind == wants:
        return
    held = {"conversations": "single conversations", "pairs": "preference pairs", "labelled": "labelled replies"}
    switch = {
        "conversations": "set training.objective: sft",
        "pairs": f"set training.objective to one of {', '.join(PREFERENCE_OBJECTIVES)}",
        "labelled": "set training.objective: kto",
    }[kind]
    if wants != "conversations":
        formats = f"a preference format ({', '.join(PREFERENCE_FORMATS)})" if wants == "pairs" else "the kto format"
        switch = f"use {formats} or {switch}"
    raise ConfigError(
        f"training.objective {objective} trains on {held[wants]} but the datasets hold {held[kind]}; {switch}"
    )


class SFT:
    """Supervised fine-tuning: cross-entropy of every trained token, as one mean over the global window."""

    def __init__(self):
        self.head_loss = head_loss

    def compile(self) -> None:
        """training.compile: the head's matmul, the fp32 cast and the cross-entropy as fused kernels."""
        self.head_loss = torch.compile(head_loss)

    def prepare(self, model: torch.nn.Module, data: TrainingData, run: Forwards) -> None:
        """Nothing to compute ahead."""

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        """What the loss sum is normalised by: this micro-batch's trained tokens."""
        return count_targets(batch)

    def loss_sum(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return loss_sum(model, batch, self.head_loss)

    def metrics(self, loss_sum: float, count: float) -> dict[str, float]:
        """What to log for a window, from its loss sum and count over every rank."""
        return {"loss": loss_sum / max(count, 1), "trained_tokens": count}


class ObjectiveLoss(torch.nn.Module):
    """The model with the objective's loss sum as its forward: data-parallel engines (DDP, FSDP2, DeepSpeed) hook a
    module's forward, so the loss is computed inside the module they wrap."""

    def __init__(self, model: torch.nn.Module, objective: Objective):
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, **batch: torch.Tensor) -> torch.Tensor:
        return self.objective.loss_sum(self.model, batch)


def token_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed log-probabilities of the trained tokens of each sample (fp32), one per sample with trained tokens,
    in batch order (row by row, left to right): what preference objectives compare. Samples packed into one row
    are told apart by their position ids, which restart at 0 for each; a sample's first token, which no token of
    its own precedes, is never scored. Padding is a pseudo-sample without trained tokens and drops out."""
    lm = causal_lm(model)
    hidden = hidden_states(lm, batch)[:, :-1]
    trained, sample, n_samples = _trained_positions(batch)
    softcap = getattr(lm.config, "final_logit_softcapping", None)
    logits = head_logits(lm.get_output_embeddings(), hidden[trained], softcap)
    logps = -F.cross_entropy(logits, batch["labels"][:, 1:][trained], reduction="none")
    # Accumulated in fp64: an fp32 running sum of a long sample's terms drifts by many of its last digits.
    sums = logps.new_zeros(n_samples, dtype=torch.float64).index_add(0, sample, logps.double())
    return sums[torch.unique(sample)].float()


def trained_token_counts(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """How many tokens token_logps sums for each sample, in its order."""
    _, sample, n_samples = _trained_positions(batch)
    counts = torch.bincount(sample, minlength=n_samples)
    return counts[counts > 0]


def _trained_positions(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The trained next-token positions (a mask over [:, 1:]), the sample each belongs to, and the number of
    samples (padding included)."""
    targets = batch["labels"][:, 1:]
    starts = batch["position_ids"] == 0
    trained = (targets != IGNORE_INDEX) & ~starts[:, 1:]
    # Every row begins a sample, so a running count of starts over the flattened rows numbers the samples.
    sample = (starts.reshape(-1).cumsum(0) - 1).reshape(starts.shape)[:, 1:][trained]
    return trained, sample, int(starts.sum())


# ---------------------------------------------------------------------------------------------- preference pairs
REFERENCE_FREE = ("simpo", "orpo")  # compare the policy's own log-probabilities, no reference model


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0 without cancellation: log(-expm1(x)) near 0, log1p(-exp(x)) below -ln 2. x is
    kept below -1e-6 so that a reply the model is certain of gives a finite value (and gradient)."""
    x = x.clamp(max=-1e-6)
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def pair_losses(
    objective: str,
    s: PreferenceSettings,
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    ref_chosen: torch.Tensor | None,
    ref_rejected: torch.Tensor | None,
    n_chosen: torch.Tensor,
    n_rejected: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each pair's loss and the implicit rewards of its chosen and rejected reply, from the summed log-probabilities
    of the replies (policy, reference) and their token counts. As TRL defines them: dpo (sigmoid, with label
    smoothing as cDPO), hinge and ipo (on log-ratios per token) against the reference; simpo and orpo on the
    policy's mean log-probability per token."""
    if objective in REFERENCE_FREE:
        mean_chosen, mean_rejected = chosen / n_chosen, rejected / n_rejected
        if objective == "simpo":
            margin = mean_chosen - mean_rejected - s.gamma / s.beta
            losses = _smoothed_sigmoid_loss(s.beta * margin, s.label_smoothing)
            scale = s.beta
        else:  # orpo: the chosen reply's NLL plus lambda times the odds ratio's loss
            log_odds = (mean_chosen - mean_rejected) - (log1mexp(mean_chosen) - log1mexp(mean_rejected))
            losses = -mean_chosen - s.orpo_lambda * F.logsigmoid(log_odds)
            scale = s.orpo_lambda
        rewards = scale * mean_chosen.detach(), scale * mean_rejected.detach()
    else:
        chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected
        if objective == "dpo":
            losses = _smoothed_sigmoid_loss(s.beta * (chosen_ratio - rejected_ratio), s.label_smoothing)
        elif objective == "hinge":
            losses = torch.relu(1 - s.beta * (chosen_ratio - rejected_ratio))
        else:  # ipo
            losses = (chosen_ratio / n_chosen - rejected_ratio / n_rejected - 1 / (2 * s.beta)) ** 2
        rewards = s.beta * chosen_ratio.detach(), s.beta * rejected_ratio.detach()
    if s.sft_weight:
        losses = losses - s.sft_weight * chosen / n_chosen
    return losses, *rewards


def _smoothed_sigmoid_loss(logits: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    return -F.logsigmoid(logits) * (1 - label_smoothing) - F.logsigmoid(-logits) * label_smoothing


class Preference:
    """A pairwise preference objective: each batch holds whole pairs, chosen then rejected (one row each pair, or
    several pairs packed with restarting positions), and the loss is the mean over pairs. The reference is the
    model with its adapters disabled for LoRA and QLoRA (no second copy), and for a full fine-tune log-probabilities
    computed once before training by `prepare`, cached by content and reused on resume."""

    STATS = (
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracy",
        "rewards/margin",
        "logps/chosen",
        "logps/rejected",
    )

    def __init__(self, objective: str, settings: PreferenceSettings, world: World):
        self.objective, self.settings, self.world = objective, settings, world
        self.needs_reference = objective not in REFERENCE_FREE
        self.stats = torch.zeros(len(self.STATS), dtype=torch.float64)  # sums over the pairs since the last metrics

    def prepare(self, model: torch.nn.Module, data: TrainingData, run: Forwards) -> None:
        if self.needs_reference and not hasattr(model, "disable_adapter"):
            reference_pass(model, data.rows, run, self.world)

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        """The pairs of this micro-batch."""
        return len(trained_token_counts(batch)) // 2

    def loss_sum(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = dict(batch)
        reference = batch.pop("reference_logps", None)
        logps = token_logps(model, batch)
        if self.needs_reference and reference is None:
            with torch.no_grad(), model.disable_adapter():
                reference = token_logps(model, batch)
        counts = trained_token_counts(batch).to(logps.dtype)
        ref_chosen, ref_rejected = (reference[0::2], reference[1::2]) if self.needs_reference else (None, None)
        losses, chosen_rewards, rejected_rewards = pair_losses(
            self.objective,
            self.settings,
            logps[0::2],
            logps[1::2],
            ref_chosen,
            ref_rejected,
            counts[0::2],
            counts[1::2],
        )
        margin = chosen_rewards - rejected_rewards
        stats = (chosen_rewards, rejected_rewards, (margin > 0).float(), margin, logps[0::2], logps[1::2])
        self.stats += torch.stack([x.detach().double().sum().cpu() for x in stats])
        return losses.sum()

    def metrics(self, loss_sum: float, count: float) -> dict[str, float]:
        """The window's mean loss and, averaged over its pairs on every rank, rewards, accuracy and log-probs."""
        sums = [all_reduce_sum(float(x), self.world) for x in self.stats]
        self.stats.zero_()
        pairs = max(count, 1)
        return {
            "loss": loss_sum / pairs,
            **{k: v / pairs for k, v in zip(self.STATS, sums, strict=True)},
            "pairs": count,
        }


def reference_pass(model: torch.nn.Module, rows: Sequence[Row], run: Forwards, world: World) -> None:
    """The reference log-probabilities of every sample, into rows[i].reference_logps: the model as loaded, before
    any step, in batches as training runs them. Cached under a key of the weights and the rows, so a resumed run (or
    a rerun) reads them back; rank 0 computes, the other ranks read its cache."""
    entry = run.cache_dir / "reference" / _reference_key(model, rows)
    path = entry / "logps.safetensors"
    with main_first(world):
        if not path.exists():
            logger.info(f"reference pass: log-probs of {sum(r.position_ids.count(0) for r in rows)} replies")
            logps = []
            with torch.no_grad():
                for start in range(0, len(rows), run.batch_size):
                    batch = run.collate(rows[start : start + run.batch_size])
                    batch = {k: v.to(run.device) for k, v in batch.items() if k != "desirable"}  # KTO's labels
                    with run.autocast():
                        logps.append(token_logps(model, batch).cpu())
            write_atomically(entry, lambda tmp: save_file({"logps": torch.cat(logps)}, tmp / path.name))
        else:
            logger.info(f"reference log-probs from cache: {path}")
    values = load_file(path)["logps"].tolist()
    for row in rows:
        n = row.position_ids.count(0)
        row.reference_logps, values = values[:n], values[n:]


def _reference_key(model: torch.nn.Module, rows: Sequence[Row]) -> str:
    """A digest of the weights' bytes and of the rows' tokens, labels and positions."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    for row in rows:
        digest.update(json.dumps([row.input_ids, row.labels, row.position_ids]).encode())
    return digest.hexdigest()[:32]


class Reward:
    """A reward model: a scalar head read at the last token of each sequence, trained with the Bradley-Terry loss
    -log sigmoid(r_chosen - r_rejected) on pairs (the mean over pairs). The last token is found from the position
    ids (where the next sequence or the padding starts), so the padding side does not matter."""

    STATS = ("rewards/chosen", "rewards/rejected", "rewards/accuracy", "rewards/margin")

    def __init__(self, world: World):
        self.world = world
        self.stats = torch.zeros(len(self.STATS), dtype=torch.float64)

    def prepare(self, model: torch.nn.Module, data: TrainingData, run: Forwards) -> None:
        """Nothing to compute ahead."""

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        return len(trained_token_counts(batch)) // 2

    def loss_sum(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        scores = sequence_scores(model, batch)
        chosen, rejected = scores[0::2], scores[1::2]
        margin = (chosen - rejected).detach()
        stats = (chosen.detach(), rejected.detach(), (margin > 0).float(), margin)
        self.stats += torch.stack([x.double().sum().cpu() for x in stats])
        return -F.logsigmoid(chosen - rejected).sum()

    metrics = Preference.metrics


def sequence_scores(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The score head's value (fp32) at the last token of each sequence with trained tokens, in batch order."""
    lm = causal_lm(model)
    hidden = hidden_states(lm, batch)
    starts = batch["position_ids"] == 0
    # a sequence ends where the next one starts, or at the end of its row
    ends = torch.cat([starts[:, 1:], torch.ones_like(starts[:, :1])], dim=1)
    _, sample, _ = _trained_positions(batch)
    kept = torch.zeros(int(starts.sum()), dtype=torch.bool, device=starts.device)
    kept[sample] = True  # sequences with trained tokens: not padding
    return lm.score(hidden[ends][kept]).squeeze(-1).float()


def kto_losses(
    s: PreferenceSettings, logratios: torch.Tensor, desirable: torch.Tensor, kl: torch.Tensor
) -> torch.Tensor:
    """Each sample's KTO loss (Ethayarajh et al. 2024, eq. 7, as TRL's KTOTrainer): from the log-ratio of its reply
    (policy over reference), its label and the batch's KL estimate, weighted by desirable/undesirable_weight."""
    return torch.where(
        desirable,
        s.desirable_weight * (1 - torch.sigmoid(s.beta * (logratios - kl))),
        s.undesirable_weight * (1 - torch.sigmoid(s.beta * (kl - logratios))),
    )


class KTO:
    """KTO on unpaired replies, each labelled desirable or not: the mean over samples of kto_losses. Each sample is
    two sequences (see encode.with_kl_replies): its conversation, and its KL sequence, the same prompt answered by
    the previous record's reply (a rotation by one in file order, as TRL rotates completions by one). The reference
    is found as for the pairwise objectives: adapters disabled (LoRA, QLoRA) or the cached reference pass (full).

    The KL estimate z0 of a micro-batch, as TRL's: the mean over its samples on every rank of the KL sequences'
    log-ratios (policy over reference), detached, clamped at 0. xtune forms it as the sum over the micro-batch's
    samples, summed over the ranks, divided by the samples of all ranks (TRL: the mean of each rank's mean, the same
    where the ranks hold equal sample counts, as TRL's unpacked batches do). Each micro-batch has its own estimate,
    as each of TRL's does; the loss is then exact over the global window (sum over samples / samples). TRL's batches
    read the dataset in order so that a batch's KL replies are its own replies rotated; xtune shuffles and packs,
    so a batch's KL replies are those of each sample's predecessor in the file: the same estimator of the policy's
    KL from the reference on mismatched pairs, from a different draw."""

    STATS = ("rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected", "desirable", "undesirable", "kl")

    def __init__(self, settings: PreferenceSettings, world: World):
        self.settings, self.world = settings, world
        self.stats = torch.zeros(len(self.STATS), dtype=torch.float64)
        self.estimates = 0  # micro-batches whose KL estimate is summed in stats

    def prepare(self, model: torch.nn.Module, data: TrainingData, run: Forwards) -> None:
        if not hasattr(model, "disable_adapter"):
            reference_pass(model, data.rows, run, self.world)

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        """The samples of this micro-batch (each with its KL sequence)."""
        return len(trained_token_counts(batch)) // 2

    def loss_sum(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = dict(batch)
        reference, desirable = batch.pop("reference_logps", None), batch.pop("desirable")
        logps = token_logps(model, batch)
        if reference is None:
            with torch.no_grad(), model.disable_adapter():
                reference = token_logps(model, batch)
        reference = reference.to(logps)
        logratios, kl_logratios = logps[0::2] - reference[0::2], (logps[1::2] - reference[1::2]).detach()
        kl_sum = all_reduce_sum(float(kl_logratios.double().sum()), self.world)
        kl = torch.tensor(kl_sum / all_reduce_sum(len(kl_logratios), self.world)).clamp(min=0).to(logps)
        losses = kto_losses(self.settings, logratios, desirable, kl)
        rewards, own = self.settings.beta * logratios.detach(), logps[0::2].detach()
        stats = [rewards[desirable], rewards[~desirable], own[desirable], own[~desirable]]
        self.stats += torch.tensor(
            [*(float(x.double().sum()) for x in stats), float(desirable.sum()), float((~desirable).sum()), float(kl)],
            dtype=torch.float64,
        )
        self.estimates += 1
        return losses.sum()

    def metrics(self, loss_sum: float, count: float) -> dict[str, float]:
        """The window's mean loss; rewards and log-probs averaged over the desirable and the undesirable replies of
        every rank; kl: the mean of the window's micro-batch estimates."""
        sums = dict(zip(self.STATS, (all_reduce_sum(float(x), self.world) for x in self.stats), strict=True))
        estimates = all_reduce_sum(self.estimates, self.world)
        self.stats.zero_()
        self.estimates = 0
        good, bad = max(sums["desirable"], 1), max(sums["undesirable"], 1)
        return {
            "loss": loss_sum / max(count, 1),
            "rewards/chosen": sums["rewards/chosen"] / good,
            "rewards/rejected": sums["rewards/rejected"] / bad,
            "rewards/margin": sums["rewards/chosen"] / good - sums["rewards/rejected"] / bad,
            "logps/chosen": sums["logps/chosen"] / good,
            "logps/rejected": sums["logps/rejected"] / bad,
            "kl": sums["kl"] / max(estimates, 1),
            "samples": count,
        }


def _sft(training: TrainingSettings, world: World) -> Objective:
    return SFT()  # compiled by the recipe where training.compile decides so (SFT.compile)


def _preference(objective: str) -> Callable[[TrainingSettings, World], Objective]:
    return lambda training, world: Preference(objective, training.preference, world)


OBJECTIVES: dict[str, Callable[[TrainingSettings, World], Objective]] = {
    "sft": _sft,
    **{name: _preference(name) for name in PREFERENCE_OBJECTIVES if name != "reward"},
    "reward": lambda training, world: Reward(world),
    "kto": lambda training, world: KTO(training.preference, world),
}


def build_objective(training: TrainingSettings, world: World) -> Objective:
    return OBJECTIVES[training.objective](training, world)
