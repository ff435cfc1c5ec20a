"""xtune vs a plain Hugging Face Trainer + PEFT baseline on the same work, side by side.

One invocation generates a fixed workload (a random-init Llama saved to disk, a tokenizer trained on generated
alpaca-style text, the records), then trains it with xtune and with the baseline alternately, each in a fresh
subprocess (so peak RSS is each side's own), and reports medians of the ratios. Both sides start from the same
weights, see the same records for one epoch with the same LoRA, optimizer, learning rate and precision; the
baseline pads dynamically (Trainer has no packing by default), xtune packs and compiles (training.compile).

    python benchmarks/bench_train.py --workload small            # ~7M parameters
    python benchmarks/bench_train.py --workload medium --method full
    python benchmarks/bench_train.py --workload qlora             # peak memory: QLoRA vs LoRA, 1.1B parameters
    python benchmarks/bench_train.py --workload qlora --live-memory  # the same, RSS following live tensors
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

from xtune.data.encode import IGNORE_INDEX
from xtune.train.cpu import cpu_has_fast_bf16

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
    # Peak memory of QLoRA vs LoRA (and the baseline's LoRA) over a few steps, on TinyLlama-1.1B's shape: weights
    # must dominate memory for the comparison to mean anything, and at ~370M parameters in fp32 (1.4 GiB) the
    # activations and the allocator's free lists of a 512-token step still weighed as much as the weights.
    "qlora": dict(
        hidden=2048,
        layers=22,
        heads=32,
        kv_heads=4,
        intermediate=5632,
        vocab=32000,
        records=12,
        min_len=100,
        max_len=500,
        max_length=512,
        batch=1,
        gradient_checkpointing=True,  # as XTuner's QLoRA presets: activations would otherwise dominate
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


def base_config(
    root: Path,
    method: str,
    max_length: int,
    batch_rows: int,
    precision: str = "fp32",
    compile: bool = False,
    gradient_checkpointing: bool = False,
) -> dict:
    return {
        "model": {
            "path": str(root / "model"),
            "method": method,
            "lora": {**LORA, "target_modules": "all-linear"},
            "dtype": "float32",
            "gradient_checkpointing": gradient_checkpointing,
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
            "compile": compile,
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
def reset_peak_rss() -> None:
    """Start a new high-water mark (VmHWM) for this process: the training phase's peak, apart from loading."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss_gib() -> float:
    """VmHWM: the peak resident memory since reset_peak_rss."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 2**20


def steady_tokens_per_s(marks: list[tuple[float, int]]) -> float:
    """Real tokens/s between step boundaries after the first tenth of the steps. `marks`: (time, real tokens so far)
    at the end of each step but the last (the epoch's short last batch). What MFU is quoted on: the first steps
    also pay for compilation (xtune) and warm-up, which a longer run amortises."""
    if len(marks) < 2:
        return float("nan")
    first = max(1, len(marks) // 10) - 1
    (t0, n0), (t1, n1) = marks[first], marks[-1]
    return (n1 - n0) / (t1 - t0)


def run_result(seconds: float, samples: list, steps: int, model, marks: list[tuple[float, int]]) -> dict:
    train_peak = peak_rss_gib()  # before eval_loss, which is not training
    return {
        "seconds": seconds,
        "steady_tokens_per_s": steady_tokens_per_s(marks),
        "samples": len(samples),
        "tokens": sum(len(s.input_ids) for s in samples),
        "tokens_squared": sum(len(s.input_ids) ** 2 for s in samples),
        "label_tokens": sum(label != IGNORE_INDEX for s in samples for label in s.labels),
        "steps": steps,
        "train_peak_rss_gib": train_peak,
        "eval_loss": eval_loss(model, samples),
    }


def worker_xtune(root: Path, method: str, spec: dict, precision: str, compile: bool) -> dict:
    from xtune.config.schema import validate_config
    from xtune.train.recipe import FinetuneRecipe

    samples, _ = encoded_records(root, spec["max_length"])
    mean_len = statistics.mean(len(s.input_ids) for s in samples)
    # The same number of tokens per optimizer step as the baseline's batch of `batch` samples.
    rows = max(1, round(spec["batch"] * mean_len / spec["max_length"]))
    checkpointing = spec.get("gradient_checkpointing", False)
    cfg = validate_config(base_config(root, method, spec["max_length"], rows, precision, compile, checkpointing))
    recipe = FinetuneRecipe(cfg, root / f"xtune_{method}_{os.getpid()}", device=torch.device("cpu"))
    recipe.setup()
    marks, draw = [], recipe.micro_batches

    def marked_batches(start: int):  # one micro-batch per step: each draw marks the end of the step before
        seen = 0
        for batch, n_real in draw(start):
            marks.append((time.perf_counter(), seen))
            seen += n_real
            yield batch, n_real

    recipe.micro_batches = marked_batches
    reset_peak_rss()
    start = time.perf_counter()
    recipe.train()
    return run_result(time.perf_counter() - start, samples, recipe.total_steps, recipe.model, marks[1:])


def worker_hf(root: Path, method: str, spec: dict, precision: str, compile: bool) -> dict:
    import datasets
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

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
        gradient_checkpointing=spec.get("gradient_checkpointing", False),
        bf16=precision == "bf16",
        use_cpu=True,
        logging_steps=1000,
        save_strategy="no",
        report_to=[],
        dataloader_num_workers=0,
        seed=0,
        remove_unused_columns=False,
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
    )

    class StepMarks(TrainerCallback):
        def __init__(self):
            self.marks = []

        def on_step_end(self, args, state, control, **kwargs):
            self.marks.append((time.perf_counter(), state.num_input_tokens_seen))

    step_marks = StepMarks()
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX),
        callbacks=[step_marks],
    )
    reset_peak_rss()
    start = time.perf_counter()
    trainer.train()
    marks = step_marks.marks[:-1]
    return run_result(time.perf_counter() - start, samples, trainer.state.global_step, model, marks)


def run_worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    spec = WORKLOADS[args.workload]
    fn = worker_xtune if args.worker == "xtune" else worker_hf
    result = fn(Path(args.root), args.method, spec, args.precision, not args.no_compile)
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


def parameter_counts(model_dir: Path) -> tuple[int, int]:
    """(non-embedding parameters, the output layer's) of the saved model, counted as Hugging Face
    (`num_parameters(exclude_embeddings=True)`) and torchtitan count them for MFU: every parameter outside an
    `nn.Embedding`, so an untied output layer is in. A tied one is out here, as in HF's count (nanoGPT counts it,
    as the output layer it also is); the workloads' models are untied."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    head = model.get_output_embeddings().weight
    tied = head is model.get_input_embeddings().weight
    return model.num_parameters(exclude_embeddings=True), 0 if tied else head.numel()


def model_flops_per_token(
    spec: dict, method: str, params: int, head_params: int, mean_context: float, head_fraction: float = 1.0
) -> float:
    """Training FLOPs per token the model needs (not what a dense kernel spends): 6 x non-embedding parameters
    (4 for frozen ones: no weight gradients) plus causal attention over the token's own sample (per layer
    2 matmuls x 2 x hidden x context forward, 3x that with backward, the context averaging half the sample).
    `head_fraction` < 1 counts the output layer only on that share of the tokens: the positions with a label,
    the only ones the loss needs logits for."""
    linear = (6 if method == "full" else 4) * (params - head_params * (1 - head_fraction))
    attention = 12 * spec["layers"] * spec["hidden"] * mean_context / 2
    return linear + attention


def machine() -> str:
    """The CPU's model name and what decides its bf16 speed: the project's box changed from a Xeon with AMX to an
    AMD EPYC without it between two runs of this script, and every rate with it."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    name = next((x.split(":", 1)[1].strip() for x in lines if x.startswith("model name")), platform.machine())
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()  # private; absent on other builds
    features = "AMX" if amx else "AVX512-BF16" if cpu_has_fast_bf16() else "no fast bf16"
    return f"{name}, {os.cpu_count()} cores, {features}"


def launch(root: Path, side: str, method: str, args: argparse.Namespace) -> dict:
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
        method,
        "--precision",
        args.precision,
        "--threads",
        str(args.threads),
    ]
    if args.no_compile:
        cmd.append("--no-compile")
    env = {**os.environ, "TQDM_DISABLE": "1"}
    if args.live_memory:
        # glibc keeps freed blocks below its (dynamic, up to 32 MiB) mmap threshold for reuse, so RSS also counts
        # free lists, and more of them the more a side churns (4-bit dequantisation does). Served by mmap instead,
        # every free returns to the system and the peak RSS is the peak of live memory, at about half the speed.
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"{side} {method} worker failed:\n{out.stderr[-4000:]}")
    return json.loads(line[len("RESULT ") :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=WORKLOADS, default="small")
    parser.add_argument(
        "--method", choices=["lora", "full", "qlora"], default="lora", help="lora or full (qlora: the worker)"
    )
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16" if cpu_has_fast_bf16() else "fp32")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--records", type=int, help="override the workload's record count")
    parser.add_argument("--no-compile", action="store_true", help="xtune without training.compile")
    parser.add_argument("--quick", action="store_true", help="at most 300 records, one pair (2-3 min on 2 cores)")
    parser.add_argument(
        "--live-memory",
        action="store_true",
        help="glibc returns every free to the system: peak RSS is live memory (speeds are then not comparable)",
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--worker", choices=["xtune", "hf"], help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return run_worker(args)

    spec = WORKLOADS[args.workload]
    records = args.records or (min(300, spec["records"]) if args.quick else spec["records"])
    pairs = 1 if args.quick else args.pairs
    # (label, side, method); the first is the baseline. qlora: the baseline's LoRA, xtune's LoRA and QLoRA.
    if args.workload == "qlora":
        sides = [("baseline", "hf", "lora"), ("xtune", "xtune", "lora"), ("xtune_qlora", "xtune", "qlora")]
    else:
        sides = [("baseline", "hf", args.method), ("xtune", "xtune", args.method)]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_workload(root, spec, records)
        params, head_params = parameter_counts(root / "model")
        # Warm the tokenization cache (and the compile cache) so every timed run does the same work.
        launch(root, "xtune", sides[-1][2], args)
        runs = {label: [] for label, _, _ in sides}
        ceilings = []  # the matmul rate varies with the machine's load: the best one seen is the ceiling
        for _ in range(pairs):
            ceilings.append(matmul_tflops(torch.bfloat16 if args.precision == "bf16" else torch.float32))
            for label, side, method in sides:  # alternate: the machine is shared and noisy
                runs[label].append(launch(root, side, method, args))
    ceiling = max(ceilings)

    def summary(label: str, method: str) -> dict:
        rs = runs[label]
        tokens_per_s = statistics.median(r["tokens"] / r["seconds"] for r in rs)
        steady = statistics.median(r["steady_tokens_per_s"] for r in rs)
        mean_context = rs[0]["tokens_squared"] / rs[0]["tokens"]  # a token's sample length, averaged over tokens
        flops = model_flops_per_token(spec, method, params, head_params, mean_context)
        label_share = rs[0]["label_tokens"] / rs[0]["tokens"]
        loss_flops = model_flops_per_token(spec, method, params, head_params, mean_context, label_share)
        return {
            "method": method,
            "samples_per_s": statistics.median(r["samples"] / r["seconds"] for r in rs),
            "tokens_per_s": tokens_per_s,
            "peak_rss_gib": statistics.median(r["peak_rss_gib"] for r in rs),
            "train_peak_rss_gib": statistics.median(r["train_peak_rss_gib"] for r in rs),
            "eval_loss": statistics.median(r["eval_loss"] for r in rs),
            "steady_tokens_per_s": steady,
            "steps": rs[0]["steps"],
            "mfu": flops * steady / (ceiling * 1e12),
            "mfu_head_on_labels": loss_flops * steady / (ceiling * 1e12),
            "mfu_end_to_end": flops * tokens_per_s / (ceiling * 1e12),
        }

    result = {
        "workload": args.workload,
        "live_memory": args.live_memory,
        "precision": args.precision,
        "compile": not args.no_compile,
        "records": records,
        "pairs": pairs,
        "threads": args.threads,
        "matmul_tflops": ceiling,
        "non_embedding_params": params,
        "output_layer_params": head_params,
        **{label: summary(label, method) for label, _, method in sides},
        "machine": machine(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    for label, _, _ in sides[1:]:  # ratios of runs made side by side, then their median
        result[label]["speedup_samples_per_s"] = statistics.median(
            (x["samples"] / x["seconds"]) / (b["samples"] / b["seconds"])
            for x, b in zip(runs[label], runs["baseline"], strict=True)
        )
        result[label]["peak_rss_ratio"] = result[label]["peak_rss_gib"] / result["baseline"]["peak_rss_gib"]
        result[label]["train_peak_rss_ratio"] = (
            result[label]["train_peak_rss_gib"] / result["baseline"]["train_peak_rss_gib"]
        )
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"{args.workload} {args.precision}, compile {'off' if args.no_compile else 'on'}, {records} records, "
        f"{'live-memory RSS, ' if args.live_memory else ''}"
        f"{pairs} pair(s), matmul ceiling {ceiling:.2f} TFLOP/s"
    )
    header = f"{'':22s} {'samples/s':>10s} {'tokens/s':>10s} {'peak RSS':>9s} {'in train':>9s} {'eval loss':>10s}"
    print(header + f" {'steady tok/s':>12s} {'MFU':>6s} {'(head on labels)':>16s} {'(e2e)':>6s} {'speedup':>8s}")
    for label, side, method in sides:
        r = result[label]
        speedup = f"{r['speedup_samples_per_s']:7.2f}x" if "speedup_samples_per_s" in r else ""
        print(
            f"{side + ' ' + method:22s} {r['samples_per_s']:10.2f} {r['tokens_per_s']:10.0f} "
            f"{r['peak_rss_gib']:8.2f}G {r['train_peak_rss_gib']:8.2f}G {r['eval_loss']:10.4f} "
            f"{r['steady_tokens_per_s']:12.0f} {r['mfu']:6.1%} {r['mfu_head_on_labels']:16.1%} "
            f"{r['mfu_end_to_end']:6.1%} {speedup}"
        )


if __name__ == "__main__":
    main()
