"""DPO with LoRA: xtune vs TRL's DPOTrainer on the same model, pairs and settings, side by side.

One invocation generates the workload (bench_train's random-init Llama and BPE tokenizer; pairs made of its
alpaca-style records: the prompt, the record's output as chosen, another record's output as rejected), then trains
it with xtune and with TRL alternately, each in a fresh subprocess (peak RSS is each side's own), and prints the
medians of samples/s (pairs per second of `train()`) and peak RSS with their ratios. Both sides: the same saved
weights, the same chat template (xtune's qwen_chat, handed to TRL as the tokenizer's chat_template), LoRA r=16
alpha=32 on all linear layers, the reference = the model with adapters disabled, beta 0.1, AdamW lr 2e-4, fp32,
batch 8 pairs, one pair per padded row (xtune: pack_to_max_length false). A third run measures the full
fine-tuning reference pass of xtune (seconds per pair, against a training step's).

    python benchmarks/bench_dpo.py                 # small workload (~7M parameters), 3 alternations
    python benchmarks/bench_dpo.py --quick --json
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_train import WORKLOADS, make_workload

BATCH, LR, BETA = 8, 2e-4, 0.1
LORA = dict(r=16, alpha=32, dropout=0.0)


def make_pairs(root: Path, seed: int = 0) -> None:
    records = [json.loads(line) for line in (root / "data.jsonl").read_text().splitlines()]
    rng = random.Random(seed)
    pairs = []
    for i, record in enumerate(records):
        other = records[(i + rng.randint(1, len(records) - 1)) % len(records)]
        pairs.append({"prompt": record["instruction"], "chosen": record["output"], "rejected": other["output"]})
    (root / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))


def run_xtune(root: Path, steps: int, method: str) -> dict:
    import torch

    from xtune.config.schema import validate_config
    from xtune.train.recipe import FinetuneRecipe

    cfg = validate_config(
        {
            "model": {"path": str(root / "model"), "method": method, "lora": LORA, "dtype": "float32"},
            "data": {
                "datasets": [{"path": str(root / "pairs.jsonl"), "format": "preference"}],
                "template": "qwen_chat",
                "max_length": 512,
                "cache_dir": str(root / f"cache_{method}"),
            },
            "training": {
                "objective": "dpo",
                "preference": {"beta": BETA},
                "max_steps": steps,
                "batch_size": BATCH,
                "gradient_accumulation": 1,
                "lr": LR,
                "warmup_ratio": 0.0,
                "mixed_precision": "fp32",
                "log_every": 1000,
            },
            "saving": {"save_steps": 100000},
            "evaluation": {"inputs": []},
        }
    )
    recipe = FinetuneRecipe(cfg, root / f"xtune_{method}_{time.time_ns()}", device=torch.device("cpu"))
    started = time.perf_counter()
    recipe.setup()  # full fine-tuning: includes the reference pass (cached by content: a fresh cache dir)
    setup = time.perf_counter() - started
    started = time.perf_counter()
    recipe.train()
    return {"seconds": time.perf_counter() - started, "setup_seconds": setup, "pairs": len(recipe.data.rows)}


def run_trl(root: Path, steps: int) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from xtune.templates import get_template

    tokenizer = AutoTokenizer.from_pretrained(root / "model")
    tokenizer.chat_template = get_template("qwen_chat").to_jinja()
    pairs = [json.loads(line) for line in (root / "pairs.jsonl").read_text().splitlines()]
    rows = [
        {
            "prompt": [{"role": "user", "content": p["prompt"]}],
            "chosen": [{"role": "assistant", "content": p["chosen"]}],
            "rejected": [{"role": "assistant", "content": p["rejected"]}],
        }
        for p in pairs
    ]
    model = AutoModelForCausalLM.from_pretrained(root / "model", dtype=torch.float32)
    args = DPOConfig(
        output_dir=str(root / f"trl_{time.time_ns()}"),
        per_device_train_batch_size=BATCH,
        max_steps=steps,
        learning_rate=LR,
        lr_scheduler_type="cosine",
        beta=BETA,
        max_length=1024,  # both sides of a pair: xtune's max_length 512 applies to each
        report_to=[],
        use_cpu=True,
        bf16=False,
        save_strategy="no",
        logging_steps=1000,
        dataloader_num_workers=0,
    )
    lora = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=0.0, target_modules="all-linear")
    trainer = DPOTrainer(
        model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer, peft_config=lora
    )
    started = time.perf_counter()
    trainer.train()
    return {"seconds": time.perf_counter() - started, "pairs": len(rows)}


def child(side: str, root: Path, steps: int) -> None:
    result = run_trl(root, steps) if side == "trl" else run_xtune(root, steps, side.removeprefix("xtune_"))
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps(result))


def spawn(side: str, root: Path, steps: int) -> dict:
    cmd = [sys.executable, __file__, "--child", side, "--root", str(root), "--steps", str(steps)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="96 pairs, 4 steps, one alternation")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child")
    parser.add_argument("--root")
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    if args.child:
        child(args.child, Path(args.root), args.steps)
        return
    spec = dict(WORKLOADS["small"], records=96 if args.quick else 256, max_len=200)
    steps, rounds = (4, 1) if args.quick else (args.steps, 3)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_workload(root, spec, spec["records"])
        make_pairs(root)
        runs = {"xtune_lora": [], "trl": []}
        for _ in range(rounds):
            for side in runs:
                runs[side].append(spawn(side, root, steps))
        full = spawn("xtune_full", root, steps)
    rate = {side: statistics.median(BATCH * steps / r["seconds"] for r in rs) for side, rs in runs.items()}
    rss = {side: statistics.median(r["peak_rss_gib"] for r in rs) for side, rs in runs.items()}
    report = {
        "steps": steps,
        "pairs_per_s": rate,
        "speed_ratio_xtune_over_trl": rate["xtune_lora"] / rate["trl"],
        "peak_rss_gib": rss,
        "rss_ratio_xtune_over_trl": rss["xtune_lora"] / rss["trl"],
        "full_setup_seconds_with_reference_pass": full["setup_seconds"],
        "full_train_seconds": full["seconds"],
        "full_pairs": full["pairs"],
    }
    print(json.dumps(report, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
