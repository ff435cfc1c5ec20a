"""xtune vs a plain Hugging Face Trainer + PEFT baseline on the same work, side by side.

One invocation generates a fixed workload (a random-init Llama saved to disk, a tokenizer trained on generated
alpaca-style text, the records), then trains it with xtune and with the baseline alternately, each in a fresh
subprocess (so peak RSS is each side's own), and reports medians of the ratios. Both sides start from the same
weights, see the same records for one epoch with the same LoRA, optimizer, learning rate and precision; the
baseline pads dynamically (Trainer has no packing by default). xtune's rows (--sides): `defaults` as a user's
config gets them (no packing, compile and precision `auto`), `preset` (plus the presets' packing), `tuned`
(packed and compiled), and compile_false/compile_auto/compile_true for the compile study (with --max-steps).

    python benchmarks/bench_train.py --workload small            # ~7M parameters
    python benchmarks/make_fixture.py /tmp/qwen_fixture && \
    python benchmarks/bench_train.py --fixture /tmp/qwen_fixture --format openai --batch 4   # not generated here
    python benchmarks/bench_train.py --sides compile_false,compile_auto,compile_true --max-steps 50
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
from dataclasses import asdict, dataclass
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
    from transformers import LlamaConfig, LlamaForCausalLM

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

    texts = [r["instruction"] + " " + r["output"] for r in rows]
    fast = byte_level_bpe(texts, spec["vocab"], bos_token="<s>", eos_token="<|im_end|>", pad_token="<|endoftext|>")
    model_dir = root / "model"
    fast.save_pretrained(model_dir)
    save_random_model(LlamaConfig, LlamaForCausalLM, spec, fast, model_dir, seed, max_position_embeddings=2048)


def save_random_model(config_class, model_class, spec: dict, tokenizer, out: Path, seed: int, **config) -> None:
    """A randomly initialised model of `spec`'s dimensions, saved as a Hugging Face model dir."""
    torch.manual_seed(seed)
    config = config_class(
        hidden_size=spec["hidden"],
        intermediate_size=spec["intermediate"],
        num_hidden_layers=spec["layers"],
        num_attention_heads=spec["heads"],
        num_key_value_heads=spec["kv_heads"],
        vocab_size=spec["vocab"],
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **config,
    )
    model_class(config).save_pretrained(out)


@dataclass
class Work:
    """What a run trains: a Hugging Face model dir, a dataset file in an xtune format, the length and the batch."""

    model: Path
    data: Path
    format: str
    max_length: int
    batch: int  # samples per optimizer step for the baseline (and xtune's unpacked rows)
    gradient_checkpointing: bool = False


def byte_level_bpe(texts: list[str], vocab: int, **special_tokens: str):
    """A byte-level BPE tokenizer trained on `texts` (GPT-2/Qwen style), with the chat markers as special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=["<|endoftext|>", "<s>", "<|im_start|>", "<|im_end|>"],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **special_tokens)


def encoded_records(work: Work):
    """The records as xtune encodes them (template, ids, labels): the baseline trains on exactly these."""
    from xtune.config.schema import validate_config
    from xtune.data.dataset import encode_records
    from xtune.models import load_tokenizer

    cfg = validate_config(user_config(work, "lora", 1, Path(tempfile.gettempdir())))
    tokenizer = load_tokenizer(str(work.model))
    return [s for _, s in encode_records(cfg.data.datasets[0], cfg.data, tokenizer)], tokenizer


def user_config(work: Work, method: str, batch_rows: int, cache: Path) -> dict:
    """What a user writes for this work: the model, the method, the data, one epoch, the batch; the rest is xtune's
    defaults (mixed precision and compile `auto`, no packing). Evaluation prompts off and no checkpoints, as the
    baseline has neither."""
    return {
        "model": {
            "path": str(work.model),
            "method": method,
            "lora": {**LORA, "target_modules": "all-linear"},
            "gradient_checkpointing": work.gradient_checkpointing,
        },
        "data": {
            "datasets": [{"path": str(work.data), "format": work.format}],
            "template": "qwen_chat",
            "max_length": work.max_length,
            "cache_dir": str(cache),
        },
        "training": {"epochs": 1, "batch_size": batch_rows, "gradient_accumulation": 1, "lr": LR, "log_every": 1000},
        "saving": {"save_steps": 10**9},
        "evaluation": {"inputs": []},
    }


# xtune's rows: what each changes from user_config. `defaults`: a user's config as written; `preset`: plus what
# xtune's presets set (packing: BASE in config/presets.py); `tuned`: packed and compiled, the precision pinned;
# the compile_* rows: packed, with training.compile set, for the compile study (--max-steps).
XTUNE_VARIANTS: dict[str, dict] = {
    "defaults": {},
    "preset": {"data": {"pack_to_max_length": True}},
    "tuned": {"data": {"pack_to_max_length": True}, "training": {"compile": True}, "model": {"dtype": "float32"}},
    "compile_false": {"data": {"pack_to_max_length": True}, "training": {"compile": False}},
    "compile_true": {"data": {"pack_to_max_length": True}, "training": {"compile": True}},
    "compile_auto": {"data": {"pack_to_max_length": True}, "training": {"compile": "auto"}},
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


def run_result(seconds: float, seen: dict, steps: int, model, marks: list[tuple[float, int]], samples) -> dict:
    """`seen`: the samples, real (non-pad) tokens and trained (labelled) tokens the run's batches held."""
    train_peak = peak_rss_gib()  # before eval_loss, which is not training
    return {
        "seconds": seconds,
        "steady_tokens_per_s": steady_tokens_per_s(marks),
        **seen,
        "tokens_squared": sum(len(s.input_ids) ** 2 for s in samples),
        "all_tokens": sum(len(s.input_ids) for s in samples),
        "steps": steps,
        "train_peak_rss_gib": train_peak,
        "eval_loss": eval_loss(model, samples),
    }


def count_into(seen: dict, input_ids: list[list[int]], labels: list[list[int]], samples: int) -> None:
    seen["samples"] += samples
    seen["tokens"] += sum(len(ids) for ids in input_ids)
    seen["trained_tokens"] += sum(label != IGNORE_INDEX for row in labels for label in row[1:])


def worker_xtune(work: Work, root: Path, method: str, variant: str, precision: str, max_steps: int | None) -> dict:
    from xtune.config.presets import merge
    from xtune.config.schema import validate_config
    from xtune.train.recipe import FinetuneRecipe

    samples, _ = encoded_records(work)
    overrides = XTUNE_VARIANTS[variant]
    packed = overrides.get("data", {}).get("pack_to_max_length", False)
    mean_len = statistics.mean(len(s.input_ids) for s in samples)
    # Packed: the same number of tokens per optimizer step as the baseline's batch of `batch` samples.
    rows = max(1, round(work.batch * mean_len / work.max_length)) if packed else work.batch
    raw = merge(user_config(work, method, rows, root / "cache"), overrides)
    if variant == "tuned":
        raw["training"]["mixed_precision"] = precision
    if max_steps:
        raw["training"]["max_steps"] = max_steps
    recipe = FinetuneRecipe(validate_config(raw), root / f"xtune_{method}_{os.getpid()}", device=torch.device("cpu"))
    recipe.setup()
    marks, draw, collate = [], recipe.micro_batches, recipe.collate
    seen = {"samples": 0, "tokens": 0, "trained_tokens": 0}

    def marked_batches(start: int):  # one micro-batch per step: each draw marks the end of the step before
        for batch, n_real in draw(start):
            marks.append((time.perf_counter(), seen["tokens"]))
            yield batch, n_real

    def counted_collate(batch_rows):
        count_into(seen, [r.input_ids for r in batch_rows], [r.labels for r in batch_rows], 0)
        seen["samples"] += sum(r.position_ids.count(0) for r in batch_rows)
        return collate(batch_rows)

    recipe.micro_batches, recipe.collate = marked_batches, counted_collate
    reset_peak_rss()
    start = time.perf_counter()
    recipe.train()
    result = run_result(time.perf_counter() - start, seen, recipe.total_steps, recipe.model, marks[1:], samples)
    return {**result, "compiled": recipe.compile_choice.compiled, "compile_reason": recipe.compile_choice.reason}


def worker_hf(work: Work, root: Path, method: str, variant: str, precision: str, max_steps: int | None) -> dict:
    import datasets
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    samples, tokenizer = encoded_records(work)
    train = datasets.Dataset.from_dict(
        {
            "input_ids": [s.input_ids for s in samples],
            "labels": [s.labels for s in samples],
            "attention_mask": [[1] * len(s.input_ids) for s in samples],
        }
    )
    model = AutoModelForCausalLM.from_pretrained(work.model, dtype=torch.float32)
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
        per_device_train_batch_size=work.batch,
        max_steps=max_steps or -1,
        gradient_accumulation_steps=1,
        learning_rate=LR,
        num_train_epochs=1,
        lr_scheduler_type="cosine",
        warmup_steps=0.03,
        weight_decay=0.0,
        max_grad_norm=1.0,
        gradient_checkpointing=work.gradient_checkpointing,
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
            self.seen = dict(seen)  # the dataloader may have fetched a batch beyond the last step

    step_marks = StepMarks()
    pad = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX)
    seen = {"samples": 0, "tokens": 0, "trained_tokens": 0}

    def counted_collate(features):
        count_into(seen, [f["input_ids"] for f in features], [f["labels"] for f in features], len(features))
        return pad(features)

    trainer = Trainer(
        model=model, args=args, train_dataset=train, data_collator=counted_collate, callbacks=[step_marks]
    )
    reset_peak_rss()
    start = time.perf_counter()
    trainer.train()
    marks = step_marks.marks[:-1]
    return run_result(time.perf_counter() - start, step_marks.seen, trainer.state.global_step, model, marks, samples)


def run_worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    work = Work(**json.loads(args.work))
    work.model, work.data = Path(work.model), Path(work.data)
    fn = worker_xtune if args.worker == "xtune" else worker_hf
    result = fn(work, Path(args.root), args.method, args.variant, args.precision, args.max_steps)
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


def model_dims(model_dir: Path) -> tuple[int, int]:
    """(layers, hidden size) of the saved model, for the attention FLOPs."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    return config.num_hidden_layers, config.hidden_size


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
    dims: tuple[int, int], method: str, params: int, head_params: int, mean_context: float, head_fraction: float = 1.0
) -> float:
    """Training FLOPs per token the model needs (not what a dense kernel spends): 6 x non-embedding parameters
    (4 for frozen ones: no weight gradients) plus causal attention over the token's own sample (per layer
    2 matmuls x 2 x hidden x context forward, 3x that with backward, the context averaging half the sample).
    `head_fraction` < 1 counts the output layer only on that share of the tokens: the positions with a label,
    the only ones the loss needs logits for."""
    linear = (6 if method == "full" else 4) * (params - head_params * (1 - head_fraction))
    layers, hidden = dims
    attention = 12 * layers * hidden * mean_context / 2
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


def launch(work: Work, root: Path, side: str, args: argparse.Namespace) -> dict:
    """One run in a fresh process: `side` is `baseline`, `baseline_<method>` or one of XTUNE_VARIANTS."""
    worker, method = ("hf", side.partition("_")[2] or args.method) if side.startswith("baseline") else ("xtune", None)
    if side == "xtune_qlora":
        worker, method, side = "xtune", "qlora", "tuned"
    cmd = [sys.executable, __file__, "--worker", worker, "--variant", side, "--root", str(root)]
    cmd += ["--work", json.dumps(asdict(work), default=str), "--method", method or args.method]
    cmd += ["--precision", args.precision, "--threads", str(args.threads)]
    if args.max_steps:
        cmd += ["--max-steps", str(args.max_steps)]
    # xtune's caches (tokenized data, measured compile costs) in the benchmark's folder: every run of one
    # invocation sees the same, and none of the user's.
    env = {**os.environ, "TQDM_DISABLE": "1", "XTUNE_CACHE": str(root / "xtune_cache")}
    if args.live_memory:
        # glibc keeps freed blocks below its (dynamic, up to 32 MiB) mmap threshold for reuse, so RSS also counts
        # free lists, and more of them the more a side churns (4-bit dequantisation does). Served by mmap instead,
        # every free returns to the system and the peak RSS is the peak of live memory, at about half the speed.
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"{side} worker failed:\n{out.stderr[-4000:]}")
    return json.loads(line[len("RESULT ") :])


def fixture_work(path: Path, fmt: str, max_length: int, batch: int) -> Work:
    """A fixture dir: an HF model dir `model/` and one dataset file (.jsonl, .json, .parquet, .csv) beside it."""
    data = sorted(p for p in path.iterdir() if p.suffix in (".jsonl", ".json", ".parquet", ".csv"))
    if not (path / "model" / "config.json").exists() or len(data) != 1:
        sys.exit(f"--fixture {path}: expected model/ (a Hugging Face model dir) and one dataset file beside it")
    return Work(path / "model", data[0], fmt, max_length, batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=WORKLOADS, default="small")
    parser.add_argument("--fixture", type=Path, help="a dir with model/ and one dataset file, instead of a workload")
    parser.add_argument("--format", default="alpaca", help="the fixture's dataset format (alpaca, openai, ...)")
    parser.add_argument("--max-length", type=int, default=512, help="with --fixture")
    parser.add_argument("--batch", type=int, default=8, help="with --fixture: samples per step")
    parser.add_argument(
        "--method", choices=["lora", "full", "qlora"], default="lora", help="lora or full (qlora: the worker)"
    )
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16" if cpu_has_fast_bf16() else "fp32")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--records", type=int, help="override the workload's record count")
    parser.add_argument(
        "--sides",
        default="baseline,defaults,preset,tuned",
        help=f"comma-separated, the first the baseline: baseline (Trainer + PEFT), {', '.join(XTUNE_VARIANTS)}",
    )
    parser.add_argument("--max-steps", type=int, help="stop every run after this many optimizer steps")
    parser.add_argument("--quick", action="store_true", help="at most 300 records, one pair (2-3 min on 2 cores)")
    parser.add_argument(
        "--live-memory",
        action="store_true",
        help="glibc returns every free to the system: peak RSS is live memory (speeds are then not comparable)",
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--worker", choices=["xtune", "hf"], help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return run_worker(args)

    pairs = 1 if args.quick else args.pairs
    # qlora: the baseline's LoRA, xtune's LoRA and QLoRA
    sides = ["baseline_lora", "tuned", "xtune_qlora"] if args.workload == "qlora" else args.sides.split(",")
    unknown = [x for x in sides if not x.startswith("baseline") and x not in XTUNE_VARIANTS and x != "xtune_qlora"]
    if unknown:
        sys.exit(f"--sides: unknown {', '.join(unknown)}; choose baseline, {', '.join(XTUNE_VARIANTS)}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.fixture:
            work = fixture_work(args.fixture.resolve(), args.format, args.max_length, args.batch)
            records, name = None, f"fixture {args.fixture.name} ({args.format})"
        else:
            spec = WORKLOADS[args.workload]
            records = args.records or (min(300, spec["records"]) if args.quick else spec["records"])
            make_workload(root, spec, records)
            checkpointing = spec.get("gradient_checkpointing", False)
            work = Work(root / "model", root / "data.jsonl", "alpaca", spec["max_length"], spec["batch"], checkpointing)
            name = args.workload
        params, head_params = parameter_counts(work.model)
        dims = model_dims(work.model)
        # Warm the tokenization cache, and each compiled variant's compile cache (and measured compile cost), so
        # every timed run does the same work: what a user's second run of the same shapes does.
        for side in sides:
            if side in ("tuned", "compile_true", "xtune_qlora") or side == sides[1]:
                launch(work, root, side, args)
        runs = {side: [] for side in sides}
        ceilings = []  # the matmul rate varies with the machine's load: the best one seen is the ceiling
        for _ in range(pairs):
            ceilings.append(matmul_tflops(torch.bfloat16 if args.precision == "bf16" else torch.float32))
            for side in sides:  # alternate: the machine is shared and noisy
                runs[side].append(launch(work, root, side, args))
    ceiling = max(ceilings)

    def summary(side: str) -> dict:
        rs = runs[side]
        method = "qlora" if side == "xtune_qlora" else args.method
        tokens_per_s = statistics.median(r["tokens"] / r["seconds"] for r in rs)
        steady = statistics.median(r["steady_tokens_per_s"] for r in rs)
        mean_context = rs[0]["tokens_squared"] / rs[0]["all_tokens"]  # a token's sample length, averaged over tokens
        flops = model_flops_per_token(dims, method, params, head_params, mean_context)
        label_share = rs[0]["trained_tokens"] / rs[0]["tokens"]
        loss_flops = model_flops_per_token(dims, method, params, head_params, mean_context, label_share)
        result = {
            "method": method,
            "samples_per_s": statistics.median(r["samples"] / r["seconds"] for r in rs),
            "tokens_per_s": tokens_per_s,
            "trained_tokens_per_s": statistics.median(r["trained_tokens"] / r["seconds"] for r in rs),
            "peak_rss_gib": statistics.median(r["peak_rss_gib"] for r in rs),
            "train_peak_rss_gib": statistics.median(r["train_peak_rss_gib"] for r in rs),
            "eval_loss": statistics.median(r["eval_loss"] for r in rs),
            "seconds": statistics.median(r["seconds"] for r in rs),
            "steady_tokens_per_s": steady,
            "steps": rs[0]["steps"],
            "samples": rs[0]["samples"],
            "mfu": flops * steady / (ceiling * 1e12),
            "mfu_head_on_labels": loss_flops * steady / (ceiling * 1e12),
            "mfu_end_to_end": flops * tokens_per_s / (ceiling * 1e12),
        }
        if "compiled" in rs[0]:
            result["compiled"] = [r["compiled"] for r in rs]
            result["compile_reason"] = rs[-1]["compile_reason"]
        return result

    result = {
        "workload": name,
        "live_memory": args.live_memory,
        "precision": args.precision,
        "records": records,
        "max_steps": args.max_steps,
        "pairs": pairs,
        "threads": args.threads,
        "matmul_tflops": ceiling,
        "non_embedding_params": params,
        "output_layer_params": head_params,
        **{side: summary(side) for side in sides},
        "machine": machine(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    base = sides[0]
    for side in sides[1:]:  # ratios of runs made side by side, then their median
        result[side]["speedup_samples_per_s"] = statistics.median(
            (x["samples"] / x["seconds"]) / (b["samples"] / b["seconds"])
            for x, b in zip(runs[side], runs[base], strict=True)
        )
        result[side]["peak_rss_ratio"] = result[side]["peak_rss_gib"] / result[base]["peak_rss_gib"]
        result[side]["train_peak_rss_ratio"] = result[side]["train_peak_rss_gib"] / result[base]["train_peak_rss_gib"]
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"{name} {args.precision}, {records or 'all'} records, {args.max_steps or 'all'} steps, "
        f"{'live-memory RSS, ' if args.live_memory else ''}{pairs} pair(s), matmul ceiling {ceiling:.2f} TFLOP/s; "
        f"ratios against {base}"
    )
    header = f"{'':15s} {'samples/s':>9s} {'tokens/s':>9s} {'trained/s':>9s} {'peak RSS':>9s} {'in train':>9s}"
    print(header + f" {'eval loss':>9s} {'MFU':>6s} {'(labels)':>8s} {'speed':>6s} {'RSS':>6s} compiled")
    for side in sides:
        r = result[side]
        ratios = f"{r['speedup_samples_per_s']:5.2f}x {r['peak_rss_ratio']:5.2f}x" if side != base else " " * 13
        print(
            f"{side:15s} {r['samples_per_s']:9.2f} {r['tokens_per_s']:9.0f} {r['trained_tokens_per_s']:9.0f} "
            f"{r['peak_rss_gib']:8.2f}G {r['train_peak_rss_gib']:8.2f}G {r['eval_loss']:9.4f} {r['mfu']:6.1%} "
            f"{r['mfu_head_on_labels']:8.1%} {ratios} {r.get('compiled', '')}"
        )


if __name__ == "__main__":
    main()
