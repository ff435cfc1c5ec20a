"""The fine-tuning recipe: one explicit training loop for full, LoRA and QLoRA training, on one device or on
several processes (DDP or FSDP2, see distributed.py; DeepSpeed ZeRO, see deepspeed_engine.py).

Read top to bottom: setup (tokenizer, template, data, model, engine, optimizer, schedule, resume), then train
(one optimizer step per global accumulation window), evaluate and save along the way, and write a Hugging Face
directory at the end.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from functools import partial
from pathlib import Path

import torch
import yaml
from rich.console import Console

from xtune.chat.generate import GenerationSettings
from xtune.chat.session import ChatSession
from xtune.chat.tools import build_registry
from xtune.config.schema import Config
from xtune.data import build_training_data
from xtune.data.packing import collate, epoch_batches, group_lengths, needs_flat_batches
from xtune.errors import ConfigError
from xtune.io import write_atomically
from xtune.models.attention import use_causal_chunked_attention
from xtune.models.load import (
    attach_adapters,
    base_reference,
    default_device,
    fit_embeddings,
    load_base_model,
    load_tokenizer,
    save_random_init,
)
from xtune.templates import ChatTemplate, config_template
from xtune.train import cpu, deepspeed_engine
from xtune.train.checkpoint import (
    check_no_previous_run,
    checkpoint_to_resume,
    full_state_dict,
    load_checkpoint,
    load_sharded_checkpoint,
    read_fsdp_shards,
    remove_previous_run,
    remove_stale_writes,
    save_checkpoint,
    save_sharded_checkpoint,
    write_fsdp_shards,
    write_weight_index,
)
from xtune.train.distributed import all_reduce_sum, barrier, device_for, init_world, main_first, wrap
from xtune.train.loss import causal_lm, compile_decoder_layers
from xtune.train.metrics import RunLog, logger, setup_logging
from xtune.train.objectives import OBJECTIVES, ObjectiveLoss

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


class FinetuneRecipe:
    def __init__(self, cfg: Config, work_dir: Path, device: torch.device | None = None):
        self.cfg = cfg.model_copy(deep=True)  # setup records resolved choices in it
        self.work_dir = Path(work_dir)
        self.world = init_world()
        self.device = device_for(self.world) if self.world.distributed else device or default_device()

    # ------------------------------------------------------------------ setup
    def setup(self, resume: str | bool | None = None, overwrite: bool = False) -> None:
        """Load everything a run needs. `resume` (--resume): continue from a checkpoint (see checkpoint_to_resume);
        `overwrite` (--overwrite): remove an earlier run's outputs from the work dir first; with neither, a work dir
        that holds a run is refused."""
        cfg, world = self.cfg, self.world
        if world.distributed and cfg.training.engine == "fsdp" and cfg.model.vision and cfg.model.method != "full":
            # Stage 1 writes its projector from the module itself, which FSDP2 leaves sharded; the LoRA stage with
            # a vision tower has not been checked against one process.
            raise ConfigError(
                f"--fsdp does not support LLaVA's {cfg.model.method} stage yet; train it on several processes with "
                "the default DDP engine or --deepspeed"
            )
        t = cfg.training
        self.ds_config = deepspeed_engine.load_deepspeed_config(t) if t.engine == "deepspeed" else None
        self.zero3 = self.ds_config is not None and deepspeed_engine.zero_stage(self.ds_config) == 3
        # Before anything is written or loaded: a --resume that cannot be honoured costs nothing.
        check_no_previous_run(self.work_dir, resume, overwrite)
        resume_from, skipped = checkpoint_to_resume(self.work_dir, resume)
        torch.manual_seed(cfg.training.seed)
        # A LLaVA config (model.vision): its model, image batches and outputs come from xtune.multimodal.
        self.multimodal = None
        if cfg.model.vision is not None:
            from xtune.multimodal.model import multimodal_tokenizer
            from xtune.multimodal.train import MultimodalRun

            self.multimodal = MultimodalRun(cfg, self.work_dir)
            self.tokenizer = multimodal_tokenizer(cfg.model)
        else:
            self.tokenizer = load_tokenizer(cfg.model.path, cfg.model.trust_remote_code, cfg.model.add_special_tokens)
        self.template = config_template(cfg, self.tokenizer)
        if isinstance(self.template, ChatTemplate):  # record what `auto` chose, for chat and export
            cfg.data.template = self.template.name
        with main_first(world):  # rank 0 tokenizes and caches, the other ranks read the cache
            map_fn_of = self.multimodal.map_fn_of if self.multimodal else None
            self.data = build_training_data(cfg.data, self.tokenizer, self.template, cfg.training.seed, map_fn_of)
        # Only now, with tokenizer and data read: a run refused for bad input leaves no work dir behind.
        self.work_dir.mkdir(parents=True, exist_ok=True)
        # Also only now, so that a refused run leaves the earlier one whole; before train.log is opened again.
        removed = remove_previous_run(self.work_dir) if overwrite and world.is_main else []
        self.console = Console(stderr=True)
        # Before the model loads and resume, so they are logged too; one log, written by rank 0.
        setup_logging(self.work_dir / "train.log" if world.is_main else None, self.console)
        if removed:
            logger.info(f"--overwrite: removed the earlier run's {', '.join(removed)}")
        for line in skipped:
            logger.warning(f"--resume: skipping {line}")
        if world.is_main:  # before this run writes anything; the other ranks write nothing until the model loads
            for line in remove_stale_writes(self.work_dir):
                logger.info(f"a killed run's leftovers: {line}")
            config_text = yaml.safe_dump(cfg.model_dump(), sort_keys=False, allow_unicode=True)
            (self.work_dir / CONFIG_FILE).write_text(config_text)
        compute_dtype = cpu.autocast_dtype(t.mixed_precision, self.device)  # QLoRA's 4-bit layers compute in it
        if self.multimodal:
            self.model = self.multimodal.model(self.tokenizer, self.device, world, compute_dtype)
            self.collate = self.multimodal.collator(self.tokenizer)
        else:
            self.model = self._language_model(compute_dtype)
            pad_id, flat = self.tokenizer.pad_token_id, needs_flat_batches(self.model)
            self.collate = partial(collate, pad_token_id=pad_id, flatten=flat)
        if hasattr(self.model, "peft_config"):  # adapter_config.json of final/ and each checkpoint-N/
            for adapter in self.model.peft_config.values():
                if base := adapter.base_model_name_or_path:  # the same for checkpoint-N/, a sibling of final/
                    adapter.base_model_name_or_path = base_reference(base, self.work_dir / "final", self.work_dir)
        self.model.train()
        self.n_params = (  # counted before an engine partitions them
            sum(p.numel() for p in self.model.parameters() if p.requires_grad),
            sum(p.numel() for p in self.model.parameters()),
        )
        # Every training forward goes through this module, which the engine wraps (FSDP2 shards in place, so the
        # optimizer below sees the sharded parameters; DeepSpeed wraps module and optimizer together below).
        self.fsdp = world.distributed and t.engine == "fsdp"
        self.adapter_only = cfg.model.method != "full"  # sharded checkpoints and exports skip the frozen base
        if t.compile:
            compile_decoder_layers(self.model)
            if self.device.type == "cpu" and cfg.model.attn_implementation == "auto":
                use_causal_chunked_attention(causal_lm(self.model).get_decoder().config)
        self.objective = OBJECTIVES["sft"](compile=t.compile)
        self.loss_module = ObjectiveLoss(self.model, self.objective)
        if self.ds_config is None:
            self.loss_module = wrap(self.loss_module, t.engine, world)

        decay = [p for p in self.model.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in self.model.parameters() if p.requires_grad and p.ndim < 2]
        # fused: one kernel for all parameters, 4.6x faster than the default (foreach) step for 60M fp32
        # parameters on CPU (benchmarks.md); it exists on CPU and CUDA.
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=t.lr,
            fused=self.device.type in ("cpu", "cuda"),
        )
        self.deepspeed = None
        if self.ds_config is not None:
            self.ds_config = deepspeed_engine.with_precision(self.ds_config, self.model)
            if world.is_main:  # what DeepSpeed ran with, for the record
                (self.work_dir / "deepspeed_config.json").write_text(json.dumps(self.ds_config, indent=2))
            self.deepspeed = deepspeed_engine.initialize(self.loss_module, self.optimizer, self.ds_config)
            self.loss_module = self.deepspeed
        self.batches_per_epoch = math.ceil(len(self.data.rows) / t.batch_size)
        self.micro_batches_per_step = t.gradient_accumulation * world.size  # the global batch, in micro-batches
        self.total_steps = t.max_steps or math.ceil(t.epochs * self.batches_per_epoch / self.micro_batches_per_step)
        warmup = round(t.warmup_ratio * self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(t.lr_schedule, warmup, self.total_steps)
        )
        self.step = 0
        if resume_from is not None:
            self._resume(resume_from)

    def _language_model(self, compute_dtype: torch.dtype | None) -> torch.nn.Module:
        """The LLM to train: loaded (or randomly initialised, saved as the adapter's base) with its adapters."""
        cfg, world = self.cfg, self.world
        model_settings = cfg.model
        if model_settings.random_init and model_settings.method != "full":
            base_dir = self.work_dir / "base_model"
            with main_first(world):
                if world.is_main:
                    save_random_init(model_settings, base_dir, cfg.training.seed)
            model_settings = model_settings.model_copy(update={"path": str(base_dir.resolve()), "random_init": False})
        base = load_base_model(model_settings, self.device, cfg.training.seed, compute_dtype)
        grown = fit_embeddings(base, self.tokenizer)
        # new tokens need trained rows whether the embedding grew or already had spare (untrained) rows for them
        return attach_adapters(base, cfg.model, train_embeddings=grown or bool(cfg.model.add_special_tokens))

    def _resume(self, path: Path) -> None:
        if self.deepspeed is not None:
            read = partial(deepspeed_engine.load_shards, self.deepspeed, trainable_only=self.adapter_only)
            state = load_sharded_checkpoint(path, read, self.scheduler)
        elif self.fsdp:
            read = partial(
                read_fsdp_shards, module=self.loss_module, optimizer=self.optimizer, trainable_only=self.adapter_only
            )
            state = load_sharded_checkpoint(path, read, self.scheduler)
        else:
            state = load_checkpoint(path, self.model, self.optimizer, self.scheduler)
        self.step = state["step"]
        logger.info(f"resumed from {path} at step {self.step}")

    # ------------------------------------------------------------------ data order
    def micro_batches(self, start: int):
        """(batch, real token count) from global micro-batch index `start` on, epoch after epoch; rank r takes
        every world-size-th micro-batch. The order of an epoch depends only on seed and epoch, so a resumed run
        sees exactly the batches the interrupted one would have, and N ranks see what one process would."""
        t, data = self.cfg.training, self.cfg.data
        lengths = group_lengths(self.data.rows)
        index = start
        while True:
            epoch, position = divmod(index, self.batches_per_epoch)
            batches = epoch_batches(lengths, t.batch_size, t.seed, epoch, data.shuffle, data.group_by_length)
            for indices in batches[position:]:
                if index % self.world.size == self.world.rank:
                    rows = [self.data.rows[i] for i in indices]
                    yield self.collate(rows), sum(len(r) for r in rows)
                index += 1

    # ------------------------------------------------------------------ training
    def train(self) -> Path:
        t, cfg = self.cfg.training, self.cfg
        logger.info(f"data: {self.data.summary()}")
        trainable, total = self.n_params
        logger.info(
            f"model: {cfg.model.method}, {trainable:,} trainable of {total:,} parameters; "
            f"{self.total_steps} steps of {t.batch_size} x {t.gradient_accumulation} rows on {self.device}"
        )
        if self.device.type == "cpu" and (what := cpu.tune_malloc_for(cfg.model.method)):
            logger.info(f"glibc {what} (set any MALLOC_* variable to opt out)")
        world = self.world
        batches = self.micro_batches(self.step * self.micro_batches_per_step)
        autocast = cpu.autocast_context(t.mixed_precision, self.device)
        run_log = RunLog(self.work_dir, self.total_steps, self.step, self.console) if world.is_main else None
        with run_log or contextlib.nullcontext():
            if self.step == 0:
                self.evaluate()
            while self.step < self.total_steps:
                started = time.perf_counter()
                window, real_tokens = [], 0  # real: not padding
                for _ in range(t.gradient_accumulation):
                    batch, n_real = next(batches)
                    window.append({k: v.to(self.device) for k, v in batch.items()})
                    real_tokens += n_real
                # The loss is the objective's sum over the global window (all micro-batches of all ranks) divided by
                # its global count, not a mean of micro-batch means; engines average gradients over ranks, hence
                # * size.
                count = all_reduce_sum(sum(self.objective.count(mb) for mb in window), world)
                window_loss = 0.0
                for mb in window:
                    with autocast:
                        loss = self.loss_module(**mb)
                    self._backward(loss * world.size / max(count, 1))
                    window_loss += loss.item()
                window_loss = all_reduce_sum(window_loss, world)
                real_tokens = all_reduce_sum(real_tokens, world)
                lr = self.scheduler.get_last_lr()[0]
                grad_norm = self._optimizer_step()
                self.scheduler.step()
                self.step += 1

                elapsed = time.perf_counter() - started
                metrics = self.objective.metrics(window_loss, count)
                record = {"step": self.step, **metrics, "lr": lr, "grad_norm": grad_norm}
                record["tokens_per_s"] = real_tokens / elapsed
                if run_log is not None:
                    run_log.step(record, show=self.step % t.log_every == 0 or self.step == self.total_steps)
                if self.step % cfg.evaluation.freq == 0 and self.step < self.total_steps:
                    self.evaluate()
                if self.step % cfg.saving.save_steps == 0 and self.step < self.total_steps:
                    self.save_checkpoint()
            self.evaluate()
            curve = run_log.save_curve() if run_log is not None else None
            if curve:
                logger.info(f"training curve: {curve}")
        return self.save_final()

    def _backward(self, loss: torch.Tensor) -> None:
        if self.deepspeed is None:
            loss.backward()
            return
        # The loss is already normalised over the whole global window: no 1/accumulation from DeepSpeed. Its
        # step() counts micro-batches and updates the weights (clipping per its config) after the window's last.
        self.deepspeed.backward(loss, scale_wrt_gas=False)
        self.deepspeed.step()

    def _optimizer_step(self) -> float:
        """Clip, update and clear the gradients of the window just accumulated; the gradient norm before clipping."""
        if self.deepspeed is not None:  # it stepped in _backward; None: an fp16 overflow skipped the step
            norm = self.deepspeed.get_global_grad_norm()
            return float("nan") if norm is None else float(norm)
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [p for p in self.model.parameters() if p.requires_grad], self.cfg.training.max_grad_norm or float("inf")
        )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)

    def close(self) -> None:
        """Release DeepSpeed's hooks and partitions while the process group still exists."""
        if self.deepspeed is not None:
            self.deepspeed.destroy()
            self.deepspeed = self.loss_module = None

    # ------------------------------------------------------------------ evaluation and output
    def save_checkpoint(self) -> None:
        extra, keep = {"total_steps": self.total_steps}, self.cfg.saving.save_total_limit
        write = None
        if self.deepspeed is not None:
            write = partial(deepspeed_engine.save_shards, self.deepspeed, trainable_only=self.adapter_only)
        elif self.fsdp:
            write = partial(
                write_fsdp_shards, module=self.loss_module, optimizer=self.optimizer, trainable_only=self.adapter_only
            )
        if write is not None:
            path = save_sharded_checkpoint(
                self.work_dir, self.step, write, self.scheduler, extra, keep, self.world.is_main
            )
        elif self.world.is_main:  # DDP replicas are identical: rank 0 writes
            path = save_checkpoint(
                self.work_dir,
                self.step,
                self.model,
                self.optimizer,
                self.scheduler,
                extra,
                keep,
                write_files=self._write_checkpoint_files,
            )
        else:
            return
        logger.info(f"saved {path}")

    def _write_checkpoint_files(self, out: Path) -> None:
        """What makes a checkpoint usable as final/ is (chat, convert merge, convert checkpoint), beside its
        trainable.safetensors: small files only, never a second copy of the weights."""
        if hasattr(self.model, "peft_config"):
            for adapter in self.model.peft_config.values():
                adapter = copy.copy(adapter)
                adapter.inference_mode = True  # as PEFT writes it into final/
                adapter.save_pretrained(out)
        elif self.multimodal is None:  # a full fine-tune: the checkpoint holds every parameter
            self.model.config.save_pretrained(out)
            self.model.generation_config.save_pretrained(out)
            write_weight_index(out, self.model)
        self._write_tokenizer_and_config(out)
        if self.multimodal and self.cfg.model.method != "frozen":
            self.multimodal.save(self.model, out, self.tokenizer, weights=False)

    def _write_tokenizer_and_config(self, out: Path) -> None:
        """The tokenizer with the chat template used in training, and the resolved config."""
        self.tokenizer.chat_template = self.template.to_jinja()
        self.tokenizer.save_pretrained(out)
        (out / CONFIG_FILE).write_text((self.work_dir / CONFIG_FILE).read_text())

    def evaluate(self) -> None:
        ev = self.cfg.evaluation
        if not ev.inputs or not self.world.is_main:
            return
        if self.fsdp or self.zero3:  # rank 0 alone cannot gather sharded weights for generation
            logger.info("evaluation inputs are skipped with sharded weights; chat with the final model instead")
            return
        settings = GenerationSettings(max_new_tokens=ev.max_new_tokens)
        tools = build_registry(ev.tools, ev.search_docs, solve_time_limit=ev.solve_time_limit) if ev.tools else None
        system = ev.system or self.cfg.data.system
        lines = []
        for prompt in ev.inputs:
            session = ChatSession(
                self.model, self.tokenizer, self.template, settings, system, tools=tools, list_tools=ev.list_tools
            )
            reply = session.ask(prompt)
            lines.append(f"### {prompt}\n{reply}\n")
            logger.info(f"eval step {self.step}: {prompt!r} -> {reply!r}")
        (self.work_dir / f"eval_outputs_step_{self.step}.txt").write_text("\n".join(lines), encoding="utf-8")

    def save_final(self) -> Path:
        """A Hugging Face directory: the PEFT adapter (or full model), the tokenizer with the chat template used
        in training, and the resolved config."""

        # Under FSDP2 and ZeRO-3 every rank takes part in gathering the full weights; rank 0 writes them.
        gathered = None
        if self.fsdp:
            gathered = full_state_dict(self.loss_module, trainable_only=self.adapter_only)
        elif self.zero3:
            gathered = deepspeed_engine.consolidated_state_dict(self.deepspeed, trainable_only=self.adapter_only)
        if gathered is not None:
            gathered = {k.removeprefix("model."): v for k, v in gathered.items()}  # ObjectiveLoss.model
        if not self.world.is_main:
            barrier(self.world)
            return self.work_dir / "final"

        def write(tmp: Path) -> None:
            if self.cfg.model.method == "frozen":
                pass  # LLaVA stage 1: only the projector trained; self.multimodal.save writes it
            elif hasattr(self.model, "peft_config"):
                # A grown embedding and head are in modules_to_save already; PEFT's default ("auto": the vocabulary
                # changed) would add the untrained resized originals and a second copy of each, 3x the bytes.
                self.model.save_pretrained(tmp, save_embedding_layers=False, state_dict=gathered)
            else:
                self.model.save_pretrained(tmp, state_dict=gathered)
            self._write_tokenizer_and_config(tmp)
            if self.multimodal:
                self.multimodal.save(self.model, tmp, self.tokenizer)

        path = write_atomically(self.work_dir / "final", write)
        saved = {"full": "model", "frozen": "projector"}.get(self.cfg.model.method, "adapter")
        logger.info(f"saved {saved} to {path}")
        barrier(self.world)
        return path
