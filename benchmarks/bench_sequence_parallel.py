"""Sequence parallelism on CPU processes: activation memory per rank and the cost of the all-to-all exchange.

One long sample (16k tokens by default) through a small random-init Llama, forward and backward of xtune's loss
(models/ulysses.py, train/sequence_parallel.py), with sequence_parallel 1, 2 and 4: each N runs under torchrun in
N processes of one thread each, a warm-up step, then the measured step(s). Per rank: the bytes autograd holds for
backward (every tensor saved by the graph, each storage counted once: the activation memory), the peak RSS of the
step above the RSS before it, the step time and the part of it spent in the all-to-all exchanges (the
exchange's wait for the slowest rank included). Ratios are against sequence_parallel 1 in the same invocation.

    python benchmarks/bench_sequence_parallel.py                  # 16k tokens, SP 1, 2, 4
    python benchmarks/bench_sequence_parallel.py --tokens 4096 --steps 3 --json

With more processes than cores (4 on the 2-core box) ranks share cores, so the step time of SP 4 is not a
speed-up measurement; the exchange share is the number to read.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

MODEL = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2)
VOCAB = 4096


def worker(tokens: int, steps: int, out: Path) -> None:
    import torch.distributed as dist
    from transformers import LlamaConfig, LlamaForCausalLM

    import xtune.models.ulysses as ulysses
    from xtune.config.presets import get_preset, merge
    from xtune.config.schema import validate_config
    from xtune.train.distributed import init_world
    from xtune.train.loss import loss_sum
    from xtune.train.objectives import SFT
    from xtune.train.sequence_parallel import sequence_parallel

    world = init_world()
    if not world.distributed:
        dist.init_process_group("gloo", world_size=1, rank=0)  # the exchange timer below needs nothing; SP 1 runs plain
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, max_position_embeddings=tokens, **MODEL)
    model = LlamaForCausalLM(config).train()
    cfg = validate_config(merge(get_preset("tiny_assistant_full"), {"training": {"sequence_parallel": world.size}}))
    sp = sequence_parallel(cfg, world, SFT())
    sp.attach(model, tokens)
    ids = torch.randint(0, VOCAB, (1, tokens), generator=torch.Generator().manual_seed(0))
    batch = sp.shard({"input_ids": ids, "labels": ids, "position_ids": torch.arange(tokens)[None]})

    exchange_seconds = 0.0
    exchange = ulysses._exchange

    def timed_exchange(*args):
        nonlocal exchange_seconds
        started = time.perf_counter()
        result = exchange(*args)
        exchange_seconds += time.perf_counter() - started
        return result

    ulysses._exchange = timed_exchange
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}  # saved for backward too, not activations
    results = []
    saved: dict[int, int] = {}  # storage -> bytes, of this step's tensors saved for backward

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    for step in range(steps + 1):  # the first is a warm-up
        saved.clear()

        dist.barrier()
        exchange_seconds, rss_before = 0.0, rss_gib()
        Path("/proc/self/clear_refs").write_text("5")  # a new high-water mark (VmHWM) for this step
        started = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = loss_sum(model, batch)
        loss.backward()
        elapsed = time.perf_counter() - started
        model.zero_grad(set_to_none=True)
        if step:
            results.append(
                {
                    "saved_gib": sum(saved.values()) / 2**30,
                    "peak_rss_above_gib": peak_rss_gib() - rss_before,
                    "step_s": elapsed,
                    "exchange_s": exchange_seconds,
                }
            )
    gathered = [None] * world.size
    dist.all_gather_object(gathered, results)
    if world.is_main:
        out.write_text(json.dumps(gathered))
    dist.destroy_process_group()


def rss_gib() -> float:
    return _status_gib("VmRSS:")


def peak_rss_gib() -> float:
    return _status_gib("VmHWM:")


def _status_gib(key: str) -> float:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(key))
    return int(line.split()[1]) / 2**20


def run(size: int, tokens: int, steps: int, tmp: Path) -> dict:
    out = tmp / f"sp{size}.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={size}", "--standalone", __file__]
    subprocess.run(
        [*command, "--worker", str(out), "--tokens", str(tokens), "--steps", str(steps)], check=True, env=env
    )
    ranks = json.loads(out.read_text())
    per_step = [step for rank in ranks for step in rank]
    worst = {key: max(step[key] for step in per_step) for key in per_step[0]}  # the busiest rank's step
    mean = {key: sum(step[key] for step in per_step) / len(per_step) for key in per_step[0]}
    return {
        "ranks": size,
        "saved_gib": worst["saved_gib"],
        "peak_rss_above_gib": worst["peak_rss_above_gib"],
        "step_s": worst["step_s"],
        "exchange_share": mean["exchange_s"] / mean["step_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--steps", type=int, default=1, help="measured steps after one warm-up step")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.tokens, args.steps, args.worker)
        return
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(size, args.tokens, args.steps, Path(tmp)) for size in args.sizes]
    base = rows[0]
    for row in rows:
        row["saved_ratio"] = row["saved_gib"] / base["saved_gib"]
        row["peak_rss_ratio"] = row["peak_rss_above_gib"] / base["peak_rss_above_gib"]
    if args.json:
        print(json.dumps({"tokens": args.tokens, "model": MODEL, "rows": rows}, indent=2))
        return
    print(f"one sample of {args.tokens} tokens, Llama {MODEL}, vocab {VOCAB}, fp32, forward + backward per rank")
    print("| sequence_parallel | saved for backward | ratio | step peak RSS above rest | ratio | step | all-to-all |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['ranks']} | {r['saved_gib']:.2f} GiB | {r['saved_ratio']:.2f}x | {r['peak_rss_above_gib']:.2f} GiB "
            f"| {r['peak_rss_ratio']:.2f}x | {r['step_s']:.1f} s | {100 * r['exchange_share']:.1f}% |"
        )


if __name__ == "__main__":
    main()
