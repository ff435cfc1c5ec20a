"""Run logging: a rich progress bar, log lines to the console and work_dir/train.log, per-step metrics in
metrics.jsonl (and TensorBoard when installed), and a loss/learning-rate curve at the end."""

from __future__ import annotations

import json
import logging
import resource
import sys
from pathlib import Path

import torch
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from xtune.io import write_text_atomically

logger = logging.getLogger("xtune")


def setup_logging(log_file: Path | None = None, console: Console | None = None) -> None:
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.addHandler(RichHandler(console=console or Console(stderr=True), show_path=False, markup=False))
    if log_file is not None:
        file_handler = logging.FileHandler(log_file, encoding="utf-8")
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(file_handler)


def memory_used() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB GPU"
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return f"{peak / 2**30:.2f} GiB RSS"


class RunLog:
    def __init__(self, work_dir: Path, total_steps: int, start_step: int, console: Console):
        self.work_dir = work_dir
        self.metrics_file = work_dir / "metrics.jsonl"
        self.history = [r for r in self._read_history() if r["step"] <= start_step]  # drop a killed run's tail
        write_text_atomically(self.metrics_file, "".join(json.dumps(r) + "\n" for r in self.history))
        self.console = console
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not self.console.is_terminal,
        )
        self.task = self.progress.add_task("train", total=total_steps, completed=start_step, status="")
        self.tensorboard = _tensorboard_writer(work_dir / "tensorboard")

    def _read_history(self) -> list[dict]:
        """The records of the run so far. Appends are not flushed each step, so a crash or a full disk can cut the
        last line off: such a line is dropped with a warning (the step it was for is trained again)."""
        if not self.metrics_file.exists():
            return []
        history = []
        for number, line in enumerate(self.metrics_file.read_text(errors="replace").splitlines(), 1):
            try:
                record = json.loads(line) if line.strip() else None
            except ValueError:
                record = None
                logger.warning(f"{self.metrics_file}:{number}: dropped a cut-off record: {line[:60]!r}")
            if isinstance(record, dict) and isinstance(record.get("step"), int):
                history.append(record)
        return history

    def __enter__(self) -> RunLog:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()
        if self.tensorboard is not None:
            self.tensorboard.close()

    def step(self, record: dict, show: bool) -> None:
        self.history.append(record)
        with self.metrics_file.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            for key in ("loss", "lr", "grad_norm", "tokens_per_s", *(k for k in record if "/" in k)):
                if record.get(key) is not None:
                    self.tensorboard.add_scalar(f"train/{key}", record[key], record["step"])
        self.progress.update(
            self.task, completed=record["step"], status=f"loss {record['loss']:.4f} lr {record['lr']:.2e}"
        )
        if show:
            # an objective's own metrics (preference: rewards/accuracy, rewards/margin, ...) after the loss
            extra = "".join(f" {k} {v:.4g}" for k, v in record.items() if "/" in k)
            remaining = self.progress.tasks[0].time_remaining
            eta = f"{remaining / 60:.1f} min" if remaining is not None else "?"
            logger.info(
                f"step {record['step']}/{self.progress.tasks[0].total} loss {record['loss']:.4f}{extra} "
                f"lr {record['lr']:.3e} grad_norm {record['grad_norm']:.3f} "
                f"tokens/s {record['tokens_per_s']:.0f} eta {eta} mem {memory_used()}"
            )

    def save_curve(self) -> Path | None:
        if not self.history:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = [r["step"] for r in self.history]
        fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
        ax_loss.plot(steps, [r["loss"] for r in self.history])
        ax_loss.set_ylabel("loss")
        ax_lr.plot(steps, [r["lr"] for r in self.history], color="tab:orange")
        ax_lr.set_ylabel("learning rate")
        ax_lr.set_xlabel("step")
        fig.tight_layout()
        path = self.work_dir / "training_curve.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


def _tensorboard_writer(log_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # optional extra: pip install 'xtune[tensorboard]'
        return None
    return SummaryWriter(log_dir=str(log_dir))
