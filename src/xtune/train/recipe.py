"""The fine-tuning recipe: one explicit training loop, composed of a Task (what a batch is, how the model is built
and saved: task.py), an Engine (one process or DDP, FSDP2, DeepSpeed ZeRO: engines.py) and an Objective (the
loss: objectives.py), each chosen once in setup.

Read top to bottom: setup (run directory, tokenizer and data, model, engine and optimizer, schedule, resume), then
train (one optimizer step per global accumulation window), evaluate and save along the way, and write a Hugging
Face directory at the end.
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
from xtune.chat.tools import build_registry
from xtune.config.schema import CONFIG_FILE, Config
from xtune.data import build_training_data
from xtune.data.dataset import cache_root
from xtune.data.packing import epoch_batches, group_lengths
from xtune.evaluate import log_lm_eval
from xtune.io import write_atomically
from xtune.models.attention import use_causal_chunked_attention
from xtune.models.load import causal_lm, default_device
from xtune.templates import ChatTemplate, config_template
from xtune.train import cpu
from xtune.train.checkpoint import check_no_previous_run, checkpoint_to_resume, remove_previous_run, remove_stale_writes
from xtune.train.compile import CompileChoice, shape_signature
from xtune.train.distributed import all_reduce_sum, barrier, device_for, init_world, main_first
from xtune.train.engines import build_engine
from xtune.train.loss import compile_decoder_layers, decoder_layers
from xtune.train.metrics import RunLog, logger, setup_logging
from xtune.train.objectives import Forwards, ObjectiveLoss, build_objective, check_data
from xtune.train.sequence_parallel import sequence_parallel
from xtune.train.task import TextTask, point_adapters_at_base


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
    def __init__(
        self, cfg: Config, work_dir: Path, device: torch.device | None = None, task: type[TextTask] = TextTask
    ):
        self.cfg = cfg.model_copy(deep=True)  # setup records resolved choices in it
        self.work_dir = Path(work_dir)
        self.task_type = task
        self.world = init_world()
        self.device = device_for(self.world) if self.world.distributed else device or default_device()

    # ------------------------------------------------------------------ setup
    def setup(self, resume: str | bool | None = None, overwrite: bool = False) -> None:
        """Load everything a run needs. `resume` (--resume): continue from a checkpoint (see checkpoint_to_resume);
        `overwrite` (--overwrite): remove an earlier run's outputs from the work dir first; with neither, a work dir
        that holds a run is refused."""
        cfg = self.cfg
        # Before anything is written or loaded: a config, engine or --resume that cannot be honoured costs nothing.
        self.task = self.task_type(cfg, self.work_dir, self.world)
        self.engine = build_engine(cfg.training, self.world, trainable_only=cfg.model.method != "full")
        self.objective = build_objective(cfg.training, self.world)
        formats = [d.format for d in cfg.data.datasets]
        check_data(cfg.training.objective, formats, generates=bool(cfg.evaluation.inputs))
        self.sequence_parallel = sequence_parallel(cfg, self.world, self.objective)
        check_no_previous_run(self.work_dir, resume, overwrite)
        resume_from, skipped = checkpoint_to_resume(self.work_dir, resume)
        torch.manual_seed(cfg.training.seed)
        self._setup_data()
        check_data(cfg.training.objective, formats, self.data.kind)
        self._setup_run_dir(overwrite, skipped)
        self._setup_model()
        self._prepare_objective()
        self._setup_engine()
        self._setup_schedule()
        self.step = 0
        if resume_from is not None:
            self.step = self.engine.load_checkpoint(resume_from, self.scheduler)["step"]
            logger.info(f"resumed from {resume_from} at step {self.step}")
        self._setup_compile()

    def _setup_data(self) -> None:
        """Tokenizer, template and the tokenized (packed) rows."""
        cfg = self.cfg
        self.tokenizer = self.task.tokenizer()
        self.template = config_template(cfg, self.tokenizer)
        if isinstance(self.template, ChatTemplate):  # record what `auto` chose, for chat and export
            cfg.data.template = self.template.name
        with main_first(self.world):  # rank 0 tokenizes and caches, the other ranks read the cache
            seed = cfg.training.seed
            self.data = build_training_data(cfg.data, self.tokenizer, self.template, seed, self.task.map_fn_of)

    def _setup_run_dir(self, overwrite: bool, skipped: list[str]) -> None:
        """The work dir, its log and the resolved config: only now, with tokenizer and data read, so that a run
        refused for bad input leaves no work dir behind and an --overwrite refused so leaves the earlier run whole."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        removed = remove_previous_run(self.work_dir) if overwrite and self.world.is_main else []
        self.console = Console(stderr=True)
        # Before the model loads and resume, so they are logged too; one log, written by rank 0.
        setup_logging(self.work_dir / "train.log" if self.world.is_main else None, self.console)
        if removed:
            logger.info(f"--overwrite: removed the earlier run's {', '.join(removed)}")
        for line in skipped:
            logger.warning(f"--resume: skipping {line}")
        if self.world.is_main:  # before this run writes anything; the other ranks write nothing until the model loads
            for line in remove_stale_writes(self.work_dir):
                logger.info(f"a killed run's leftovers: {line}")
            config_text = yaml.safe_dump(self.cfg.model_dump(), sort_keys=False, allow_unicode=True)
            (self.work_dir / CONFIG_FILE).write_text(config_text)

    def _setup_model(self) -> None:
        t = self.cfg.training
        compute_dtype = cpu.autocast_dtype(t.mixed_precision, self.device)  # QLoRA's 4-bit layers compute in it
        self.model = self.task.model(self.tokenizer, self.device, compute_dtype)
        self.collate = self.task.collator(self.tokenizer, self.model)
        self.sequence_parallel.attach(self.model, self.cfg.data.max_length)
        point_adapters_at_base(self.model, self.work_dir)
        self.model.train()
        self.n_params = (  # counted before an engine partitions them
            sum(p.numel() for p in self.model.parameters() if p.requires_grad),
            sum(p.numel() for p in self.model.parameters()),
        )
        if t.compile is True:  # before the engine wraps the layers; `auto` decides once the steps are known
            self._compile()

    def _compile(self) -> None:
        """torch.compile the decoder layers and what the objective computes; compiled on CPU, attend in causal
        chunks (models/attention.py)."""
        compile_decoder_layers(self.model)
        if self.device.type == "cpu" and self.cfg.model.attn_implementation == "auto":
            use_causal_chunked_attention(causal_lm(self.model).get_decoder().config)
        getattr(self.objective, "compile", lambda: None)()  # objectives with a compiled form (SFT's fused head)

    def _prepare_objective(self) -> None:
        """What the objective checks and computes before the first step, with the model as loaded."""
        t = self.cfg.training
        autocast = lambda: cpu.autocast_context(t.mixed_precision, self.device)  # noqa: E731
        forwards = Forwards(self.collate, self.device, t.batch_size, autocast, cache_root(self.cfg.data))
        self.objective.prepare(self.model, self.data, forwards)

    def _setup_engine(self) -> None:
        """Every training forward goes through the loss module the engine wraps, with the optimizer it steps."""
        t = self.cfg.training

        def optimizer() -> torch.optim.Optimizer:
            decay = [p for p in self.model.parameters() if p.requires_grad and p.ndim >= 2]
            no_decay = [p for p in self.model.parameters() if p.requires_grad and p.ndim < 2]
            # fused: one kernel for all parameters, 4.6x faster than the default (foreach) step for 60M fp32
            # parameters on CPU (benchmarks.md); it exists on CPU and CUDA.
            return torch.optim.AdamW(
                [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                lr=t.lr,
                fused=self.device.type in ("cpu", "cuda"),
            )

        loss_module = ObjectiveLoss(self.model, self.objective)
        self.loss_module = self.engine.wrap(self.model, loss_module, optimizer, self.work_dir)
        self.optimizer = self.engine.optimizer

    def _setup_compile(self) -> None:
        """training.compile (train/compile.py): true and false as set; auto compiles where the time it saves
        clearly exceeds its cost, decided now from an earlier run of these shapes or after the first steps."""
        cfg, t = self.cfg, self.cfg.training
        settings = {
            "model": cfg.model.model_dump(exclude={"path"}),
            "data": (cfg.data.max_length, cfg.data.pack_to_max_length),
            "training": (t.batch_size, str(cpu.autocast_dtype(t.mixed_precision, self.device)), t.engine),
            "device": (self.device.type, self.world.size),
        }
        self.compile_choice = CompileChoice(
            t.compile,
            shape_signature(self.model, settings),
            self.total_steps - self.step,
            # FSDP and DeepSpeed compile with `true`; sequence parallelism does not compile
            can_switch=t.engine == "ddp" and t.sequence_parallel == 1 and decoder_layers(self.model) is not None,
        )
        if self.compile_choice.at_setup() and t.compile == "auto":  # `true` compiled before the engine wrapped
            self._compile()
        if t.compile == "auto" and self.compile_choice.reason:
            verdict = "compiling" if self.compile_choice.compiled else "not compiling"
            logger.info(f"training.compile auto: {verdict}: {self.compile_choice.reason}")

    def _setup_schedule(self) -> None:
        t = self.cfg.training
        self.batches_per_epoch = math.ceil(len(self.data.rows) / t.batch_size)
        data_ranks = self.sequence_parallel.data_size  # the ranks of a sequence-parallel group share micro-batches
        self.micro_batches_per_step = t.gradient_accumulation * data_ranks  # the global batch, in micro-batches
        self.total_steps = t.max_steps or math.ceil(t.epochs * self.batches_per_epoch / self.micro_batches_per_step)
        warmup = round(t.warmup_ratio * self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(t.lr_schedule, warmup, self.total_steps)
        )

    # ------------------------------------------------------------------ data order
    def micro_batches(self, start: int):
        """(batch, real token count) from global micro-batch index `start` on, epoch after epoch; data rank r takes
        every data-size-th micro-batch (with sequence parallelism, each rank of a group its shard of the same ones).
        The order of an epoch depends only on seed and epoch, so a resumed run sees exactly the batches the
        interrupted one would have, and N ranks see what one process would."""
        t, data = self.cfg.training, self.cfg.data
        lengths = group_lengths(self.data.rows)
        index, sp = start, self.sequence_parallel
        while True:
            epoch, position = divmod(index, self.batches_per_epoch)
            batches = epoch_batches(lengths, t.batch_size, t.seed, epoch, data.shuffle, data.group_by_length)
            for indices in batches[position:]:
                if index % sp.data_size == sp.data_rank:
                    rows = [self.data.rows[i] for i in indices]
                    yield sp.shard(self.collate(rows)), sum(len(r) for r in rows) / sp.size
                index += 1

    # ------------------------------------------------------------------ training
    def train(self) -> Path:
        t, cfg, world = self.cfg.training, self.cfg, self.world
        logger.info(f"data: {self.data.summary()}")
        trainable, total = self.n_params
        logger.info(
            f"model: {cfg.model.method}, {trainable:,} trainable of {total:,} parameters; "
            f"{self.total_steps} steps of {t.batch_size} x {t.gradient_accumulation} rows on {self.device}"
        )
        if self.device.type == "cpu" and (what := cpu.tune_malloc_for(cfg.model.method)):
            logger.info(f"glibc {what} (set any MALLOC_* variable to opt out)")
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
                    self.engine.backward(loss * world.size / max(count, 1))
                    window_loss += loss.item()
                window_loss = all_reduce_sum(window_loss, world)
                real_tokens = all_reduce_sum(real_tokens, world)
                lr = self.scheduler.get_last_lr()[0]
                grad_norm = self.engine.step()
                self.scheduler.step()
                self.step += 1

                elapsed = time.perf_counter() - started
                decided = self.compile_choice.step_done(self.step, all_reduce_sum(elapsed, world) / world.size)
                if decided is not None:
                    verdict = f"compiling from step {self.step + 1}" if decided else "not compiling"
                    logger.info(f"training.compile auto: {verdict}: {self.compile_choice.reason}")
                    if decided:
                        self._compile()
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

    def close(self) -> None:
        """Release the engine's hooks and partitions while the process group still exists."""
        self.engine.close()
        self.loss_module = None

    # ------------------------------------------------------------------ evaluation and output
    def save_checkpoint(self) -> None:
        extra, keep = {"total_steps": self.total_steps}, self.cfg.saving.save_total_limit
        path = self.engine.save_checkpoint(
            self.work_dir, self.step, self.scheduler, extra, keep, self._write_checkpoint_files
        )
        if path is not None:
            logger.info(f"saved {path}")

    def _write_checkpoint_files(self, out: Path) -> None:
        """What makes a checkpoint usable as final/ is (chat, convert merge, convert checkpoint), beside its
        trainable.safetensors: small files only, never a second copy of the weights."""
        self._write_tokenizer_and_config(out)  # first: a task's processor files save the tokenizer as it is now
        self.task.write_checkpoint_files(self.model, out, self.tokenizer)

    def _write_tokenizer_and_config(self, out: Path) -> None:
        """The tokenizer with the chat template used in training, and the resolved config."""
        self.tokenizer.chat_template = self.template.to_jinja()
        self.tokenizer.save_pretrained(out)
        (out / CONFIG_FILE).write_text((self.work_dir / CONFIG_FILE).read_text())

    def evaluate(self) -> None:
        ev = self.cfg.evaluation
        if ev.lm_eval is not None and self.world.is_main and not self.engine.shards_weights:
            log_lm_eval(self.model, self.tokenizer, self.template, ev.lm_eval, self.step, self.work_dir)
        if not ev.inputs or not self.world.is_main:
            return
        if self.engine.shards_weights:  # rank 0 alone cannot gather sharded weights for generation
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
        """A Hugging Face directory: what the task saves (the PEFT adapter, the full model, ...), the tokenizer with
        the chat template used in training, and the resolved config."""
        gathered = self.engine.gathered_state_dict()  # every rank takes part where the engine shards weights
        if not self.world.is_main:
            barrier(self.world)
            return self.work_dir / "final"
        saved = ""

        def write(tmp: Path) -> None:
            nonlocal saved
            self._write_tokenizer_and_config(tmp)  # first, as for checkpoints
            saved = self.task.save(self.model, tmp, self.tokenizer, gathered)

        path = write_atomically(self.work_dir / "final", write)
        logger.info(f"saved {saved} to {path}")
        barrier(self.world)
        return path
