"""Presets built from parts (model family x method x dataset), named the XTuner way.

XTuner v0 shipped hundreds of near-identical config files; here each preset is one line of composition,
and `xtune copy-cfg` writes the resolved YAML for a user to edit.
"""

from __future__ import annotations

import copy
import fnmatch
from typing import Any

# Paths are Hugging Face repo ids: xtune never downloads, so they resolve only from a local directory of that
# name or the local Hugging Face cache; otherwise the error says how to fetch the model and set model.path.
FAMILIES: dict[str, dict[str, Any]] = {
    "internlm2_chat_1_8b": {
        "model": {"path": "internlm/internlm2-chat-1_8b"},  # loads natively, no remote code
        "data": {"template": "internlm2_chat"},
    },
    "internlm2_chat_7b": {
        "model": {"path": "internlm/internlm2-chat-7b"},
        "data": {"template": "internlm2_chat"},
    },
    "qwen2_1_5b_instruct": {"model": {"path": "Qwen/Qwen2-1.5B-Instruct"}, "data": {"template": "qwen_chat"}},
    "qwen2_7b_instruct": {"model": {"path": "Qwen/Qwen2-7B-Instruct"}, "data": {"template": "qwen_chat"}},
    "llama3_8b_instruct": {
        "model": {"path": "meta-llama/Meta-Llama-3-8B-Instruct"},
        "data": {"template": "llama3_chat"},
    },
}

METHODS: dict[str, dict[str, Any]] = {
    "full": {"model": {"method": "full", "gradient_checkpointing": True}, "training": {"lr": 2e-5}},
    "lora": {"model": {"method": "lora", "lora": {"r": 64, "alpha": 16, "dropout": 0.1}}, "training": {"lr": 2e-4}},
    "qlora": {
        "model": {"method": "qlora", "lora": {"r": 64, "alpha": 16, "dropout": 0.1}, "gradient_checkpointing": True},
        "training": {"lr": 2e-4},
    },
}

DATASETS: dict[str, dict[str, Any]] = {
    # https://huggingface.co/datasets/tatsu-lab/alpaca, saved locally as JSON.
    "alpaca": {"data": {"datasets": [{"path": "data/alpaca_data.json", "format": "alpaca"}]}},
    # https://huggingface.co/datasets/timdettmers/openassistant-guanaco, saved locally as JSONL.
    "oasst1": {"data": {"datasets": [{"path": "data/openassistant-guanaco/train.jsonl", "format": "oasst1"}]}},
}

BASE: dict[str, Any] = {  # what XTuner's configs set beyond the schema's defaults (which they share)
    "data": {"pack_to_max_length": True},
    "evaluation": {"inputs": ["请给我介绍五个上海的景点", "Please tell me five scenic spots in Shanghai"]},
}

# The built-in demo: a tiny Llama with a tokenizer trained by scripts/make_tiny_assets.py, randomly initialised,
# learning the bundled personal-assistant data in a few minutes on two CPU cores.
TINY_ASSISTANT: dict[str, Any] = {
    "model": {"path": "builtin:tiny-llama", "random_init": True, "dtype": "float32"},
    "data": {
        "datasets": [{"path": "builtin:data/tiny_assistant.jsonl", "format": "openai"}],
        "template": "qwen_chat",
        "max_length": 256,
        "pack_to_max_length": False,
    },
    "training": {
        "epochs": None,
        "max_steps": 300,
        "batch_size": 8,
        "gradient_accumulation": 1,
        "warmup_ratio": 0.05,
        "log_every": 10,
        "mixed_precision": "fp32",
    },
    "saving": {"save_steps": 100, "save_total_limit": 2},
    "evaluation": {"freq": 100, "inputs": ["请介绍一下你自己", "What is the capital of France?"], "max_new_tokens": 48},
}
TINY_METHODS: dict[str, dict[str, Any]] = {
    "lora": {"model": {"method": "lora", "lora": {"r": 64, "alpha": 128, "dropout": 0.0}}, "training": {"lr": 3e-3}},
    "full": {"model": {"method": "full"}, "training": {"lr": 1e-3}},
    "qlora": {"model": {"method": "qlora", "lora": {"r": 64, "alpha": 128, "dropout": 0.0}}, "training": {"lr": 3e-3}},
}


# LLaVA (xtune.multimodal), as XTuner's llava_internlm2_chat_1_8b_* configs: stage 1 trains only the projector on
# caption data (LLaVA-Pretrain), stage 2 the projector, QLoRA on the LLM and LoRA on the vision encoder on
# instruction data (LLaVA-665k), starting from stage 1's projector. Data from the LLaVA repository, saved locally.
# Global batch 256 (pretrain) and 128 (finetune) on 8 GPUs: `xtune train NAME --nproc-per-node 8`.
LLAVA_INTERNLM2_1_8B: dict[str, Any] = {
    "model": {
        "path": "internlm/internlm2-chat-1_8b",
        "vision": {"path": "openai/clip-vit-large-patch14-336", "feature_layer": -2},
    },
    "data": {"template": "internlm2_chat", "max_length": 2048, "pack_to_max_length": False, "group_by_length": True},
    "training": {"epochs": 1, "gradient_accumulation": 1, "warmup_ratio": 0.03, "weight_decay": 0.0, "seed": 0},
    "saving": {"save_steps": 500, "save_total_limit": 2},
    "evaluation": {"freq": 500, "inputs": []},
}
LLAVA_STAGES: dict[str, dict[str, Any]] = {
    "pretrain": {
        "model": {"method": "frozen"},
        "data": {
            "datasets": [
                {
                    "path": "data/llava_data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json",
                    "format": "llava",
                    "image_folder": "data/llava_data/LLaVA-Pretrain/images",
                }
            ]
        },
        "training": {"batch_size": 32, "lr": 1e-3},
    },
    "finetune": {
        "model": {
            "method": "qlora",
            "lora": {"r": 512, "alpha": 256, "dropout": 0.05},
            "gradient_checkpointing": True,
            "vision": {
                "lora": True,
                "projector_path": "work_dirs/llava_internlm2_chat_1_8b_clip_vit_large_p14_336_e1_gpu8_pretrain/final",
            },
        },
        "data": {
            "datasets": [
                {
                    "path": "data/llava_data/LLaVA-Instruct-150K/llava_v1_5_mix665k.json",
                    "format": "llava",
                    "image_folder": "data/llava_data/llava_images",
                }
            ],
            "pad_image_to_square": True,
        },
        "training": {"batch_size": 16, "lr": 2e-4},
    },
}
# The offline LLaVA demo: the built-in tiny LLM and a tiny CLIP, both randomly initialised, on coloured shapes
# written by `python -m xtune.multimodal.shapes data/shapes`.
TINY_LLAVA: dict[str, Any] = {
    "model": {
        "path": "builtin:tiny-llama",
        "random_init": True,
        "dtype": "float32",
        "vision": {"path": "builtin:tiny-clip", "random_init": True},
    },
    "data": {"template": "qwen_chat", "max_length": 128, "pack_to_max_length": False, "group_by_length": True},
    "training": {
        "epochs": None,
        "batch_size": 16,
        "gradient_accumulation": 1,
        "warmup_ratio": 0.05,
        "log_every": 10,
        "mixed_precision": "fp32",
    },
    "saving": {"save_steps": 1000, "save_total_limit": 1},
    "evaluation": {"inputs": []},
}
TINY_LLAVA_STAGES: dict[str, dict[str, Any]] = {
    "pretrain": {
        "model": {"method": "frozen"},
        "data": {
            "datasets": [{"path": "data/shapes/captions.jsonl", "format": "llava", "image_folder": "data/shapes"}]
        },
        "training": {"max_steps": 60, "lr": 3e-3},
    },
    "lora_finetune": {
        "model": {
            "method": "lora",
            "lora": {"r": 64, "alpha": 128, "dropout": 0.0},
            "vision": {"projector_path": "work_dirs/tiny_llava_pretrain/final"},
        },
        "data": {
            "datasets": [{"path": "data/shapes/questions.jsonl", "format": "llava", "image_folder": "data/shapes"}]
        },
        # 1e-3: LoRA on a randomly initialised LLM diverges at the 3e-3 of the text demo (measured)
        "training": {"max_steps": 300, "lr": 1e-3},
    },
}


def merge(base: dict, *updates: dict) -> dict:
    """Deep-merge dicts; later values win, lists are replaced whole."""
    out = copy.deepcopy(base)
    for update in updates:
        for key, value in update.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merge(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
    return out


def _build() -> dict[str, dict[str, Any]]:
    presets = {}
    for family, family_part in FAMILIES.items():
        for method, method_part in METHODS.items():
            for dataset, dataset_part in DATASETS.items():
                presets[f"{family}_{method}_{dataset}_e3"] = merge(
                    BASE, family_part, method_part, dataset_part, {"training": {"epochs": 3}}
                )
    for method, method_part in TINY_METHODS.items():
        presets[f"tiny_assistant_{method}"] = merge(TINY_ASSISTANT, method_part)
    llava = "llava_internlm2_chat_1_8b_{}clip_vit_large_p14_336_{}e1_gpu8_{}"
    presets[llava.format("", "", "pretrain")] = merge(LLAVA_INTERNLM2_1_8B, LLAVA_STAGES["pretrain"])
    presets[llava.format("qlora_", "lora_", "finetune")] = merge(LLAVA_INTERNLM2_1_8B, LLAVA_STAGES["finetune"])
    for stage, part in TINY_LLAVA_STAGES.items():
        presets[f"tiny_llava_{stage}"] = merge(TINY_LLAVA, part)
    return presets


PRESETS: dict[str, dict[str, Any]] = _build()


def list_presets(pattern: str | None = None) -> list[str]:
    names = sorted(PRESETS)
    if pattern:
        glob = pattern if any(c in pattern for c in "*?[") else f"*{pattern}*"
        names = [n for n in names if fnmatch.fnmatch(n, glob)]
    return names


# XTuner's long-context name option: NAME_sp2 / NAME_sp4 is preset NAME with each sequence split over 2 / 4 processes
# (training.sequence_parallel; run with a multiple of N processes).
SEQUENCE_PARALLEL_OPTIONS: dict[str, dict[str, Any]] = {
    f"sp{n}": {"training": {"sequence_parallel": n}} for n in (2, 4, 8)
}


def is_preset(name: str) -> bool:
    base, _, option = name.rpartition("_")
    return name in PRESETS or (option in SEQUENCE_PARALLEL_OPTIONS and base in PRESETS)


def get_preset(name: str) -> dict[str, Any]:
    base, _, option = name.rpartition("_")
    if name not in PRESETS and option in SEQUENCE_PARALLEL_OPTIONS:
        return merge(PRESETS[base], SEQUENCE_PARALLEL_OPTIONS[option])
    return copy.deepcopy(PRESETS[name])
