"""Presets built from parts (model family x method x dataset), named the XTuner way.

XTuner v0 shipped hundreds of near-identical config files; here each preset is one line of composition,
and `xtune copy-cfg` writes the resolved YAML for a user to edit.
"""

from __future__ import annotations

import copy
import fnmatch
import re
from collections.abc import Iterator, Mapping
from typing import Any

# Paths are Hugging Face repo ids: xtune never downloads, so they resolve only from a local directory of that
# name or the local Hugging Face cache; otherwise the error says how to fetch the model and set model.path.
# Every LLM family of XTuner v0, named as v0 names it, with the template of the family's chat models (base models
# included: v0's base-model configs train them into that chat format). Families loaded natively (transformers, or
# InternLM2 converted to Llama) need no remote code; the others say trust_remote_code explicitly.
_REMOTE = {"trust_remote_code": True}


def _family(path: str, template: str, remote: bool = False) -> dict[str, Any]:
    return {"model": {"path": path, **(_REMOTE if remote else {})}, "data": {"template": template}}


def _sizes(prefix: str, repo: str, template: str, sizes: dict[str, str], remote: bool = False) -> dict[str, dict]:
    """One family's models: v0's name suffix -> the repo name suffix."""
    return {f"{prefix}{name}": _family(f"{repo}{suffix}", template, remote) for name, suffix in sizes.items()}


FAMILIES: dict[str, dict[str, Any]] = {
    # InternLM v1: remote code (Llama-shaped with attention biases, but its own model_type and tokenizer code)
    **_sizes(
        "internlm_",
        "internlm/internlm-",
        "internlm_chat",
        {"7b": "7b", "chat_7b": "chat-7b", "20b": "20b", "chat_20b": "chat-20b"},
        remote=True,
    ),
    # InternLM2 and 2.5: loaded natively as Llama (models/internlm2.py)
    **_sizes(
        "internlm2_",
        "internlm/internlm2-",
        "internlm2_chat",
        {
            "1_8b": "1_8b",
            "chat_1_8b": "chat-1_8b",
            "chat_1_8b_sft": "chat-1_8b-sft",
            "7b": "7b",
            "chat_7b": "chat-7b",
            "chat_7b_sft": "chat-7b-sft",
            "20b": "20b",
            "chat_20b": "chat-20b",
            "chat_20b_sft": "chat-20b-sft",
        },
    ),
    **_sizes(
        "internlm2_5_",
        "internlm/internlm2_5-",
        "internlm2_chat",
        {
            "1_8b": "1_8b",
            "chat_1_8b": "1_8b-chat",
            "7b": "7b",
            "chat_7b": "7b-chat",
            "20b": "20b",
            "chat_20b": "20b-chat",
        },
    ),
    "internlm3_8b_instruct": _family("internlm/internlm3-8b-instruct", "internlm2_chat"),
    # Qwen (v1): remote code; Qwen1.5, Qwen2, Qwen2.5: transformers' qwen2
    **_sizes(
        "qwen_",
        "Qwen/Qwen-",
        "qwen_chat",
        {"1_8b": "1_8B", "1_8b_chat": "1_8B-Chat", "7b": "7B", "7b_chat": "7B-Chat", "72b": "72B"},
        remote=True,
    ),
    **_sizes(
        "qwen1_5_",
        "Qwen/Qwen1.5-",
        "qwen_chat",
        {
            f"{size}{chat}": f"{size.replace('_', '.').upper()}{'-Chat' if chat else ''}"
            for size in ("0_5b", "1_8b", "4b", "7b", "14b", "32b", "72b", "110b")
            for chat in ("", "_chat")
        },
    ),
    **_sizes(
        "qwen2_",
        "Qwen/Qwen2-",
        "qwen_chat",
        {f"{s}_instruct": f"{s.replace('_', '.').upper()}-Instruct" for s in ("0_5b", "1_5b", "7b", "72b")},
    ),
    **_sizes(
        "qwen2_5_",
        "Qwen/Qwen2.5-",
        "qwen2_5_chat",
        {
            f"{s}_instruct": f"{s.replace('_', '.').upper()}-Instruct"
            for s in ("0_5b", "1_5b", "3b", "7b", "14b", "32b", "72b")
        },
    ),
    # LLaMA (v1), Llama 2 and 3
    "llama_7b": _family("huggyllama/llama-7b", "default"),  # a base model without a chat format
    **_sizes(
        "llama2_",
        "meta-llama/Llama-2-",
        "llama2_chat",
        {"7b": "7b-hf", "7b_chat": "7b-chat-hf", "13b": "13b-hf", "13b_chat": "13b-chat-hf", "70b": "70b-hf"},
    ),
    **_sizes(
        "llama3_",
        "meta-llama/Meta-Llama-3-",
        "llama3_chat",
        {"8b": "8B", "8b_instruct": "8B-Instruct", "70b": "70B", "70b_instruct": "70B-Instruct"},
    ),
    # Mistral, Mixtral, Zephyr
    "mistral_7b": _family("mistralai/Mistral-7B-v0.1", "mistral"),
    "mistral_7b_instruct": _family("mistralai/Mistral-7B-Instruct-v0.2", "mistral"),
    "mixtral_8x7b": _family("mistralai/Mixtral-8x7B-v0.1", "mixtral"),
    "mixtral_8x7b_instruct": _family("mistralai/Mixtral-8x7B-Instruct-v0.1", "mixtral"),
    "zephyr_7b_beta": _family("HuggingFaceH4/zephyr-7b-beta", "zephyr"),
    # Gemma, Phi-3, Cohere, Yi, StarCoder
    **_sizes("gemma_", "google/gemma-", "gemma", {"2b": "2b", "2b_it": "2b-it", "7b": "7b", "7b_it": "7b-it"}),
    **_sizes(
        "phi3_mini_",
        "microsoft/Phi-3-mini-",
        "phi3_chat",
        {"4k_instruct": "4k-instruct", "128k_instruct": "128k-instruct"},
    ),
    "cohere_104b": _family("CohereForAI/c4ai-command-r-plus", "cohere_chat"),
    **_sizes("yi_", "01-ai/Yi-", "yi", {"6b": "6B", "34b": "34B"}),
    "starcoder": _family("bigcode/starcoder", "default"),  # a code model without a chat format
    # DeepSeek: the coder is Llama; DeepSeek-MoE runs its own code; DeepSeek-V2 is transformers' deepseek_v2
    **_sizes(
        "deepseek_coder_6_7b_",
        "deepseek-ai/deepseek-coder-6.7b-",
        "deepseek_coder",
        {"base": "base", "instruct": "instruct"},
    ),
    **_sizes(
        "deepseek_moe_16b_", "deepseek-ai/deepseek-moe-16b-", "deepseek_v2", {"base": "base", "chat": "chat"}, True
    ),
    **_sizes("deepseek_v2_", "deepseek-ai/DeepSeek-V2-", "deepseek_v2", {"chat": "Chat", "lite_chat": "Lite-Chat"}),
    # ChatGLM3, Baichuan 1 and 2, MiniCPM (1B, 2B): remote code
    **_sizes("chatglm3_6b", "THUDM/chatglm3-6b", "chatglm3", {"": "", "_base": "-base"}, remote=True),
    **_sizes("baichuan_", "baichuan-inc/Baichuan-", "default", {"7b": "7B", "13b_base": "13B-Base"}, remote=True),
    "baichuan_13b_chat": _family("baichuan-inc/Baichuan-13B-Chat", "baichuan_chat", remote=True),
    **_sizes(
        "baichuan2_",
        "baichuan-inc/Baichuan2-",
        "baichuan2_chat",
        {"7b_base": "7B-Base", "7b_chat": "7B-Chat", "13b_base": "13B-Base", "13b_chat": "13B-Chat"},
        remote=True,
    ),
    **_sizes("minicpm_", "openbmb/MiniCPM-", "minicpm", {"1b": "1B-sft-bf16", "2b": "2B-sft-bf16"}, remote=True),
}

# v0's families that xtune has no preset for yet, and why: a v0 name starting with one says so.
MISSING_FAMILIES: dict[str, str] = {
    "chatglm2_6b": "ChatGLM2's '[Round N]' prompt format is not an xtune template yet (ChatGLM3 is: chatglm3_6b)",
    "minicpm3_4b": "MiniCPM3's chat format is not an xtune template yet (MiniCPM 1B/2B's is: minicpm_2b)",
    "llava": "LLaVA presets exist for InternLM2-Chat-1.8B only (xtune list-cfg -p llava)",
}


def family_of_path(path: str) -> dict[str, Any] | None:
    """The family whose model lives at `path` (a repo id, or a local copy named after it), if any."""
    tail = path.rstrip("/").rsplit("/", 1)[-1].lower()
    for part in FAMILIES.values():
        if part["model"]["path"].rsplit("/", 1)[-1].lower() == tail:
            return part
    return None


METHODS: dict[str, dict[str, Any]] = {
    "full": {"model": {"method": "full", "gradient_checkpointing": True}, "training": {"lr": 2e-5}},
    "lora": {"model": {"method": "lora", "lora": {"r": 64, "alpha": 16, "dropout": 0.1}}, "training": {"lr": 2e-4}},
    "qlora": {
        "model": {"method": "qlora", "lora": {"r": 64, "alpha": 16, "dropout": 0.1}, "gradient_checkpointing": True},
        "training": {"lr": 2e-4},
    },
}


def _data(*files: tuple[str, str], epochs: int = 3) -> dict[str, Any]:
    """A dataset of v0's, saved locally: (path, format) per file, and the epochs v0 trained it for."""
    return {"data": {"datasets": [{"path": p, "format": f} for p, f in files]}, "training": {"epochs": epochs}}


# v0's named datasets, fetched once from the Hub (the id in the comment) and saved locally as JSON or JSONL.
_ALPACA = ("data/alpaca_data.json", "alpaca")  # tatsu-lab/alpaca
_ALPACA_ZH = ("data/alpaca-data-gpt4-chinese.jsonl", "alpaca_zh")  # silk-road/alpaca-data-gpt4-chinese
_OASST1 = ("data/openassistant-guanaco/train.jsonl", "oasst1")  # timdettmers/openassistant-guanaco
DATASETS: dict[str, dict[str, Any]] = {
    "alpaca": _data(_ALPACA),
    "alpaca_zh": _data(_ALPACA_ZH),
    "alpaca_enzh": _data(_ALPACA, _ALPACA_ZH),
    "alpaca_enzh_oasst1": _data(_ALPACA, _ALPACA_ZH, _OASST1),
    "oasst1": _data(_OASST1),
    "arxiv_gentitle": _data(("data/arxiv_postprocessed.json", "arxiv")),  # Kaggle arXiv metadata, v0's processing
    "code_alpaca": _data(("data/CodeAlpaca_20K.jsonl", "code_alpaca")),  # HuggingFaceH4/CodeAlpaca_20K
    "colorist": _data(("data/colors.jsonl", "colorist"), epochs=5),  # burkelibbey/colors
    "lawyer": _data(  # CrimeKgAssitant + DISC-Law-SFT (as v0's lawyer configs)
        ("data/CrimeKgAssitant清洗后_52k.json", "crime_kg_assistant"),
        ("data/训练数据_带法律依据_92k.json", "law_reference"),
    ),
    "medical": _data(("data/medical/finetune/train_en_1.json", "medical"), epochs=1),  # shibing624/medical
    "msagent_react": _data(("data/MSAgent-Bench/train.jsonl", "msagent_react")),  # damo/MSAgent-Bench
    "open_platypus": _data(("data/Open-Platypus.jsonl", "alpaca")),  # garage-bAInd/Open-Platypus
    "openorca": _data(("data/OpenOrca.parquet", "open_orca"), epochs=1),  # Open-Orca/OpenOrca
    "sql": _data(("data/sql-create-context.jsonl", "sql")),  # b-mc2/sql-create-context
    "tiny_codes": _data(("data/tiny-codes.jsonl", "tiny_codes"), epochs=1),  # nampdn-ai/tiny-codes
    "wizardlm": _data(("data/WizardLM_evol_instruct_V2_143k.json", "wizardlm"), epochs=1),  # WizardLM evol V2
    "stack_exchange": _data(("data/stack-exchange-instruction.jsonl", "stack_exchange"), epochs=1),
    "custom_sft": _data(("data/custom_sft.jsonl", "openai"), epochs=1),  # yours, in OpenAI's chat layout
    "custom_pretrain": _data(("data/custom_pretrain.jsonl", "pretrain"), epochs=1),  # yours, {"text"} per line
}
# v0's datasets that xtune has no preset for, and why.
MISSING_DATASETS: dict[str, str] = {
    "moss_sft": "MOSS-003-SFT needs v0's MOSS plugin format, which xtune does not read",
    "cmd": "v0's cmd configs read the Chinese medical dialogue CSVs in a layout xtune has no format for; use medical",
    "skypile_pretrain": "pre-training on SkyPile: write it as {text} JSONL and use format pretrain",
    "pgbooks": "PG-19 books for long-context pre-training: write them as {text} JSONL and use custom_pretrain",
    "refcoco": "RefCOCO grounding data is multimodal beyond LLaVA's format",
    "dpo": "preference training: arriving with training.objective",
    "orpo": "preference training: arriving with training.objective",
    "reward": "preference training: arriving with training.objective",
}

MISSING_METHODS: dict[str, str] = {
    "int8": "8-bit LoRA: xtune quantizes the base to 4 bits (qlora) or not at all (lora)",
}

# v0's name options after <family>_<method>_<dataset>: `_512` (max length), `_e<N>` (epochs), `_gpu8` (the global
# batch of one GPU's 16 accumulated steps spread over 8 GPUs: `xtune train NAME --nproc-per-node 8`), `_varlenattn`
# (v0's varlen flash attention: xtune keeps packed samples apart with any kernel; this asks for flash-attention-2);
# also `_<N>k` (max length N x 1024) and `_z<N>` (DeepSpeed ZeRO stage N).
OPTIONS: dict[str, dict[str, Any]] = {
    "512": {"data": {"max_length": 512}},
    "gpu8": {"training": {"gradient_accumulation": 2}},
    "varlenattn": {"model": {"attn_implementation": "flash_attention_2"}},
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


def _v0_parts(name: str) -> tuple[dict, ...] | None:
    """The parts of a v0-style name, `<family>_<method>_<dataset>[_512]_e<N>[_gpu8][_varlenattn]`, or None."""
    name = name.replace("deepseekcoder_", "deepseek_coder_", 1)  # v0 spells it both ways
    for family in sorted(FAMILIES, key=len, reverse=True):  # internlm2_chat_7b_sft before internlm2_chat_7b
        if not name.startswith(f"{family}_"):
            continue
        method, _, rest = name[len(family) + 1 :].partition("_")
        if method == "full" and rest.startswith("finetune_"):  # v0's custom-data configs say full_finetune
            rest = rest.removeprefix("finetune_")
        for dataset in sorted(DATASETS, key=len, reverse=True):
            if method in METHODS and rest.startswith(f"{dataset}_"):
                options = _options(rest[len(dataset) + 1 :])
                if options is not None:
                    return (BASE, FAMILIES[family], METHODS[method], DATASETS[dataset], *options)
    return None


def _options(words: str) -> list[dict] | None:
    """`512_e3_gpu8`: the options' parts; the epochs option is required, as in every v0 name."""
    parts, epochs = [], None
    for word in words.split("_"):
        if word.startswith("e") and word[1:].isdigit() and epochs is None:
            epochs = {"training": {"epochs": int(word[1:])}}
            parts.append(epochs)
        elif word in OPTIONS and (epochs is None) == (word == "512"):  # _512 before _eN, the others after it
            parts.append(OPTIONS[word])
        elif epochs and re.fullmatch(r"[1-9]\d*k", word):  # _8k: the context length
            parts.append({"data": {"max_length": int(word[:-1]) * 1024}})
        elif epochs and re.fullmatch(r"z[123]", word):  # _z3: DeepSpeed ZeRO stage 3
            parts.append({"training": {"engine": "deepspeed", "deepspeed": f"zero{word[1]}"}})
        else:
            return None
    return parts if epochs else None


def _listed() -> dict[str, tuple[dict, ...]]:
    """The names `xtune list-cfg` lists: every family x method x dataset with v0's epochs for the dataset, oasst1
    also at max length 512 (v0's `_512`); other option combinations resolve by name without being listed."""
    recipes: dict[str, tuple[dict, ...]] = {}
    for family in FAMILIES:
        for method in METHODS:
            for dataset, part in DATASETS.items():
                epochs = part["training"]["epochs"]
                parts = (BASE, FAMILIES[family], METHODS[method], part)
                recipes[f"{family}_{method}_{dataset}_e{epochs}"] = parts
                if dataset == "oasst1":
                    recipes[f"{family}_{method}_{dataset}_512_e{epochs}"] = (*parts, OPTIONS["512"])
    for method, method_part in TINY_METHODS.items():
        recipes[f"tiny_assistant_{method}"] = (TINY_ASSISTANT, method_part)
    llava = "llava_internlm2_chat_1_8b_{}clip_vit_large_p14_336_{}e1_gpu8_{}"
    recipes[llava.format("", "", "pretrain")] = (LLAVA_INTERNLM2_1_8B, LLAVA_STAGES["pretrain"])
    recipes[llava.format("qlora_", "lora_", "finetune")] = (LLAVA_INTERNLM2_1_8B, LLAVA_STAGES["finetune"])
    for stage, part in TINY_LLAVA_STAGES.items():
        recipes[f"tiny_llava_{stage}"] = (TINY_LLAVA, part)
    return recipes


def _sequence_parallel_option(name: str) -> tuple[str, list[dict]]:
    """XTuner's long-context name option, on any preset: `NAME_sp4` is NAME with each sequence split over 4 processes
    (training.sequence_parallel). The name without it, and its part."""
    match = re.fullmatch(r"(.+)_sp([1-9]\d*)", name)
    if match is None:
        return name, []
    return match[1], [{"training": {"sequence_parallel": int(match[2])}}]


class _Presets(Mapping[str, dict[str, Any]]):
    """Every preset by name, composed from its parts when asked for. Iterating gives the listed names; a v0 name with
    other options (`..._alpaca_e1_gpu8_varlenattn`) is found too, and any of them with `_spN` after it."""

    def __init__(self) -> None:
        self._recipes = _listed()

    def __getitem__(self, name: str) -> dict[str, Any]:
        base, sequence_parallel = _sequence_parallel_option(name)
        parts = self._recipes.get(base) or _v0_parts(base)
        if parts is None:
            raise KeyError(name)
        return merge(*parts, *sequence_parallel)

    def __iter__(self) -> Iterator[str]:
        return iter(self._recipes)

    def __len__(self) -> int:
        return len(self._recipes)


PRESETS = _Presets()


def list_presets(pattern: str | None = None) -> list[str]:
    names = sorted(PRESETS)
    if pattern:
        glob = pattern if any(c in pattern for c in "*?[") else f"*{pattern}*"
        names = [n for n in names if fnmatch.fnmatch(n, glob)]
        if not names and pattern in PRESETS:  # a v0 name whose options the list does not spell out
            names = [pattern]
    return names


def missing_reason(pattern: str) -> str | None:
    """Why a v0 name (or a piece of one) matches no preset: the v0 family or dataset xtune lacks, or the part of the
    name that is not a family, method, dataset or option xtune knows."""
    for family, reason in MISSING_FAMILIES.items():
        if pattern.startswith(family):
            return f"XTuner v0's {family} family has no xtune preset: {reason}"
    for dataset, reason in MISSING_DATASETS.items():
        if f"_{dataset}" in f"_{pattern}":
            return f"XTuner v0's {dataset} dataset has no xtune preset: {reason}"
    family = next((f for f in sorted(FAMILIES, key=len, reverse=True) if pattern.startswith(f"{f}_")), None)
    if family is None:
        return None
    method, _, rest = pattern[len(family) + 1 :].partition("_")
    if method in MISSING_METHODS:
        return f"XTuner v0's {method} method has no xtune preset: {MISSING_METHODS[method]}"
    if method not in METHODS:
        return f"{method!r} is not a method; after {family}_ comes one of {', '.join(METHODS)}"
    dataset = next((d for d in sorted(DATASETS, key=len, reverse=True) if rest.startswith(d)), None)
    if dataset is None:
        return f"no dataset {rest.split('_e')[0]!r}; datasets: {', '.join(DATASETS)}"
    options = rest[len(dataset) :]
    return (
        f"options {options!r} are not v0's: [_512]_e<N>[_gpu8][_varlenattn][_8k][_z3], e.g. "
        f"{family}_{method}_{dataset}_512_e3_gpu8"
    )


def get_preset(name: str) -> dict[str, Any]:
    return PRESETS[name]  # composed afresh on each call: the caller may change it
