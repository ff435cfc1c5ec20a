"""Data preparation throughput: template + tokenize + pack on a generated alpaca set, cold (in one process and in
worker processes) and cached.

python benchmarks/bench_data.py                 # 100k records, 1 and 2 tokenizer processes
python benchmarks/bench_data.py --records 20000 --num-proc 1 4 --json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

import datasets

from xtune.config.schema import validate_config
from xtune.data import build_training_data
from xtune.models import load_tokenizer


def generate(path: Path, records: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    words = [
        "the",
        "model",
        "learns",
        "to",
        "follow",
        "instructions",
        "and",
        "answer",
        "questions",
        "about",
        "data",
        "training",
        "tokens",
        "packing",
        "templates",
        "labels",
        "loss",
        "a",
        "of",
        "in",
        "on",
        "with",
        "for",
    ]
    with path.open("w") as f:
        for _ in range(records):
            n = rng.randint(20, 400)
            f.write(
                json.dumps(
                    {
                        "instruction": " ".join(rng.choices(words, k=n // 3)),
                        "input": "",
                        "output": " ".join(rng.choices(words, k=n - n // 3)),
                    }
                )
                + "\n"
            )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--num-proc", type=int, nargs="+", default=[1, 2], help="tokenizer processes to compare")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    datasets.disable_progress_bars()
    tokenizer = load_tokenizer("builtin:tiny-llama")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "alpaca.jsonl"
        generate(data, args.records)

        def config(num_proc: int, cache_dir: str):
            data_settings = {
                "datasets": [{"path": str(data), "format": "alpaca"}],
                "template": "qwen_chat",
                "max_length": args.max_length,
                "pack_to_max_length": True,
                "cache_dir": cache_dir,
                "num_proc": num_proc,
            }
            return validate_config({"model": {"path": "builtin:tiny-llama"}, "data": data_settings}).data

        timings = {}
        for num_proc in args.num_proc:  # each cold run with its own empty cache
            start = time.perf_counter()
            prepared = build_training_data(config(num_proc, str(Path(tmp) / f"cache{num_proc}")), tokenizer)
            timings[f"cold_{num_proc}_proc"] = time.perf_counter() - start
        start = time.perf_counter()
        prepared = build_training_data(
            config(args.num_proc[-1], str(Path(tmp) / f"cache{args.num_proc[-1]}")), tokenizer
        )
        timings["cached"] = time.perf_counter() - start
    result = {
        "records": args.records,
        "tokens": prepared.num_tokens,
        "rows": len(prepared.rows),
        "fill": prepared.fill,
        **{f"{run}_tokens_per_s": prepared.num_tokens / seconds for run, seconds in timings.items()},
        **{f"{run}_s": seconds for run, seconds in timings.items()},
        "cores": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        runs = ", ".join(
            f"{run} {prepared.num_tokens / seconds:,.0f} tokens/s ({seconds:.1f} s)" for run, seconds in timings.items()
        )
        print(
            f"{args.records} records, {prepared.num_tokens} tokens -> {len(prepared.rows)} rows "
            f"(fill {prepared.fill:.1%}); {runs}"
        )


if __name__ == "__main__":
    main()
