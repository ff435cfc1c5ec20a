"""A benchmark fixture of another shape than bench_train.py's own workloads: a Qwen2-shaped tiny model (grouped
query attention, tied embeddings, a 32k vocabulary) with a byte-level BPE tokenizer, and multi-turn chats in the
OpenAI `messages` format. Built from generated text and random weights, never downloaded, so that
`bench_train.py --fixture DIR --format openai` runs on a model and data it did not make itself.

    python benchmarks/make_fixture.py /tmp/qwen_fixture
    python benchmarks/bench_train.py --fixture /tmp/qwen_fixture --format openai
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from bench_train import byte_level_bpe, save_random_model

SHAPE = dict(hidden=192, layers=4, heads=6, kv_heads=2, intermediate=640, vocab=32000)


def chats(records: int, rng: random.Random, words: list[str]) -> list[dict]:
    weights = [1.0 / (i + 1) for i in range(len(words))]  # Zipf-like, as in natural text

    def text(lo: int, hi: int) -> str:
        return " ".join(rng.choices(words, weights=weights, k=rng.randint(lo, hi)))

    rows = []
    for _ in range(records):
        messages = [{"role": "system", "content": text(5, 20)}] if rng.random() < 0.5 else []
        for _ in range(rng.randint(1, 4)):  # turns
            messages += [{"role": "user", "content": text(5, 60)}, {"role": "assistant", "content": text(10, 120)}]
        rows.append({"messages": messages})
    return rows


def make_fixture(out: Path, records: int = 300, seed: int = 0) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    rng = random.Random(seed)
    words = [f"t{i}x" for i in range(SHAPE["vocab"] * 3)]
    rows = chats(records, rng, words)
    out.mkdir(parents=True, exist_ok=True)
    (out / "chats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    corpus = [m["content"] for r in rows for m in r["messages"]]
    corpus += [" ".join(words[i : i + 50]) for i in range(0, len(words), 50)]  # every word seen: a full vocabulary
    fast = byte_level_bpe(corpus, SHAPE["vocab"], eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.save_pretrained(out / "model")
    shape = {**SHAPE, "vocab": len(fast)}
    save_random_model(Qwen2Config, Qwen2ForCausalLM, shape, fast, out / "model", seed, tie_word_embeddings=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--records", type=int, default=300)
    args = parser.parse_args()
    make_fixture(args.out, args.records)
    print(f"fixture: {args.out}/model, {args.out}/chats.jsonl (format openai)")


if __name__ == "__main__":
    main()
