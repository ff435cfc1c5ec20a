"""What crash safety costs a checkpoint write: save_checkpoint as shipped (files flushed with fsync before and after
the rename, a manifest of sizes and CRC-32s written last) against the same write with fsync made a no-op, and with
neither fsync nor the manifest, alternating in one process, on the tiny demo model (LoRA and full) and on a larger
state.

python benchmarks/bench_checkpoint.py                    # 5 pairs each, the work dirs under the system temp dir
python benchmarks/bench_checkpoint.py --dir /data/tmp --pairs 9 --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from unittest import mock

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM

from xtune.train import checkpoint

TINY_LLAMA = Path(__file__).resolve().parents[1] / "src" / "xtune" / "assets" / "tiny-llama"


def tiny_model(method: str) -> torch.nn.Module:
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(TINY_LLAMA))
    if method == "lora":
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    return model


def large_model(parameters: int) -> torch.nn.Module:
    width = 2048
    return torch.nn.Sequential(*[torch.nn.Linear(width, width, bias=False) for _ in range(parameters // width**2)])


def stepped(model: torch.nn.Module):
    """The model with an optimizer that has taken one step, so its state (two moments per weight) exists."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    for p in trainable:
        p.grad = torch.randn_like(p)
    optimizer.step()
    return model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


@contextmanager
def without(fsync: bool, manifest: bool):
    """The write without fsync calls and/or without the manifest (both: the write as it was before)."""
    with (
        mock.patch.object(os, "fsync", lambda fd: None) if fsync else nullcontext(),
        mock.patch.object(checkpoint, "write_manifest", lambda d: None) if manifest else nullcontext(),
    ):
        yield


def time_save(work_dir: Path, state, step: int) -> float:
    started = time.perf_counter()
    checkpoint.save_checkpoint(work_dir, step, *state, extra={}, keep=1)
    return time.perf_counter() - started


def measure(name: str, model: torch.nn.Module, root: Path, pairs: int) -> dict:
    state = stepped(model)
    work_dir = root / name
    time_save(work_dir, state, 0)  # warm up: first-touch page faults, imports
    variants = {"shipped_s": (False, False), "no_fsync_s": (True, False), "neither_s": (True, True)}
    times = {key: [] for key in variants}
    step = 0
    for _ in range(pairs):
        for key, (no_fsync, no_manifest) in variants.items():
            step += 1
            with without(no_fsync, no_manifest):
                times[key].append(time_save(work_dir, state, step))
    size = sum(p.stat().st_size for p in checkpoint.list_checkpoints(work_dir)[-1].rglob("*") if p.is_file())
    result = {"workload": name, "checkpoint_mib": round(size / 2**20, 1)}
    result.update({key: round(statistics.median(values), 4) for key, values in times.items()})
    result["ratio"] = round(result["shipped_s"] / result["neither_s"], 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--dir", help="where to write (the disk under test); default: the system temp dir")
    parser.add_argument("--large-parameters", type=int, default=100_000_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    workloads = {
        "tiny LoRA": lambda: tiny_model("lora"),
        "tiny full": lambda: tiny_model("full"),
        f"{args.large_parameters / 1e6:.0f}M full": lambda: large_model(args.large_parameters),
    }
    with tempfile.TemporaryDirectory(dir=args.dir) as root:
        results = [measure(name, build(), Path(root), args.pairs) for name, build in workloads.items()]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{'workload':12s} {'size':>12s} {'shipped':>9s} {'no fsync':>9s} {'neither':>9s} {'ratio':>6s}")
    for r in results:
        print(
            f"{r['workload']:12s} {r['checkpoint_mib']:8.1f} MiB {r['shipped_s']:7.3f} s {r['no_fsync_s']:7.3f} s "
            f"{r['neither_s']:7.3f} s {r['ratio']:5.2f}x"
        )


if __name__ == "__main__":
    main()
