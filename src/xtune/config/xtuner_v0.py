"""XTuner v0 `.py` configs read as data and written as xtune YAML: `xtune convert xtuner-config CONFIG.py`.

A v0 config is an mmengine config: module-level assignments of `dict(type=..., ...)`, with imported classes and
functions as values. It is read with `ast` and never executed: names are looked up in what the file itself assigned,
imported names stay names (`Ref`), and any other call stays a `Call` that is described, never made. What maps onto
xtune's schema is mapped from the config's structure (`optim_wrapper.optimizer.lr`, not a variable called `lr`);
everything else is listed by key and line, never dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xtune.config.presets import family_of_path
from xtune.config.schema import Config, config_yaml, read_config_text, validate_config
from xtune.config.xtuner_v0_ast import Ref, Unmapped, V0Dict, V0Reader, describe, number
from xtune.errors import ConfigError

# v0's prompt templates (xtuner.utils.PROMPT_TEMPLATE.<name>) -> xtune's; those missing have no xtune template yet.
V0_TEMPLATES = {
    "default": "default",
    "zephyr": "zephyr",
    "internlm_chat": "internlm_chat",
    "internlm2_chat": "internlm2_chat",
    "llama2_chat": "llama2_chat",
    "llama3_chat": "llama3_chat",
    "chatglm3": "chatglm3",
    "qwen_chat": "qwen_chat",
    "baichuan_chat": "baichuan_chat",
    "baichuan2_chat": "baichuan2_chat",
    "vicuna": "vicuna",
    "wizardlm": "vicuna",  # v0's wizardlm template is Vicuna v1.1's format
    "deepseek_coder": "deepseek_coder",
    "deepseekcoder": "deepseek_coder",
    "deepseek_moe": "deepseek_v2",  # deepseek-moe-16b-chat's own format is DeepSeek-V2's "User: ...\n\nAssistant:"
    "deepseek_v2": "deepseek_v2",
    "mistral": "mistral",
    "mixtral": "mixtral",
    "minicpm": "minicpm",
    "gemma": "gemma",
    "cohere_chat": "cohere_chat",
    "phi3_chat": "phi3_chat",
}

# v0's dataset map functions (xtuner.dataset.map_fns) -> xtune's built-in formats of the same data.
V0_FORMATS = {
    "alpaca_map_fn": "alpaca",
    "alpaca_zh_map_fn": "alpaca_zh",
    "arxiv_map_fn": "arxiv",
    "code_alpaca_map_fn": "code_alpaca",
    "colors_map_fn": "colorist",
    "crime_kg_assitant_map_fn": "crime_kg_assistant",
    "law_reference_map_fn": "law_reference",
    "medical_map_fn": "medical",
    "msagent_react_map_fn": "msagent_react",
    "oasst1_map_fn": "oasst1",
    "openai_map_fn": "openai",
    "openorca_map_fn": "open_orca",
    "sql_map_fn": "sql",
    "stack_exchange_map_fn": "stack_exchange",
    "tiny_codes_map_fn": "tiny_codes",
    "wizardlm_map_fn": "wizardlm",
    "pretrain_map_fn": "pretrain",
    "llava_map_fn": "llava",
}

# v0's SYSTEM_TEMPLATE texts (xtuner.utils.SYSTEM_TEMPLATE.<name>), which configs name for evaluation prompts.
V0_SYSTEMS = {
    "alpaca": "Below is an instruction that describes a task. Write a response that appropriately completes the "
    "request.\n",
    "arxiv_gentile": "If you are an expert in writing papers, please generate a good paper title for this paper based "
    "on other authors' descriptions of their abstracts.\n",
    "colorist": "You are a professional color designer. Please provide the corresponding colors based on the "
    "description of Human.\n",
    "coder": "You are a professional programer. Please provide the corresponding code based on the description of "
    "Human.\n",
    "lawyer": "你现在是一名专业的中国律师，请根据用户的问题给出准确、有理有据的回复。\n",
    "medical": "如果你是一名医生，请根据患者的描述回答医学问题。\n",
    "sql": "If you are an expert in SQL, please generate a good SQL Query for Question based on the CREATE TABLE "
    "statement.\n",
}

# InternLM2's own module names -> the Llama names xtune loads it with (models/internlm2.py)
_INTERNLM2_MODULES = {
    "wqkv": ("q_proj", "k_proj", "v_proj"),
    "wo": ("o_proj",),
    "w1": ("gate_proj",),
    "w3": ("up_proj",),
    "w2": ("down_proj",),
}

# v0's preference models (xtuner.model.dpo / orpo / reward) and DPO's loss_type -> training.objective
PREFERENCE_MODELS = ("DPO", "ORPO", "RewardModel")
V0_DPO_LOSSES = {"sigmoid": "dpo", "ipo": "ipo", "hinge": "hinge"}
# v0's preference map functions -> the xtune format of the records they read. Without one, v0 reads records that
# are already {prompt, chosen, rejected} message lists: xtune's `preference`.
V0_PREFERENCE_FORMATS = {"orpo_dpo_mix_40k_map_fn": "preference_conversations"}
# Modules whose names a v0 config imports as values; a name from any other module is the user's own code.
KNOWN_MODULES = ("torch", "datasets", "mmengine", "peft", "transformers", "xtuner", "deepspeed")
# Top-level settings of every v0 config that xtune does itself: they carry no choice to convert.
HANDLED = {
    "tokenizer": "xtune loads the model's own tokenizer",
    "image_processor": "xtune loads the vision encoder's own processor",
    "env_cfg": "process settings",
    "visualizer": "xtune logs to metrics.jsonl, training_curve.png and TensorBoard",
    "log_level": "logging",
    "log_processor": "logging",
    "launcher": "xtune train --nproc-per-node starts the processes",
}


@dataclass
class Conversion:
    source: str
    raw: dict[str, Any]  # the mapped keys only, as a config file would hold them
    config: Config
    unmapped: list[Unmapped]
    notes: list[str]
    handled: list[str] = field(default_factory=list)

    @property
    def blocking(self) -> list[Unmapped]:
        """What training this config without would train something else than the v0 config does."""
        return [u for u in self.unmapped if u.blocking]

    def yaml(self) -> str:
        lines = [f"# xtune config converted from the XTuner v0 config {self.source} (read, never run)."]
        if self.unmapped:
            lines.append("# NOT MAPPED (set these yourself, or leave them out):")
            lines += [f"#   {u}" for u in self.unmapped]
        if self.notes:
            lines.append("# Notes:")
            lines += [f"#   {note}" for note in self.notes]
        if self.handled:
            lines.append("# Handled by xtune itself, no setting:")
            lines += [f"#   {name}: {HANDLED[name]}" for name in self.handled]
        return "\n".join(lines) + "\n\n" + config_yaml(self.config)


class _Mapper:
    """The read values onto xtune's schema; every key it does not consume is reported with its line."""

    def __init__(self, reader: V0Reader, base_dir: Path):
        self.r, self.base_dir = reader, base_dir
        self.raw: dict[str, Any] = {"model": {}, "data": {}, "training": {}, "saving": {}, "evaluation": {}}
        self.unmapped: list[Unmapped] = list(reader.problems)
        self.notes: list[str] = []
        self.used_top: set[str] = set()

    # --- helpers --------------------------------------------------------------------------------------------------
    def top(self, name: str) -> Any:
        self.used_top.add(name)
        return self.r.env.get(name)

    def miss(self, d: V0Dict | None, key: str, path: str, reason: str, blocking: bool = False) -> None:
        line = d.lines.get(key, d.line) if isinstance(d, V0Dict) else 0
        self.unmapped.append(Unmapped(line, path, reason, blocking))

    def set(self, section: str, key: str, value: Any) -> None:
        self.raw[section][key] = value

    def is_type(self, d: Any, *leaves: str) -> bool:
        kind = d.get("type") if isinstance(d, V0Dict) else None
        return isinstance(kind, Ref) and kind.leaf in leaves

    def expect(self, d: V0Dict, key: str, path: str, ok: Any, reason: str) -> None:
        """A key xtune has no setting for, fine when it has the value xtune behaves as (`ok`: a value or a test)."""
        if key not in d:
            return
        value = d.take(key)
        fine = ok(value) if callable(ok) else value == ok
        if not fine:
            self.miss(d, key, path, f"{describe(value)}: {reason}")

    # --- the sections ---------------------------------------------------------------------------------------------
    def run(self) -> None:
        model = self.top("model")
        if not isinstance(model, V0Dict):
            self.unmapped.append(Unmapped(self.r.lines.get("model", 0), "model", "no model = dict(...) found", True))
        else:
            self.model(model)
        self.dataloader(self.top("train_dataloader"))
        self.optimizer(self.top("optim_wrapper"))
        self.schedule(self.top("param_scheduler"), self.top("train_cfg"))
        self.hooks(self.top("default_hooks"), self.top("custom_hooks"))
        if self.raw["training"].get("objective") == "reward" and self.raw["evaluation"].pop("inputs", None):
            self.notes.append("evaluation_inputs left out: a reward model scores replies, it answers no prompts")
        self.runtime()
        self.leftovers()

    def model(self, model: V0Dict) -> None:
        kind = model.take("type")
        leaf = kind.leaf if isinstance(kind, Ref) else None
        if leaf in PREFERENCE_MODELS:
            self.preference(model, leaf)
        elif leaf not in ("SupervisedFinetune", "LLaVAModel"):
            self.miss(model, "type", "model.type", f"{describe(kind)}: not a v0 model type xtune knows", True)
        llm = model.take("llm")
        if isinstance(llm, V0Dict):
            self.llm(llm)
        else:
            self.miss(model, "llm", "model.llm", f"{describe(llm)}: no dict(...) to read the model path from", True)
        if model.take("use_activation_checkpointing", True) is not False:  # v0's default: on
            self.set("model", "gradient_checkpointing", True)
        varlen = model.take("use_varlen_attn")
        if varlen is True:
            self.set("model", "attn_implementation", "flash_attention_2")
            self.notes.append(
                "use_varlen_attn=True: attn_implementation flash_attention_2 (packed samples attend "
                "apart with every xtune attention kernel)"
            )
        lora = model.take("lora") if "lora" in model else model.take("llm_lora")
        quantized = self.raw["model"].get("method") == "qlora"
        if isinstance(lora, V0Dict):
            self.lora(lora, "model.lora" if "lora" in model else "model.llm_lora")
            self.set("model", "method", "qlora" if quantized else "lora")
        elif lora is None:
            self.set("model", "method", "full")
            if quantized:
                self.miss(model, "llm", "model.llm.quantization_config", "a 4-bit base without LoRA cannot train")
        else:
            self.miss(model, "lora", "model.lora", f"{describe(lora)}: not a dict(type=LoraConfig, ...)")
        if leaf == "LLaVAModel":
            self.llava(model)

    def preference(self, model: V0Dict, leaf: str) -> None:
        """DPO (its loss_type: sigmoid, ipo, hinge), ORPO and RewardModel as training.objective and its settings."""
        settings: dict[str, Any] = {}
        if leaf == "DPO":
            loss = model.take("loss_type", "sigmoid")
            objective = V0_DPO_LOSSES.get(loss)
            if objective is None:
                known = ", ".join(f"{k} ({v})" for k, v in V0_DPO_LOSSES.items())
                self.miss(model, "loss_type", "model.loss_type", f"{loss!r}: xtune's DPO losses are {known}", True)
                objective = "dpo"
            for key in ("beta", "label_smoothing"):
                if key in model:
                    settings[key] = model.take(key)
        elif leaf == "ORPO":
            objective = "orpo"
            if "beta" in model:  # v0's (and TRL's) ORPO beta weighs the odds-ratio term: the paper's lambda
                settings["orpo_lambda"] = model.take("beta")
        else:
            objective = "reward"
            self.expect(
                model, "loss_type", "model.loss_type", "ranking", "xtune's reward loss is ranking (Bradley-Terry)"
            )
            self.expect(
                model, "penalty_type", "model.penalty_type", "none", "xtune's reward loss adds no score penalty"
            )
            model.take("penalty_weight")
        self.set("training", "objective", objective)
        if settings:
            self.set("training", "preference", settings)

    def llm(self, llm: V0Dict) -> None:
        kind = llm.take("type")
        if not (isinstance(kind, Ref) and kind.name.endswith("from_pretrained")):
            self.miss(llm, "type", "model.llm.type", f"{describe(kind)}: xtune loads models from a directory")
        path = llm.take("pretrained_model_name_or_path")
        if isinstance(path, str):
            self.set("model", "path", path)
            family = family_of_path(path)
            if family and family.get("model", {}).get("trust_remote_code"):
                self.set("model", "trust_remote_code", True)
                self.notes.append(f"{path} runs its own modeling code: trust_remote_code kept (only if you trust it)")
        else:
            self.miss(
                llm,
                "pretrained_model_name_or_path",
                "model.llm.pretrained_model_name_or_path",
                f"{describe(path)}: not a path string",
                blocking=True,
            )
        if llm.take("trust_remote_code") and not self.raw["model"].get("trust_remote_code"):
            self.notes.append(
                "trust_remote_code=True not carried over: xtune loads this model without its own code "
                "(set model.trust_remote_code: true if loading asks for it)"
            )
        dtype = llm.take("torch_dtype")
        if dtype is not None:
            self.notes.append(f"torch_dtype {describe(dtype)}: model.dtype auto (bfloat16 where the GPU has it)")
        if "attn_implementation" in llm:
            value = llm.take("attn_implementation")
            if value in ("sdpa", "eager", "flash_attention_2"):
                self.set("model", "attn_implementation", value)
            else:
                self.miss(llm, "attn_implementation", "model.llm.attn_implementation", f"{value!r}: unknown")
        quant = llm.take("quantization_config")
        if isinstance(quant, V0Dict) and self.is_type(quant, "BitsAndBytesConfig"):
            quant.take("type")
            if quant.take("load_in_4bit"):
                self.set("model", "method", "qlora")
                self.expect(
                    quant,
                    "bnb_4bit_quant_type",
                    "quantization_config.bnb_4bit_quant_type",
                    "nf4",
                    "xtune's QLoRA quantizes to nf4",
                )
                self.expect(
                    quant,
                    "bnb_4bit_use_double_quant",
                    "quantization_config.bnb_4bit_use_double_quant",
                    True,
                    "xtune's QLoRA quantizes the constants too",
                )
                for key in ("load_in_8bit", "llm_int8_threshold", "llm_int8_has_fp16_weight", "bnb_4bit_compute_dtype"):
                    quant.take(key)  # 8-bit settings are unused in 4-bit; the compute dtype follows model.dtype
            else:
                self.miss(
                    llm,
                    "quantization_config",
                    "model.llm.quantization_config",
                    "8-bit training: xtune quantizes the base to 4 bits (method qlora) or not at all",
                )
        elif quant is not None:
            self.miss(llm, "quantization_config", "model.llm.quantization_config", f"{describe(quant)}: unknown")
        self.report(llm, "model.llm")

    def lora(self, lora: V0Dict, path: str) -> None:
        if not self.is_type(lora, "LoraConfig"):
            self.miss(lora, "type", f"{path}.type", f"{describe(lora.get('type'))}: not peft's LoraConfig")
        lora.take("type")
        settings = {}
        for v0_key, key in (("r", "r"), ("lora_alpha", "alpha"), ("lora_dropout", "dropout")):
            if v0_key in lora:
                settings[key] = lora.take(v0_key)
        targets = lora.take("target_modules")
        if isinstance(targets, list | tuple) and all(isinstance(t, str) for t in targets):
            settings["target_modules"] = self.module_names(list(targets))
        elif targets is not None:
            self.miss(lora, "target_modules", f"{path}.target_modules", f"{describe(targets)}: not a list of names")
        self.expect(lora, "bias", f"{path}.bias", "none", "xtune's adapters train no biases")
        self.expect(lora, "task_type", f"{path}.task_type", "CAUSAL_LM", "xtune trains causal LMs")
        self.raw["model"]["lora"] = settings
        self.report(lora, path)

    def module_names(self, targets: list[str]) -> list[str]:
        """InternLM2's module names as xtune loads it, as Llama (wqkv is split into q, k and v)."""
        if "internlm2" not in str(self.raw["model"].get("path", "")).lower().replace("_5", ""):
            return targets
        renamed = [name for t in targets for name in _INTERNLM2_MODULES.get(t, (t,))]
        if renamed != targets:
            self.notes.append(f"LoRA target_modules {targets}: {renamed} (xtune loads InternLM2 as Llama)")
        return renamed

    def llava(self, model: V0Dict) -> None:
        vision: dict[str, Any] = {}
        encoder = model.take("visual_encoder")
        if isinstance(encoder, V0Dict) and isinstance(encoder.get("pretrained_model_name_or_path"), str):
            encoder.take("type")
            vision["path"] = encoder.take("pretrained_model_name_or_path")
            self.report(encoder, "model.visual_encoder")
        else:
            self.miss(model, "visual_encoder", "model.visual_encoder", "no encoder path to read", blocking=True)
        if "visual_select_layer" in model:
            vision["feature_layer"] = model.take("visual_select_layer")
        frozen = model.take("freeze_llm") and "llm_lora" not in model and "lora" not in model
        if frozen:
            self.set("model", "method", "frozen")
        model.take("freeze_visual_encoder")
        if isinstance(model.take("visual_encoder_lora"), V0Dict):
            vision["lora"] = True
        projector = model.take("pretrained_pth")
        if isinstance(projector, str):
            vision["projector_path"] = projector
            self.notes.append(
                "pretrained_pth: xtune reads stage 1's final/ (or its projector.safetensors); point "
                "model.vision.projector_path there if this is a v0 .pth"
            )
        self.raw["model"]["vision"] = vision

    def dataloader(self, loader: Any) -> None:
        if not isinstance(loader, V0Dict):
            self.unmapped.append(
                Unmapped(
                    self.r.lines.get("train_dataloader", 0),
                    "train_dataloader",
                    "no train_dataloader = dict(...) found",
                    True,
                )
            )
            return
        if "batch_size" in loader:
            self.set("training", "batch_size", loader.take("batch_size"))
        loader.take("num_workers")  # xtune tokenizes before training; its batches need no loader workers
        sampler = loader.take("sampler")
        if self.is_type(sampler, "LengthGroupedSampler"):
            sampler.take("type")
            sampler.take("length_property")
            sampler.take("per_device_batch_size")
            self.set("data", "group_by_length", True)
        elif self.is_type(sampler, "DefaultSampler", "SequenceParallelSampler"):  # the second: v0's SP configs
            sampler.take("type")
            sampler.take("seed")  # randomness.seed is the seed
            if sampler.take("shuffle") is False:
                self.set("data", "shuffle", False)
        if isinstance(sampler, V0Dict):
            self.report(sampler, "train_dataloader.sampler")
        collate = loader.take("collate_fn")
        if isinstance(collate, V0Dict):
            collate.take("type")
            collate.take("use_varlen_attn")
            self.report(collate, "train_dataloader.collate_fn")
        dataset = loader.take("dataset")
        parts = dataset.take("datasets") if self.is_type(dataset, "ConcatDataset") else [dataset]
        if self.is_type(dataset, "ConcatDataset"):
            dataset.take("type")
            self.report(dataset, "train_dataloader.dataset")
        path = "train_dataloader.dataset" + (".datasets" if len(parts) > 1 else "")
        self.raw["data"]["datasets"] = [
            d for i, part in enumerate(parts) for d in self.dataset(part, path + (f"[{i}]" if len(parts) > 1 else ""))
        ]
        if not self.raw["data"]["datasets"]:
            self.unmapped.append(Unmapped(loader.line, "train_dataloader.dataset", "no dataset could be read", True))
        self.report(loader, "train_dataloader")

    def dataset(self, d: Any, path: str) -> list[dict]:
        """One v0 dataset as xtune datasets: one per data file it reads."""
        if not isinstance(d, V0Dict):
            self.unmapped.append(Unmapped(getattr(d, "line", 0), path, f"{describe(d)}: not a dict(...)", True))
            return []
        kind = d.take("type")
        out: dict[str, Any] = {}
        if self.is_type(d, "LLaVADataset"):
            files = [d.take("data_path")]
            out["image_folder"] = d.take("image_folder")
            d.take("image_processor")
            if d.take("pad_image_to_square"):
                self.set("data", "pad_image_to_square", True)
        elif self.is_type(d, "process_hf_dataset") or (isinstance(kind, Ref) and kind.leaf == "build_origin_dataset"):
            source = d.take("dataset")
            files = self.source_paths(source, f"{path}.dataset")
        elif self.is_type(d, "build_preference_dataset"):
            files = self.source_paths(d.take("dataset"), f"{path}.dataset")
            # the objective says pairs or rewards; xtune reads the score at each sequence's last token, packs with
            # data.pack_to_max_length and tokenizes without worker processes
            for key in ("is_dpo", "is_reward", "reward_token_id", "num_proc", "max_packed_length"):
                d.take(key)
        else:
            self.miss(d, "type", f"{path}.type", f"{describe(kind)}: not a dataset type xtune reads", True)
            return []
        if not files or not all(isinstance(f, str) for f in files):
            return []
        out["format"] = self.format(d, path)
        for key in (
            "tokenizer",
            "remove_unused_columns",
            "shuffle_before_pack",
            "use_varlen_attn",
            "input_ids_with_output",
        ):
            d.take(key)
        template = d.take("template_map_fn")
        if isinstance(template, V0Dict):
            template.take("type")
            self.template(template.take("template"), template, f"{path}.template_map_fn.template")
            self.report(template, f"{path}.template_map_fn")
        for key, target in (("max_length", "max_length"), ("pack_to_max_length", "pack_to_max_length")):
            if key in d:
                value, known = d.take(key), self.raw["data"].get(target)
                if known is not None and known != value:
                    self.miss(
                        d, key, f"{path}.{key}", f"{value!r}: xtune has one {target} for all datasets ({known!r})"
                    )
                else:
                    self.set("data", target, value)
        if d.get("max_dataset_length") is not None:
            out["max_dataset_length"] = d.take("max_dataset_length")
        d.take("max_dataset_length")
        self.report(d, path)
        return [{"path": file, **out} for file in files]

    def source_paths(self, source: Any, path: str) -> list[str]:
        """load_dataset(...) as paths xtune reads: data files, a saved directory, or a Hub id to fetch first."""
        if not (isinstance(source, V0Dict) and self.is_type(source, "load_dataset")):
            reason = f"{describe(source)}: not dict(type=load_dataset, ...)"
            self.unmapped.append(Unmapped(getattr(source, "line", 0), path, reason, True))
            return []
        source.take("type")
        name, files = source.take("path"), source.take("data_files")
        if isinstance(files, V0Dict):
            files.take("train")
            self.report(files, f"{path}.data_files")
            files = files.get("train")
        files = [files] if isinstance(files, str) else files
        if name in ("json", "csv", "parquet") and isinstance(files, list) and all(isinstance(f, str) for f in files):
            result = files
        elif isinstance(name, str) and files is None:
            result = [name]
            if not (self.base_dir / name).exists() and name.count("/") == 1 and "." not in name.rpartition("/")[2]:
                self.notes.append(
                    f"{path}.path {name!r} is a Hub dataset id: xtune never downloads; save it "
                    "locally (datasets' save_to_disk, or its JSON) and set data.datasets[].path"
                )
        else:
            reason = f"path {describe(name)}, data_files {describe(files)}: name data files or a saved dataset"
            self.miss(source, "data_files" if files is not None else "path", path, reason, blocking=True)
            return []
        self.report(source, path)
        return result

    def format(self, d: V0Dict, path: str) -> str:
        map_fn = d.take("dataset_map_fn")
        pairs = self.is_type(d, "build_preference_dataset")
        if map_fn is None:
            # v0's own layouts: {"conversation": [{"system"?, "input", "output"}]}; pairs as message lists
            return "preference" if pairs else "conversation"
        if isinstance(map_fn, Ref) and map_fn.name.startswith("xtuner."):
            known = V0_PREFERENCE_FORMATS if pairs else V0_FORMATS
            if map_fn.leaf in known:
                return known[map_fn.leaf]
            self.miss(d, "dataset_map_fn", f"{path}.dataset_map_fn", f"{map_fn.name}: no xtune format of that name")
            return "conversation"
        if isinstance(map_fn, Ref):
            module, _, fn = map_fn.name.rpartition(".")
            module = module.lstrip(".")
            file = self.base_dir / f"{module.replace('.', '/')}.py"
            self.notes.append(f"{path}.dataset_map_fn: your function {fn}; it may return v0's {{conversation: [...]}}")
            return f"{module.replace('.', '/')}.py:{fn}" if file.is_file() else f"{module}:{fn}"
        self.miss(d, "dataset_map_fn", f"{path}.dataset_map_fn", f"{describe(map_fn)}: not a function name")
        return "conversation"

    def template(self, value: Any, d: V0Dict, path: str) -> None:
        if isinstance(value, Ref) and ".PROMPT_TEMPLATE." in f".{value.name}":
            name = V0_TEMPLATES.get(value.leaf)
            if name is None:
                self.miss(
                    d,
                    "template",
                    path,
                    f"{value.name}: xtune has no template {value.leaf!r} yet; set "
                    "data.template (auto: the model's own)",
                )
                return
            known = self.raw["data"].get("template")
            if known not in (None, name):
                self.miss(d, "template", path, f"{name}: xtune has one template for all datasets ({known})")
            self.set("data", "template", name)
        elif value is not None:
            self.miss(d, "template", path, f"{describe(value)}: not a PROMPT_TEMPLATE name")

    def optimizer(self, wrapper: Any) -> None:
        if not isinstance(wrapper, V0Dict):
            return
        wrapper.take("type")
        opt = wrapper.take("optimizer")
        if isinstance(opt, V0Dict):
            if not self.is_type(opt, "AdamW"):
                self.miss(
                    opt,
                    "type",
                    "optim_wrapper.optimizer.type",
                    f"{describe(opt.get('type'))}: xtune trains with AdamW",
                )
            opt.take("type")
            if "lr" in opt:
                self.set("training", "lr", opt.take("lr"))
            if "weight_decay" in opt:
                self.set("training", "weight_decay", opt.take("weight_decay"))
            self.expect(
                opt,
                "betas",
                "optim_wrapper.optimizer.betas",
                lambda b: tuple(b) == (0.9, 0.999),
                "xtune's AdamW uses betas (0.9, 0.999)",
            )
            self.report(opt, "optim_wrapper.optimizer")
        clip = wrapper.take("clip_grad")
        if isinstance(clip, V0Dict):
            self.set("training", "max_grad_norm", clip.take("max_norm"))
            clip.take("error_if_nonfinite")
            self.report(clip, "optim_wrapper.clip_grad")
        elif clip is None and "clip_grad" in wrapper:
            self.set("training", "max_grad_norm", None)
        if "accumulative_counts" in wrapper:
            self.set("training", "gradient_accumulation", wrapper.take("accumulative_counts"))
        if {"loss_scale", "dtype"} & set(wrapper):
            wrapper.take("loss_scale")
            wrapper.take("dtype")
            self.notes.append(
                "optim_wrapper's loss_scale/dtype: mixed precision is training.mixed_precision auto (bf16)"
            )
        self.report(wrapper, "optim_wrapper")

    def schedule(self, schedulers: Any, train_cfg: Any) -> None:
        epochs = None
        if isinstance(train_cfg, V0Dict):
            train_cfg.take("type")
            if "max_epochs" in train_cfg:
                epochs = train_cfg.take("max_epochs")
                self.set("training", "epochs", epochs)
            if "max_iters" in train_cfg:
                self.set("training", "max_steps", train_cfg.take("max_iters"))
                self.set("training", "epochs", None)
            self.report(train_cfg, "train_cfg")
        for i, s in enumerate(schedulers if isinstance(schedulers, list) else [schedulers] if schedulers else []):
            path = f"param_scheduler[{i}]"
            if not isinstance(s, V0Dict):
                self.unmapped.append(Unmapped(getattr(s, "line", 0), path, f"{describe(s)}: not a dict(...)"))
                continue
            for key in ("type", "by_epoch", "convert_to_iter_based", "begin"):
                s.take(key)
            if self.is_type(s, "LinearLR") and i == 0:
                end = s.take("end")
                if number(end) and epochs:
                    self.set("training", "warmup_ratio", round(end / epochs, 6))
                s.take("start_factor")  # xtune warms up from 0, v0 from 1e-5 of the peak
            elif self.is_type(s, "CosineAnnealingLR", "ConstantLR", "LinearLR"):
                schedule = {"CosineAnnealingLR": "cosine", "ConstantLR": "constant", "LinearLR": "linear"}
                self.set("training", "lr_schedule", schedule[s["type"].leaf])
                s.take("end")
                self.expect(s, "eta_min", f"{path}.eta_min", lambda v: not v, "xtune's cosine decays to 0")
                self.expect(s, "factor", f"{path}.factor", 1.0, "xtune's constant schedule keeps the peak lr")
                s.take("end_factor")
                s.take("start_factor")
            else:
                self.miss(
                    s,
                    "type",
                    f"{path}.type",
                    f"{describe(s.get('type'))}: xtune schedules are warmup + cosine, linear or constant",
                )
            self.report(s, path)

    def hooks(self, default_hooks: Any, custom_hooks: Any) -> None:
        if isinstance(default_hooks, V0Dict):
            checkpoint = default_hooks.take("checkpoint")
            if isinstance(checkpoint, V0Dict):
                checkpoint.take("type")
                self.expect(
                    checkpoint,
                    "by_epoch",
                    "default_hooks.checkpoint.by_epoch",
                    False,
                    "xtune saves every save_steps steps",
                )
                if "interval" in checkpoint:
                    self.set("saving", "save_steps", checkpoint.take("interval"))
                keep = checkpoint.take("max_keep_ckpts")
                if isinstance(keep, int) and keep > 0:
                    self.set("saving", "save_total_limit", keep)
                elif keep is not None:
                    self.miss(
                        checkpoint,
                        "max_keep_ckpts",
                        "default_hooks.checkpoint.max_keep_ckpts",
                        f"{keep!r}: xtune keeps a limited number; set saving.save_total_limit",
                    )
                self.report(checkpoint, "default_hooks.checkpoint")
            logger = default_hooks.take("logger")
            if isinstance(logger, V0Dict):
                logger.take("type")
                logger.take("log_metric_by_epoch")
                if "interval" in logger:
                    self.set("training", "log_every", logger.take("interval"))
                self.report(logger, "default_hooks.logger")
            for key in ("timer", "param_scheduler", "sampler_seed"):
                default_hooks.take(key)
            self.report(default_hooks, "default_hooks")
        for i, hook in enumerate(custom_hooks if isinstance(custom_hooks, list) else []):
            path = f"custom_hooks[{i}]"
            if self.is_type(hook, "DatasetInfoHook", "VarlenAttnArgsToMessageHubHook", "ThroughputHook"):
                continue  # xtune logs the data summary and throughput itself; varlen needs no hook
            if not self.is_type(hook, "EvaluateChatHook"):
                self.unmapped.append(Unmapped(getattr(hook, "line", 0), path, f"{describe(hook)}: unknown hook"))
                continue
            for key in ("type", "tokenizer", "image_processor"):
                hook.take(key)
            if "every_n_iters" in hook:
                self.set("evaluation", "freq", hook.take("every_n_iters"))
            inputs = hook.take("evaluation_inputs")
            if isinstance(inputs, list) and all(isinstance(x, str) for x in inputs):
                self.set("evaluation", "inputs", inputs)
            elif inputs is not None:
                self.miss(hook, "evaluation_inputs", f"{path}.evaluation_inputs", f"{describe(inputs)}: not strings")
            system = self.system_text(hook.take("system"))
            if system:
                self.set("evaluation", "system", system)
            elif hook.get("system"):
                self.miss(hook, "system", f"{path}.system", f"{describe(hook['system'])}: not a SYSTEM_TEMPLATE name")
            self.template(hook.take("prompt_template"), hook, f"{path}.prompt_template")
            if "max_new_tokens" in hook:
                self.set("evaluation", "max_new_tokens", hook.take("max_new_tokens"))
            self.report(hook, path)

    def system_text(self, value: Any) -> str | None:
        if isinstance(value, str):
            return value or None
        if isinstance(value, Ref) and ".SYSTEM_TEMPLATE." in f".{value.name}":
            return V0_SYSTEMS.get(value.leaf)
        return None

    def runtime(self) -> None:
        randomness = self.top("randomness")
        if isinstance(randomness, V0Dict):
            seed = randomness.take("seed")
            if isinstance(seed, int):
                self.set("training", "seed", seed)
            self.expect(
                randomness,
                "deterministic",
                "randomness.deterministic",
                False,
                "xtune does not force deterministic kernels",
            )
            self.report(randomness, "randomness")
        if self.top("load_from") is not None:
            self.unmapped.append(
                Unmapped(
                    self.r.lines["load_from"],
                    "load_from",
                    "start from a v0 .pth: merge or convert it to a model directory and set model.path",
                )
            )
        if self.top("resume") is True:
            self.notes.append("resume=True: pass --resume to xtune train")
        sequence_parallel = self.top("sequence_parallel_size")
        if isinstance(sequence_parallel, int) and sequence_parallel > 1:
            self.set("training", "sequence_parallel", sequence_parallel)
        work_dir = self.top("work_dir")
        if isinstance(work_dir, str):
            self.raw["work_dir"] = work_dir
        strategy = self.top("strategy")
        if isinstance(strategy, V0Dict) and self.is_type(strategy, "DeepSpeedStrategy"):
            self.deepspeed(strategy)
        elif strategy is not None:
            self.unmapped.append(Unmapped(self.r.lines["strategy"], "strategy", f"{describe(strategy)}: unknown"))
        for name in HANDLED:
            if name in self.r.env:
                self.used_top.add(name)

    def deepspeed(self, strategy: V0Dict) -> None:
        strategy.take("type")
        config = strategy.take("config")
        choice = None
        if isinstance(config, str):
            choice = config if config.endswith(".json") else config.removeprefix("deepspeed_")
        elif isinstance(config, V0Dict) and isinstance(config.get("zero_optimization"), V0Dict):
            zero = config.take("zero_optimization")
            stage = zero.take("stage")
            offload = zero.take("offload_optimizer") is not None or zero.take("offload_param") is not None
            choice = f"zero{stage}" + ("_offload" if offload and stage in (2, 3) else "")
        if choice:
            self.set("training", "engine", "deepspeed")
            self.set("training", "deepspeed", choice)
        else:
            self.miss(strategy, "config", "strategy.config", f"{describe(config)}: name a ZeRO stage or a JSON file")

    def report(self, d: V0Dict, path: str) -> None:
        for key in d:
            if key not in d.used:
                self.miss(d, key, f"{path}.{key}", f"{describe(d[key])}: no xtune setting")
                d.used.add(key)

    def leftovers(self) -> None:
        """Top-level names nothing mapped or used: each one is listed, and imports from outside v0's libraries."""
        for name, line in self.r.lines.items():
            if name in self.used_top or name in self.r.referenced:
                continue
            value = self.r.env[name]
            if name == "_base_":
                reason = "mmengine base configs are not read; copy the settings you use from them into this one"
                self.unmapped.append(Unmapped(line, name, f"{describe(value)}: {reason}"))
            elif isinstance(value, V0Dict):
                self.report(value, name)
            else:
                self.unmapped.append(Unmapped(line, name, f"{describe(value)}: no xtune setting"))
        formats = " ".join(d.get("format", "") for d in self.raw["data"].get("datasets", []))
        for local, (target, line) in self.r.imports.items():
            root = target.lstrip(".").partition(".")[0]
            if root not in KNOWN_MODULES and f":{local}" not in formats:
                self.unmapped.append(Unmapped(line, f"import {target}", "not a module of v0's libraries; not imported"))


def _mapped(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v != {} or k in ("model", "data")}


def convert_v0_config(path: str | Path) -> Conversion:
    """Read a v0 config without running it and map it onto xtune's schema."""
    path = Path(path)
    reader = V0Reader(read_config_text(path), str(path))
    mapper = _Mapper(reader, path.parent)
    mapper.run()
    unmapped = sorted(mapper.unmapped, key=lambda u: u.line)
    raw = _mapped(mapper.raw)
    try:
        cfg = validate_config(raw, source=f"{path} (converted from XTuner v0)")
    except ConfigError as e:
        blocking = [str(u) for u in unmapped if u.blocking]
        if blocking:  # what made the config invalid: say that, not the schema's view of the gap it left
            raise ConfigError(f"{path}: cannot convert this XTuner v0 config: {'; '.join(blocking)}") from None
        listed = "".join(f"\n  not mapped: {u}" for u in unmapped)
        raise ConfigError(f"{e}{listed}") from None
    handled = [name for name in HANDLED if name in reader.env]
    return Conversion(str(path), raw, cfg, unmapped, mapper.notes, handled)
