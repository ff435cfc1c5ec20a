"""Data preparation throughput: template + tokenize + pack on a generated alpaca set, cold and cached.

python benchmarks/bench_data.py                 # 100k records
python benchmarks/bench_data.py --records 20000 --json
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
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    datasets.disable_progress_bars()
    tokenizer = load_tokenizer("builtin:tiny-llama")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "alpaca.jsonl"
        generate(data, args.records)
        cfg = validate_config(
            {
                "model": {"path": "builtin:tiny-llama"},
                "data": {
                    "datasets": [{"path": str(data), "format": "alpaca"}],
                    "template": "qwen_chat",
                    "max_length": args.max_length,
                    "pack_to_max_length": True,
                    "cache_dir": str(Path(tmp) / "c"),
                },
            }
        )
        timings = {}
        for run in ("cold", "cached"):
            start = time.perf_counter()
            prepared = build_training_data(cfg.data, tokenizer)
            timings[run] = time.perf_counter() - start
    result = {
        "records": args.records,
        "tokens": prepared.num_tokens,
        "rows": len(prepared.rows),
        "fill": prepared.fill,
        "cold_tokens_per_s": prepared.num_tokens / timings["cold"],
        "cached_tokens_per_s": prepared.num_tokens / timings["cached"],
        "cold_s": timings["cold"],
        "cached_s": timings["cached"],
        "cores": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{args.records} records, {prepared.num_tokens} tokens -> {len(prepared.rows)} rows "
            f"(fill {prepared.fill:.1%}); cold {result['cold_tokens_per_s']:,.0f} tokens/s "
            f"({timings['cold']:.1f} s), cached {result['cached_tokens_per_s']:,.0f} tokens/s "
            f"({timings['cached']:.1f} s)"
        )


if __name__ == "__main__":
    main()
