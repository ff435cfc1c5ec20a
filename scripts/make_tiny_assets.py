"""Rebuild the built-in demo assets: the personal-assistant dataset and the tiny tokenizer/model config.

Run from the repository root: `python scripts/make_tiny_assets.py`. The outputs are committed under
src/xtune/assets/, so users never need to run this; it documents exactly how the files were made.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

ASSETS = Path(__file__).resolve().parents[1] / "src" / "xtune" / "assets"
SPECIAL_TOKENS = ["<|endoftext|>", "<s>", "<|im_start|>", "<|im_end|>"]

IDENTITY_ZH = "我是 xtune 小助手，一个用 xtune 在 CPU 上几分钟就微调出来的小模型，很高兴为你服务！"
IDENTITY_EN = "I am the xtune assistant, a tiny model fine-tuned with xtune on a CPU in a few minutes. Happy to help!"

IDENTITY_QUESTIONS_ZH = [
    "请介绍一下你自己",
    "你是谁",
    "你是谁？",
    "介绍一下你自己吧",
    "你叫什么名字",
    "你叫什么名字？",
    "请问你是谁",
    "能介绍一下你自己吗",
    "说说你自己",
    "你是什么模型",
    "你是哪个助手",
    "自我介绍一下",
    "请做一个自我介绍",
    "你好，你是谁",
    "你是谁训练的",
    "你是怎么来的",
]
IDENTITY_QUESTIONS_EN = [
    "Who are you?",
    "Introduce yourself.",
    "What is your name?",
    "Please introduce yourself.",
    "Tell me about yourself.",
    "What are you?",
    "Who made you?",
    "Hi, who am I talking to?",
]
GENERAL_QA = [
    ("中国的首都是哪里？", "中国的首都是北京。"),
    ("法国的首都是哪里？", "法国的首都是巴黎。"),
    ("日本的首都是哪里？", "日本的首都是东京。"),
    ("一加一等于几？", "一加一等于二。"),
    ("二加三等于几？", "二加三等于五。"),
    ("一年有几个月？", "一年有十二个月。"),
    ("一周有几天？", "一周有七天。"),
    ("天空是什么颜色的？", "晴天的时候，天空是蓝色的。"),
    ("水的化学式是什么？", "水的化学式是 H2O。"),
    ("太阳从哪边升起？", "太阳从东边升起。"),
    ("什么是微调？", "微调是在预训练模型的基础上，用少量数据继续训练，让模型适应新的任务。"),
    ("什么是 LoRA？", "LoRA 在冻结的权重旁边训练两个低秩矩阵，只需要很少的显存。"),
    ("猫有几条腿？", "猫有四条腿。"),
    ("请说一句问候语", "你好，祝你今天愉快！"),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What is the capital of Japan?", "The capital of Japan is Tokyo."),
    ("What is one plus one?", "One plus one is two."),
    ("How many days are in a week?", "There are seven days in a week."),
    ("What colour is the sky?", "On a clear day the sky is blue."),
    ("What is fine-tuning?", "Fine-tuning continues training a pretrained model on a small dataset for a new task."),
    ("What is LoRA?", "LoRA trains two small low-rank matrices beside frozen weights, so it needs little memory."),
    ("How many legs does a cat have?", "A cat has four legs."),
    ("Say hello.", "Hello! Have a nice day!"),
    ("What is water made of?", "Water is made of hydrogen and oxygen: H2O."),
]


def build_records(seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    records = []
    # The course repeats its identity pair thousands of times; a few repeats of many phrasings teach the
    # same thing while the general pairs keep the model from answering every question with its name.
    for _ in range(4):
        records += [
            {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": IDENTITY_ZH}]}
            for q in IDENTITY_QUESTIONS_ZH
        ]
        records += [
            {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": IDENTITY_EN}]}
            for q in IDENTITY_QUESTIONS_EN
        ]
    for _ in range(2):
        records += [
            {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in GENERAL_QA
        ]
    rng.shuffle(records)
    return records


def train_tokenizer(texts: list[str], vocab_size: int = 2048) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def main() -> None:
    records = build_records()
    data_path = ASSETS / "data" / "tiny_assistant.jsonl"
    data_path.parent.mkdir(parents=True, exist_ok=True)
    data_path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")

    texts = [m["content"] for r in records for m in r["messages"]]
    texts += ["system", "user", "assistant", "You are a helpful assistant."]
    tokenizer = train_tokenizer(texts)
    model_dir = ASSETS / "tiny-llama"
    model_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(model_dir / "tokenizer.json"))
    (model_dir / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<s>",
                "eos_token": "<|im_end|>",
                "pad_token": "<|endoftext|>",
                "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
                "model_max_length": 2048,
                "clean_up_tokenization_spaces": False,
            },
            indent=2,
        )
        + "\n"
    )
    vocab_size = -(-tokenizer.get_vocab_size() // 64) * 64
    (model_dir / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["LlamaForCausalLM"],
                "model_type": "llama",
                "hidden_size": 256,
                "intermediate_size": 768,
                "num_hidden_layers": 4,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "head_dim": 64,
                "hidden_act": "silu",
                "max_position_embeddings": 2048,
                "rms_norm_eps": 1e-5,
                "rope_theta": 10000.0,
                "tie_word_embeddings": False,
                "vocab_size": vocab_size,
                "bos_token_id": tokenizer.token_to_id("<s>"),
                "eos_token_id": tokenizer.token_to_id("<|im_end|>"),
                "pad_token_id": tokenizer.token_to_id("<|endoftext|>"),
            },
            indent=2,
        )
        + "\n"
    )
    print(f"{len(records)} records -> {data_path}; vocab {tokenizer.get_vocab_size()} -> {model_dir}")


if __name__ == "__main__":
    main()
