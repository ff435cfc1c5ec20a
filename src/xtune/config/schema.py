"""The typed schema of an xtune config, and loading YAML into it with errors a user can act on."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from xtune.errors import ConfigError

# Built-in DeepSpeed configs (src/xtune/config/deepspeed/<name>.json), from least to most memory saved.
DEEPSPEED_PRESETS = ("zero1", "zero2", "zero2_offload", "zero3", "zero3_offload")
DEEPSPEED_CHOICES = f"{', '.join(DEEPSPEED_PRESETS)} (or XTuner's deepspeed_zero2 and the like), or a .json file"


def deepspeed_choice(name: str) -> str | None:
    """A built-in DeepSpeed config's name, XTuner's spelling (`deepspeed_zero2`) included, or a JSON file's path, as
    training.deepspeed records it; None for anything else."""
    if name.endswith(".json"):
        return name
    name = name.removeprefix("deepspeed_")
    return name if name in DEEPSPEED_PRESETS else None


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoraSettings(_Section):
    r: int = Field(64, gt=0, description="LoRA rank: the adapter's inner dimension.")
    alpha: float = Field(16.0, description="LoRA scaling numerator: the update is scaled by alpha / r.")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout on the adapter's input.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear",
        description="Module names to adapt; all-linear (PEFT's shorthand): every Linear layer but the output head.",
    )


class VisionSettings(_Section):
    """LLaVA: a vision encoder whose patch features a projector maps into the LLM's embedding space."""

    path: str = Field(description="Local CLIP or SigLIP directory (or builtin:tiny-clip).")
    random_init: bool = Field(False, description="Seeded random weights from config.json instead of loading them.")
    feature_layer: int = Field(-2, description="Hidden-state layer the image features come from.")
    select_strategy: Literal["default", "full"] | None = Field(
        None,
        description="default: drop the first token (CLIP's CLS); full: keep all; null: default (CLIP), full (SigLIP).",
    )
    # The Hugging Face LLaVA format, which xtune trains and exports, fixes the projector at Linear-GELU-Linear.
    projector_depth: Literal[2] = Field(2, description="Projector layers: Linear-GELU-Linear, as Hugging Face LLaVA.")
    projector_path: str | None = Field(None, description="Stage 1's output (or its projector.safetensors).")
    lora: bool = Field(False, description="LoRA on the vision encoder too (stage 2 with method lora/qlora).")


class ModelSettings(_Section):
    path: str = Field(description="Local model directory (or a builtin: asset such as builtin:tiny-llama).")
    method: Literal["full", "lora", "qlora", "frozen"] = Field(
        "lora", description="full | lora | qlora (4-bit base) | frozen (LLaVA stage 1: only the projector trains)."
    )
    lora: LoraSettings = Field(LoraSettings(), description="The adapter, for method lora and qlora.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weight dtype; auto: bfloat16 on a GPU that supports it, else float32."
    )
    # auto keeps transformers' choice (SDPA where supported) except that compiled training on CPU attends in causal
    # chunks (models/attention.py), faster than torch's CPU kernel.
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = Field(
        "auto", description="Attention kernel; every choice keeps packed samples apart."
    )
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward: less memory, slower.")
    trust_remote_code: bool = Field(
        False, description="Run the checkpoint's own Python code (only for models you trust)."
    )
    add_special_tokens: list[str] = Field(
        [], description="New special tokens (e.g. <image>, tool markers); embeddings grow and are trained and saved."
    )
    random_init: bool = Field(
        False, description="Seeded random weights from config.json instead of loading them (tiny demos, tests)."
    )
    vision: VisionSettings | None = Field(None, description="Makes the model a LLaVA (xtune.multimodal).")

    @model_validator(mode="after")
    def _frozen_needs_vision(self) -> ModelSettings:
        if self.method == "frozen" and self.vision is None:
            raise ValueError("method frozen trains only a projector: it needs a model.vision section")
        return self


class DatasetSettings(_Section):
    path: str = Field(description="A .json, .jsonl, .parquet or .csv file, or a directory saved with datasets.")
    format: str = Field("alpaca", description="A map function name (xtune list-dataset-format) or module:fn.")
    system: str | None = Field(None, description="System prompt for this dataset's samples that have none.")
    max_dataset_length: int | None = Field(None, gt=0, description="Use at most this many samples (seeded).")
    repeat: float | None = Field(None, gt=0, description="Use each sample this many times (2.5: twice, plus half).")
    weight: float | None = Field(None, gt=0, description="Share of the mixture, relative to other datasets.")
    image_folder: str | None = Field(None, description="Image formats (llava): where record image paths start.")

    @model_validator(mode="after")
    def _repeat_or_weight(self) -> DatasetSettings:
        if self.repeat is not None and self.weight is not None:
            raise ValueError("set repeat or weight for a dataset, not both")
        return self


class DataSettings(_Section):
    datasets: list[DatasetSettings] = Field(min_length=1, description="One or more datasets, mixed.")
    template: str = Field("auto", description="A template name; auto: the model family's, else the tokenizer's.")
    system: str | None = Field(None, description="System prompt added to every sample that has none.")
    max_length: int = Field(
        2048, gt=1, description="Tokens per sample (or per packed row); longer samples are truncated."
    )
    pack_to_max_length: bool = Field(False, description="Pack samples into rows of max_length (attention kept apart).")
    shuffle: bool = Field(True, description="Shuffle samples each epoch (seeded).")
    group_by_length: bool = Field(False, description="Unpacked: batch samples of similar length (less padding).")
    cache: bool = Field(True, description="Cache tokenized datasets on disk, keyed by content and settings.")
    # One process by default: the fast tokenizer already encodes a batch on every core (measured on 2 cores: 804k
    # tokens/s in one process, 686k with 2 workers). Workers help where the Python templating is the bottleneck.
    num_proc: int | None = Field(None, ge=1, description="Tokenizer worker processes (datasets.map); default 1.")
    cache_dir: str | None = Field(None, description="Default: $XTUNE_CACHE or ~/.cache/xtune.")
    pad_image_to_square: bool = Field(False, description="Pad images to square with the mean colour (LLaVA 1.5).")
    skip_bad_images: bool = Field(False, description="Skip (and count) records whose images fail; default: stop.")


OBJECTIVE_NAMES = ("sft", "dpo", "ipo", "hinge", "simpo", "orpo", "reward", "kto")
PREFERENCE_OBJECTIVES = OBJECTIVE_NAMES[1:-1]  # trained on preference pairs (reward: a scalar head, Bradley-Terry)
PREFERENCE_FORMATS = ("preference", "preference_conversations", "hh_rlhf")  # the built-in formats of pairs
LABELLED_FORMATS = ("kto",)  # the built-in formats of KTO's unpaired samples, each labelled desirable or not


class PreferenceSettings(_Section):
    """The preference objectives' coefficients (training.objective dpo, ipo, hinge, simpo, orpo, kto)."""

    beta: float = Field(0.1, gt=0, description="How far the policy may move from the reference (SimPO: reward scale).")
    desirable_weight: float = Field(1.0, gt=0, description="kto: weight of the loss of desirable (label true) replies.")
    undesirable_weight: float = Field(
        1.0, gt=0, description="kto: weight of the loss of undesirable (label false) replies."
    )
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5, description="dpo, simpo: share of pairs assumed mislabelled.")
    gamma: float = Field(0.5, ge=0.0, description="simpo: the reward margin chosen must win by (gamma / beta).")
    orpo_lambda: float = Field(0.1, gt=0, description="orpo: weight of the odds-ratio term beside the SFT loss.")
    sft_weight: float = Field(0.0, ge=0.0, description="Weight of an added SFT loss on the chosen reply.")


class TrainingSettings(_Section):
    epochs: int | None = Field(3, gt=0, description="Passes over the data (unless max_steps is set).")
    max_steps: int | None = Field(None, gt=0, description="Optimizer steps; overrides epochs when set.")
    batch_size: int = Field(1, gt=0, description="Samples (or packed rows) per step and process.")
    gradient_accumulation: int = Field(16, gt=0, description="Batches per optimizer step.")
    lr: float = Field(2e-4, gt=0, description="Peak learning rate (AdamW).")
    lr_schedule: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="How the learning rate decays after the warmup."
    )
    warmup_ratio: float = Field(0.03, ge=0.0, le=1.0, description="Share of the steps spent warming up linearly.")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Clip the gradient norm to this; null: no clipping.")
    seed: int = Field(0, description="Random seed: data order, initialisation, dropout.")
    objective: Literal[OBJECTIVE_NAMES] = Field(
        "sft",
        description="sft, or on preference pairs: dpo, ipo, hinge, simpo, orpo, or reward (a reward model); "
        "kto on replies labelled desirable or not (format kto).",
    )
    preference: PreferenceSettings = Field(PreferenceSettings(), description="Coefficients of the preference losses.")
    mixed_precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="auto: bf16 autocast where the hardware runs it fast, else fp32."
    )
    engine: Literal["ddp", "fsdp", "deepspeed"] = Field(
        "ddp",
        description="Several processes: ddp replicates the model, fsdp shards it per layer, deepspeed as configured.",
    )
    deepspeed: str | None = Field(
        None, description=f"With engine deepspeed: {', '.join(DEEPSPEED_PRESETS)}, or a DeepSpeed JSON file."
    )
    sequence_parallel: int = Field(
        1, ge=1, description="Ranks sharing each sequence (Ulysses): each holds 1/N of its tokens; N divides the ranks."
    )
    log_every: int = Field(10, gt=0, description="Log loss and speed every N steps.")
    compile: bool | Literal["auto"] = Field(
        "auto",
        description="torch.compile the decoder layers and the loss: faster steps after a one-time compile; "
        "auto: only where the run is long enough to pay for compiling.",
    )

    @model_validator(mode="after")
    def _epochs_or_steps(self) -> TrainingSettings:
        if self.epochs is None and self.max_steps is None:
            raise ValueError("set training.epochs or training.max_steps")
        return self

    @model_validator(mode="after")
    def _deepspeed_config(self) -> TrainingSettings:
        if self.engine == "deepspeed" and self.deepspeed is None:
            raise ValueError(f"training.engine deepspeed needs training.deepspeed: {DEEPSPEED_CHOICES}")
        if self.deepspeed is not None and self.engine != "deepspeed":
            raise ValueError(f"training.deepspeed is set but training.engine is {self.engine!r}; set engine: deepspeed")
        if self.deepspeed is not None:
            choice = deepspeed_choice(self.deepspeed)
            if choice is None:
                raise ValueError(f"training.deepspeed {self.deepspeed!r}: choose {DEEPSPEED_CHOICES}")
            if choice != self.deepspeed:  # XTuner's name: record the built-in one
                # bypass validate_assignment, which would run this validator again from inside itself
                self.__dict__["deepspeed"] = choice
        return self


class SavingSettings(_Section):
    save_steps: int = Field(500, gt=0, description="Write a checkpoint every N optimizer steps.")
    save_total_limit: int = Field(2, gt=0, description="Keep this many newest checkpoints.")


class LmEvalSettings(_Section):
    tasks: list[str] = Field(
        min_length=1, description="lm-eval task YAML files, xtune's shipped tasks (xtune_tiny), or cached task names."
    )
    limit: int | None = Field(None, gt=0, description="Score only the first N examples of each task.")
    chat_template: bool = Field(False, description="Send each prompt as a chat message in the training template.")
    batch_size: int = Field(8, gt=0, description="Requests per forward.")

    @model_validator(mode="after")
    def _installed(self) -> LmEvalSettings:
        import importlib.util

        if importlib.util.find_spec("lm_eval") is None:
            raise ValueError("evaluation.lm_eval needs lm-evaluation-harness: pip install 'xtune[eval]'")
        return self


class EvaluationSettings(_Section):
    inputs: list[str] = Field([], description="Prompts answered during training (eval_outputs_step_N.txt).")
    freq: int = Field(500, gt=0, description="Answer the inputs every N steps.")
    system: str | None = Field(None, description="System prompt for the inputs.")
    max_new_tokens: int = Field(64, gt=0, description="Longest answer to an input, in tokens.")
    tools: list[str] = Field(
        [], description="Tools the model may call here and in xtune chat: built-in names or my_tools.py:my_function."
    )
    search_docs: str | None = Field(None, description="The folder of .txt and .md files the search tool reads.")
    # a turn waits for each tool call, so one slow sympy call must not hold it
    solve_time_limit: float = Field(2.0, gt=0, description="Seconds one solve call may take, fallbacks included.")
    # the list costs hundreds of tokens per sample; a model fine-tuned on a fixed tool set can do without it
    list_tools: bool = Field(True, description="List the tools in the prompt; false for a model trained without it.")
    lm_eval: LmEvalSettings | None = Field(
        None,
        description="Benchmarks (lm-evaluation-harness) run on the model every freq steps; scores in lm_eval.jsonl.",
    )


CONFIG_FILE = "xtune_config.yaml"  # the resolved config, in a work dir and in each output that training writes


class Config(_Section):
    model: ModelSettings = Field(description="The model to fine-tune, and how.")
    data: DataSettings = Field(description="What to train on, and how samples become tokens.")
    training: TrainingSettings = Field(TrainingSettings(), description="The optimisation.")
    saving: SavingSettings = Field(SavingSettings(), description="Checkpoints in the work dir.")
    evaluation: EvaluationSettings = Field(EvaluationSettings(), description="Prompts answered while training.")
    work_dir: str | None = Field(None, description="Defaults to work_dirs/<config name>.")

    @model_validator(mode="after")
    def _images_unpacked(self) -> Config:
        if self.model.vision is not None and self.data.pack_to_max_length:
            raise ValueError("data.pack_to_max_length is not supported with model.vision; use group_by_length")
        return self


def config_yaml(section: BaseModel, indent: int = 0) -> str:
    """A config (or one section) as YAML in the schema's order, every key resolved and under a comment that is its
    schema description, so the comments never drift from the schema. load_config reads it back to the same config."""
    pad, lines = " " * indent, []
    for name, field in type(section).model_fields.items():
        value = getattr(section, name)
        if indent == 0 and lines:
            lines.append("")  # a blank line between top-level sections
        if field.description:
            lines.append(f"{pad}# {field.description}")
        if isinstance(value, BaseModel):
            lines += [f"{pad}{name}:", config_yaml(value, indent + 2).rstrip("\n")]
        elif isinstance(value, list) and value and all(isinstance(item, BaseModel) for item in value):
            lines.append(f"{pad}{name}:")
            for item in value:
                item_lines = config_yaml(item, indent + 4).rstrip("\n").split("\n")
                first = next(i for i, line in enumerate(item_lines) if not line.lstrip().startswith("#"))
                item_lines[first] = f"{pad}  - {item_lines[first].lstrip()}"  # the dash opens the item's first key
                lines += item_lines
        else:
            lines.append(f"{pad}{name}: {_yaml_scalar(value)}")
    return "\n".join(lines) + "\n"


def _yaml_scalar(value: Any) -> str:
    """A value on one line as YAML writes it (quoted where it must be); lists of scalars in flow style."""
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=float("inf"))
    return text.rstrip("\n").removesuffix("\n...")  # a bare scalar is dumped as a document with an end marker


class _Loader(yaml.SafeLoader):
    """PyYAML follows YAML 1.1, where `1e-4` is a string; configs write learning rates that way."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str):
    return yaml.load(text, Loader=_Loader)


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """Read a YAML config, apply `key.sub=value` overrides, and validate it."""
    path = Path(path)
    text = read_config_text(path)
    try:
        raw = parse_yaml(text) or {}
    except yaml.YAMLError as e:
        line, column, problem = _yaml_problem(e)
        where, column = (f":{line}", f" (column {column})") if line else ("", "")
        raise ConfigError(f"{path}{where}: not valid YAML: {problem}{column}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections (model, data, training, ...)")
    for override in overrides:
        apply_override(raw, override)
    return validate_config(raw, source=str(path), yaml_text=text)


def read_config_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: byte offset {e.start} is not UTF-8; save the config as UTF-8 text") from None


def apply_override(raw: dict, override: str) -> None:
    """Apply one `--set a.b.c=value` to a raw config dict; the value is parsed as YAML."""
    key, sep, value = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {override!r}: expected KEY=VALUE, for example --set training.lr=1e-4")
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        if isinstance(node, list):  # data.datasets.0.path: an index into a list
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"--set {override!r}: {part!r} is not an index of a {len(node)}-item list")
            node = node[int(part)]
        else:
            node = node.setdefault(part, {})
        if not isinstance(node, dict | list):
            raise ConfigError(f"--set {override!r}: {part!r} is not a section")
    if isinstance(node, list):
        raise ConfigError(f"--set {override!r}: set a key of a list item, e.g. data.datasets.0.path=...")
    try:
        node[parts[-1]] = parse_yaml(value)
    except yaml.YAMLError as e:
        _, column, problem = _yaml_problem(e)
        where = f" at column {column}" if column else ""
        raise ConfigError(
            f"--set {override!r}: the value {value!r} is not valid YAML ({problem}{where}); close its brackets "
            f"and quotes, or quote a plain string: --set '{key.strip()}=\"...\"'"
        ) from None


def _yaml_problem(error: yaml.YAMLError) -> tuple[int | None, int | None, str]:
    """(line, column, problem) of a YAML error, to say on one line: PyYAML's own message spans several, with a
    copy of the text pointing at the column."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    return (mark.line + 1, mark.column + 1, problem) if mark is not None else (None, None, problem)


def validate_config(raw: dict[str, Any], source: str = "<config>", yaml_text: str | None = None) -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_describe(e, source, yaml_text)) from None


def _describe(error: ValidationError, source: str, yaml_text: str | None) -> str:
    lines = [f"{source}: invalid config"]
    for err in error.errors():
        loc = _key_loc(tuple(err["loc"]))
        key = ".".join(str(p) for p in loc)
        where = _line_of(yaml_text, loc)
        prefix = f"  {source}{f':{where}' if where else ''}: "
        if err["type"] == "extra_forbidden":
            known = _known_keys(loc[:-1])
            match = difflib.get_close_matches(str(loc[-1]), known, n=1)
            hint = (
                f"did you mean '{'.'.join([*map(str, loc[:-1]), match[0]])}'?"
                if match
                else (f"known keys here: {', '.join(known)}")
            )
            lines.append(f"{prefix}unknown key '{key}'; {hint}")
        elif err["type"] == "missing":
            lines.append(f"{prefix}missing required key '{key}'")
        else:
            lines.append(f"{prefix}'{key}': {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def _key_loc(loc: tuple) -> tuple:
    """The part of a pydantic error location that is a key of the user's YAML. Pydantic appends the union
    member a value failed to match (`target_modules: 5` -> ..., 'target_modules', 'list[str]'), which is no key."""
    model: type[BaseModel] | None = Config
    for i, part in enumerate(loc):
        if isinstance(part, int):
            continue
        if model is None:  # below a plain value: a union member's tag, not a key
            return loc[:i]
        field = model.model_fields.get(str(part))
        if field is None:  # an unknown key (extra_forbidden): keep it, it is what the user wrote
            return loc[: i + 1]
        args = getattr(field.annotation, "__args__", ())
        model = next((c for c in (field.annotation, *args) if isinstance(c, type) and issubclass(c, BaseModel)), None)
    return loc


def _known_keys(loc: tuple) -> list[str]:
    """Field names of the schema section at `loc` (list indices skipped)."""
    model: type[BaseModel] = Config
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        candidates = [annotation, *args]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return []
    return list(model.model_fields)


def _line_of(yaml_text: str | None, loc: tuple) -> int | None:
    """1-based line of the key at `loc` in the YAML text, or of its deepest existing parent."""
    if not yaml_text:
        return None
    try:
        node = yaml.compose(yaml_text)
    except yaml.YAMLError:
        return None
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            if match is None:
                break
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line
