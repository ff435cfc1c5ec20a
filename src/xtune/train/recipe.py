"""The fine-tuning recipe: one explicit training loop for full, LoRA and QLoRA training on one device.

Read top to bottom: setup (tokenizer, data, model, optimizer, schedule, resume), then train (one optimizer step
per accumulation window), evaluate and save along the way, and write a Hugging Face directory at the end.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import torch
import yaml
from rich.console import Console

from xtune.chat.generate import GenerationSettings
from xtune.chat.session import ChatSession
from xtune.config.schema import Config
from xtune.data import build_training_data
from xtune.data.packing import collate, epoch_batches
from xtune.io import write_atomically
from xtune.models.load import (
    attach_adapters,
    default_device,
    fit_embeddings,
    load_base_model,
    load_tokenizer,
    save_random_init,
)
from xtune.templates import ChatTemplate, config_template
from xtune.train.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from xtune.train.loss import count_trained_tokens, loss_sum
from xtune.train.metrics import RunLog, logger, setup_logging

CONFIG_FILE = "xtune_config.yaml"


def lr_lambda(schedule: str, warmup_steps: int, total_steps: int):
    """Linear warmup, then cosine or linear decay to zero, or constant."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress

    return factor


def cpu_has_fast_bf16() -> bool:
    """AMX or AVX512-BF16: bf16 matmuls several times faster than fp32 (5x measured on a Xeon with AMX)."""
    try:
        return torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    except AttributeError:  # private helpers; absent on other builds
        return False


def autocast_context(mode: str, device: torch.device):
    """bf16 autocast on a GPU that has it, and on CPUs with AMX/AVX512-BF16, where it is faster than fp32."""
    if mode == "auto":
        on_gpu = device.type == "cuda" and torch.cuda.is_bf16_supported()
        on_cpu = device.type == "cpu" and cpu_has_fast_bf16()
        mode = "bf16" if on_gpu or on_cpu else "no"
    if mode == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class FinetuneRecipe:
    def __init__(self, cfg: Config, work_dir: Path, device: torch.device | None = None):
        self.cfg = cfg.model_copy(deep=True)  # setup records resolved choices in it
        self.work_dir = Path(work_dir)
        self.device = device or default_device()

    # ------------------------------------------------------------------ setup
    def setup(self, resume: str | bool | None = None) -> None:
        cfg = self.cfg
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.console = Console(stderr=True)
        setup_logging(self.work_dir / "train.log", self.console)  # from the start: setup and resume are logged too
        torch.manual_seed(cfg.training.seed)
        self.tokenizer = load_tokenizer(cfg.model.path, cfg.model.trust_remote_code, cfg.model.add_special_tokens)
        self.template = config_template(cfg, self.tokenizer)
        if isinstance(self.template, ChatTemplate):  # record what `auto` chose, for chat and export
            cfg.data.template = self.template.name
        (self.work_dir / CONFIG_FILE).write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False, allow_unicode=True))
        self.data = build_training_data(cfg.data, self.tokenizer, self.template, seed=cfg.training.seed)

        model_settings = cfg.model
        if model_settings.random_init and model_settings.method != "full":
            model_settings = save_random_init(model_settings, self.work_dir / "base_model", cfg.training.seed)
        base = load_base_model(model_settings, self.device, cfg.training.seed)
        grown = fit_embeddings(base, self.tokenizer)
        # new tokens need trained rows whether the embedding grew or already had spare (untrained) rows for them
        self.model = attach_adapters(base, cfg.model, train_embeddings=grown or bool(cfg.model.add_special_tokens))
        self.model.train()

        t = cfg.training
        decay = [p for p in self.model.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in self.model.parameters() if p.requires_grad and p.ndim < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=t.lr
        )
        self.batches_per_epoch = math.ceil(len(self.data.rows) / t.batch_size)
        self.total_steps = t.max_steps or math.ceil(t.epochs * self.batches_per_epoch / t.gradient_accumulation)
        warmup = round(t.warmup_ratio * self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(t.lr_schedule, warmup, self.total_steps)
        )
        self.step = 0
        if resume:
            self._resume(resume)

    def _resume(self, resume: str | bool) -> None:
        if resume is True:
            found = list_checkpoints(self.work_dir)
            if not found:
                logger.warning(f"--resume: no checkpoint in {self.work_dir}; starting from scratch")
                return
            path = found[-1]
        else:
            path = Path(resume)
        state = load_checkpoint(path, self.model, self.optimizer, self.scheduler)
        self.step = state["step"]
        logger.info(f"resumed from {path} at step {self.step}")

    # ------------------------------------------------------------------ data order
    def micro_batches(self, start: int):
        """(batch, real token count) from micro-batch index `start` on, epoch after epoch. The order of an epoch
        depends only on seed and epoch, so a resumed run sees exactly the batches the interrupted one would have."""
        t, data = self.cfg.training, self.cfg.data
        lengths = [len(r) for r in self.data.rows]
        index = start
        while True:
            epoch, position = divmod(index, self.batches_per_epoch)
            batches = epoch_batches(lengths, t.batch_size, t.seed, epoch, data.shuffle, data.group_by_length)
            for indices in batches[position:]:
                rows = [self.data.rows[i] for i in indices]
                yield collate(rows, self.tokenizer.pad_token_id), sum(len(r) for r in rows)
                index += 1

    # ------------------------------------------------------------------ training
    def train(self) -> Path:
        t, cfg = self.cfg.training, self.cfg
        logger.info(f"data: {self.data.summary()}")
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.model.parameters())
        logger.info(
            f"model: {cfg.model.method}, {trainable:,} trainable of {total:,} parameters; "
            f"{self.total_steps} steps of {t.batch_size} x {t.gradient_accumulation} rows on {self.device}"
        )
        batches = self.micro_batches(self.step * t.gradient_accumulation)
        autocast = autocast_context(t.mixed_precision, self.device)
        with RunLog(self.work_dir, self.total_steps, self.step, self.console) as run_log:
            if self.step == 0:
                self.evaluate()
            while self.step < self.total_steps:
                started = time.perf_counter()
                window, real_tokens = [], 0  # real: not padding
                for _ in range(t.gradient_accumulation):
                    batch, n_real = next(batches)
                    window.append({k: v.to(self.device) for k, v in batch.items()})
                    real_tokens += n_real
                # The loss is the mean over every trained token of the window, not a mean of micro-batch means.
                n_trained = sum(count_trained_tokens(mb["labels"]) for mb in window)
                window_loss = 0.0
                for mb in window:
                    with autocast:
                        loss = loss_sum(self.model, mb)
                    (loss / max(n_trained, 1)).backward()
                    window_loss += loss.item()
                grad_norm = torch.nn.utils.clip_grad_norm_(
                    [p for p in self.model.parameters() if p.requires_grad], t.max_grad_norm or float("inf")
                )
                lr = self.scheduler.get_last_lr()[0]
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1

                elapsed = time.perf_counter() - started
                record = {
                    "step": self.step,
                    "loss": window_loss / max(n_trained, 1),
                    "lr": lr,
                    "grad_norm": float(grad_norm),
                    "trained_tokens": n_trained,
                    "tokens_per_s": real_tokens / elapsed,
                }
                run_log.step(record, show=self.step % t.log_every == 0 or self.step == self.total_steps)
                if self.step % cfg.evaluation.freq == 0 and self.step < self.total_steps:
                    self.evaluate()
                if self.step % cfg.saving.save_steps == 0 and self.step < self.total_steps:
                    path = save_checkpoint(
                        self.work_dir,
                        self.step,
                        self.model,
                        self.optimizer,
                        self.scheduler,
                        {"total_steps": self.total_steps},
                        cfg.saving.save_total_limit,
                    )
                    logger.info(f"saved {path}")
            self.evaluate()
            curve = run_log.save_curve()
            if curve:
                logger.info(f"training curve: {curve}")
        return self.save_final()

    # ------------------------------------------------------------------ evaluation and output
    def evaluate(self) -> None:
        ev = self.cfg.evaluation
        if not ev.inputs:
            return
        settings = GenerationSettings(max_new_tokens=ev.max_new_tokens)
        lines = []
        for prompt in ev.inputs:
            session = ChatSession(
                self.model, self.tokenizer, self.template, settings, system=ev.system or self.cfg.data.system
            )
            reply = session.ask(prompt)
            lines.append(f"### {prompt}\n{reply}\n")
            logger.info(f"eval step {self.step}: {prompt!r} -> {reply!r}")
        (self.work_dir / f"eval_outputs_step_{self.step}.txt").write_text("\n".join(lines), encoding="utf-8")

    def save_final(self) -> Path:
        """A Hugging Face directory: the PEFT adapter (or full model), the tokenizer with the chat template used
        in training, and the resolved config."""

        def write(tmp: Path) -> None:
            if hasattr(self.model, "peft_config"):
                # A grown embedding and head are in modules_to_save already; PEFT's default ("auto": the vocabulary
                # changed) would add the untrained resized originals and a second copy of each, 3x the bytes.
                self.model.save_pretrained(tmp, save_embedding_layers=False)
            else:
                self.model.save_pretrained(tmp)
            self.tokenizer.chat_template = self.template.to_jinja()
            self.tokenizer.save_pretrained(tmp)
            (tmp / CONFIG_FILE).write_text((self.work_dir / CONFIG_FILE).read_text())

        path = write_atomically(self.work_dir / "final", write)
        logger.info(f"saved {'model' if self.cfg.model.method == 'full' else 'adapter'} to {path}")
        return path
