"""xtune vs a plain Hugging Face Trainer + PEFT baseline on the same work, side by side.

One invocation generates a fixed workload (a random-init Llama saved to disk, a tokenizer trained on generated
alpaca-style text, the records), then trains it with xtune and with the baseline alternately, each in a fresh
subprocess (so peak RSS is each side's own), and reports medians of the ratios. Both sides start from the same
weights, see the same records for one epoch with the same LoRA, optimizer, learning rate and precision; the
baseline pads dynamically (Trainer has no packing by default), xtune packs.

    python benchmarks/bench_train.py --workload small            # ~7M parameters
    python benchmarks/bench_train.py --workload medium --method full
    python benchmarks/bench_train.py --quick --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from xtune.train.recipe import cpu_has_fast_bf16

WORKLOADS = {
    # name: model dims, records, length range, max length, batch (samples per step for the baseline)
    "small": dict(
        hidden=256,
        layers=4,
        heads=4,
        kv_heads=4,
        intermediate=768,
        vocab=8192,
        records=2000,
        min_len=20,
        max_len=400,
        max_length=512,
        batch=8,
    ),
    "medium": dict(
        hidden=512,
        layers=8,
        heads=8,
        kv_heads=8,
        intermediate=1536,
        vocab=32000,
        records=600,
        min_len=20,
        max_len=500,
        max_length=512,
        batch=8,
    ),
}
LORA = dict(r=16, alpha=32, dropout=0.0)
LR = 2e-4


# ---------------------------------------------------------------------------------------------- workload
def make_workload(root: Path, spec: dict, records: int, seed: int = 0) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    rng = random.Random(seed)
    words = [f"w{i}" for i in range(spec["vocab"] * 2)]
    weights = [1.0 / (i + 1) for i in range(len(words))]  # Zipf-like, as in natural text

    def text(n_words: int) -> str:
        return " ".join(rng.choices(words, weights=weights, k=n_words))

    rows = []
    for _ in range(records):
        total = rng.randint(spec["min_len"], spec["max_len"])
        prompt = max(4, total // 3)
        rows.append({"instruction": text(prompt), "input": "", "output": text(total - prompt)})
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<s>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=spec["vocab"],
        special_tokens=specials,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator([r["instruction"] + " " + r["output"] for r in rows], trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    model_dir = root / "model"
    fast.save_pretrained(model_dir)
    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=spec["hidden"],
        intermediate_size=spec["intermediate"],
        num_hidden_layers=spec["layers"],
        num_attention_heads=spec["heads"],
        num_key_value_heads=spec["kv_heads"],
        vocab_size=spec["vocab"],
        max_position_embeddings=2048,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(model_dir)


def encoded_records(root: Path, max_length: int):
    """The records as xtune encodes them (template, ids, labels): the baseline trains on exactly these."""
    from xtune.config.schema import validate_config
    from xtune.data.dataset import encode_records
    from xtune.models import load_tokenizer

    cfg = validate_config(base_config(root, "lora", max_length, 1))
    tokenizer = load_tokenizer(str(root / "model"))
    return [s for _, s in encode_records(cfg.data.datasets[0], cfg.data, tokenizer)], tokenizer


def base_config(root: Path, method: str, max_length: int, batch_rows: int, precision: str = "fp32") -> dict:
    return {
        "model": {
            "path": str(root / "model"),
            "method": method,
            "lora": {**LORA, "target_modules": "all-linear"},
            "dtype": "float32",
        },
        "data": {
            "datasets": [{"path": str(root / "data.jsonl"), "format": "alpaca"}],
            "template": "qwen_chat",
            "max_length": max_length,
            "pack_to_max_length": True,
            "cache_dir": str(root / "cache"),
        },
        "training": {
            "epochs": 1,
            "batch_size": batch_rows,
            "gradient_accumulation": 1,
            "lr": LR,
            "warmup_ratio": 0.03,
            "mixed_precision": precision,
            "log_every": 1000,
        },
        "saving": {"save_steps": 10**9},
        "evaluation": {"inputs": []},
    }


def eval_loss(model, samples, device="cpu") -> float:
    """Token-mean loss of the trained model on the first 64 records: the same function for both sides."""
    from xtune.data.packing import collate, single_rows
    from xtune.train.loss import count_trained_tokens, loss_sum

    model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for row in single_rows(samples[:64]):
            batch = {k: v.to(device) for k, v in collate([row], 0).items()}
            total += loss_sum(model, batch).item()
            tokens += count_trained_tokens(batch["labels"])
    return total / tokens


# ---------------------------------------------------------------------------------------------- workers
def run_result(seconds: float, samples: list, steps: int, model) -> dict:
    return {
        "seconds": seconds,
        "samples": len(samples),
        "tokens": sum(len(s.input_ids) for s in samples),
        "steps": steps,
        "eval_loss": eval_loss(model, samples),
    }


def worker_xtune(root: Path, method: str, spec: dict, precision: str) -> dict:
    from xtune.config.schema import validate_config
    from xtune.train.recipe import FinetuneRecipe

    samples, _ = encoded_records(root, spec["max_length"])
    mean_len = statistics.mean(len(s.input_ids) for s in samples)
    # The same number of tokens per optimizer step as the baseline's batch of `batch` samples.
    rows = max(1, round(spec["batch"] * mean_len / spec["max_length"]))
    cfg = validate_config(base_config(root, method, spec["max_length"], rows, precision))
    recipe = FinetuneRecipe(cfg, root / f"xtune_{method}_{os.getpid()}", device=torch.device("cpu"))
    recipe.setup()
    start = time.perf_counter()
    recipe.train()
    return run_result(time.perf_counter() - start, samples, recipe.total_steps, recipe.model)


def worker_hf(root: Path, method: str, spec: dict, precision: str) -> dict:
    import datasets
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    samples, tokenizer = encoded_records(root, spec["max_length"])
    train = datasets.Dataset.from_dict(
        {
            "input_ids": [s.input_ids for s in samples],
            "labels": [s.labels for s in samples],
            "attention_mask": [[1] * len(s.input_ids) for s in samples],
        }
    )
    model = AutoModelForCausalLM.from_pretrained(root / "model", dtype=torch.float32)
    if method == "lora":
        model = get_peft_model(
            model,
            LoraConfig(
                r=LORA["r"],
                lora_alpha=LORA["alpha"],
                lora_dropout=LORA["dropout"],
                target_modules="all-linear",
                task_type="CAUSAL_LM",
            ),
        )
    args = TrainingArguments(
        output_dir=str(root / f"hf_{os.getpid()}"),
        per_device_train_batch_size=spec["batch"],
        gradient_accumulation_steps=1,
        learning_rate=LR,
        num_train_epochs=1,
        lr_scheduler_type="cosine",
        warmup_steps=0.03,
        weight_decay=0.0,
        max_grad_norm=1.0,
        bf16=precision == "bf16",
        use_cpu=True,
        logging_steps=1000,
        save_strategy="no",
        report_to=[],
        dataloader_num_workers=0,
        seed=0,
        remove_unused_columns=False,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
    )
    start = time.perf_counter()
    trainer.train()
    return run_result(time.perf_counter() - start, samples, trainer.state.global_step, model)


def run_worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    spec = WORKLOADS[args.workload]
    fn = worker_xtune if args.worker == "xtune" else worker_hf
    result = fn(Path(args.root), args.method, spec, args.precision)
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print("RESULT " + json.dumps(result))


# ---------------------------------------------------------------------------------------------- driver
def matmul_tflops(dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12


def non_embedding_params(spec: dict) -> int:
    h, i, layers = spec["hidden"], spec["intermediate"], spec["layers"]
    kv = h * spec["kv_heads"] // spec["heads"]
    return layers * (2 * h * h + 2 * h * kv + 3 * h * i)


def launch(side: str, root: Path, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        side,
        "--root",
        str(root),
        "--workload",
        args.workload,
        "--method",
        args.method,
        "--precision",
        args.precision,
        "--threads",
        str(args.threads),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"{side} worker failed:\n{out.stderr[-4000:]}")
    return json.loads(line[len("RESULT ") :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=WORKLOADS, default="small")
    parser.add_argument("--method", choices=["lora", "full"], default="lora")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16" if cpu_has_fast_bf16() else "fp32")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--records", type=int, help="override the workload's record count")
    parser.add_argument("--quick", action="store_true", help="a reduced run (about a minute)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--worker", choices=["xtune", "hf"], help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return run_worker(args)

    spec = WORKLOADS[args.workload]
    records = args.records or (300 if args.quick else spec["records"])
    pairs = 1 if args.quick else args.pairs
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_workload(root, spec, records)
        launch("xtune", root, args)  # warm the tokenization cache so both sides time training alone
        runs = {"xtune": [], "hf": []}
        for _ in range(pairs):
            for side in ("hf", "xtune"):  # alternate: the machine is shared and noisy
                runs[side].append(launch(side, root, args))
    ceiling = matmul_tflops(torch.bfloat16 if args.precision == "bf16" else torch.float32)

    def summary(side: str) -> dict:
        rs = runs[side]
        tokens_per_s = statistics.median(r["tokens"] / r["seconds"] for r in rs)
        flops = 6 * non_embedding_params(spec) * tokens_per_s
        if args.method == "lora":
            flops *= 2 / 3  # frozen weights need no weight gradients
        return {
            "samples_per_s": statistics.median(r["samples"] / r["seconds"] for r in rs),
            "tokens_per_s": tokens_per_s,
            "peak_rss_gib": statistics.median(r["peak_rss_gib"] for r in rs),
            "eval_loss": statistics.median(r["eval_loss"] for r in rs),
            "steps": rs[0]["steps"],
            "mfu": flops / (ceiling * 1e12),
        }

    result = {
        "workload": args.workload,
        "method": args.method,
        "precision": args.precision,
        "records": records,
        "pairs": pairs,
        "threads": args.threads,
        "matmul_tflops": ceiling,
        "xtune": summary("xtune"),
        "baseline": summary("hf"),
        "speedup_samples_per_s": statistics.median(
            (x["samples"] / x["seconds"]) / (h["samples"] / h["seconds"])
            for x, h in zip(runs["xtune"], runs["hf"], strict=True)
        ),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    result["rss_ratio"] = result["xtune"]["peak_rss_gib"] / result["baseline"]["peak_rss_gib"]
    if args.json:
        print(json.dumps(result, indent=2))
        return
    x, b = result["xtune"], result["baseline"]
    print(
        f"{args.workload} {args.method} {args.precision}, {records} records, {pairs} pair(s), "
        f"matmul ceiling {ceiling:.2f} TFLOP/s"
    )
    print(f"{'':10s} {'samples/s':>10s} {'tokens/s':>10s} {'peak RSS':>9s} {'eval loss':>10s} {'MFU':>6s}")
    for name, r in (("xtune", x), ("baseline", b)):
        print(
            f"{name:10s} {r['samples_per_s']:10.2f} {r['tokens_per_s']:10.0f} {r['peak_rss_gib']:8.2f}G "
            f"{r['eval_loss']:10.4f} {r['mfu']:6.1%}"
        )
    print(
        f"speedup (samples/s, median of pairs): {result['speedup_samples_per_s']:.2f}x; "
        f"peak RSS ratio {result['rss_ratio']:.2f}"
    )


if __name__ == "__main__":
    main()
