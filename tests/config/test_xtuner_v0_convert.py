"""XTuner v0 `.py` configs converted to xtune YAML without running them: each test writes a v0-style config (as
v0's own configs are laid out) and checks the converted keys one by one, and what is listed as not mapped."""

from __future__ import annotations

import json
import os
import textwrap

import pytest

from xtune.cli import main
from xtune.config import ConfigError, resolve_config
from xtune.config.schema import load_config, parse_yaml
from xtune.config.xtuner_v0 import V0_SYSTEMS, convert_v0_config
from xtune.data.formats import get_map_fn

IMPORTS = """\
import torch
from datasets import load_dataset
from mmengine.dataset import DefaultSampler
from mmengine.hooks import CheckpointHook, DistSamplerSeedHook, IterTimerHook, LoggerHook, ParamSchedulerHook
from mmengine.optim import AmpOptimWrapper, CosineAnnealingLR, LinearLR
from peft import LoraConfig
from torch.optim import AdamW
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
from xtuner.dataset import ConcatDataset, process_hf_dataset
from xtuner.dataset.collate_fns import default_collate_fn
from xtuner.dataset.map_fns import alpaca_map_fn, oasst1_map_fn, template_map_fn_factory
from xtuner.engine.hooks import DatasetInfoHook, EvaluateChatHook, VarlenAttnArgsToMessageHubHook
from xtuner.engine.runner import TrainLoop
from xtuner.model import SupervisedFinetune
from xtuner.utils import PROMPT_TEMPLATE, SYSTEM_TEMPLATE
"""

# PART 1 settings, then model, data, optimizer, schedule and runtime, as v0's configs write them
SETTINGS = """\
pretrained_model_name_or_path = "{model_path}"
use_varlen_attn = False
data_path = "{data_path}"
prompt_template = PROMPT_TEMPLATE.internlm2_chat
max_length = 512
pack_to_max_length = True
batch_size = 2
accumulative_counts = 8
dataloader_num_workers = 0
max_epochs = 2
optim_type = AdamW
lr = 1e-4
betas = (0.9, 0.999)
weight_decay = 0.01
max_norm = 0.5
warmup_ratio = 0.05
save_steps = 100
save_total_limit = 3
evaluation_freq = 50
SYSTEM = SYSTEM_TEMPLATE.alpaca
evaluation_inputs = ["请给我介绍五个上海的景点", "Hi"]
tokenizer = dict(type=AutoTokenizer.from_pretrained, pretrained_model_name_or_path=pretrained_model_name_or_path,
                 trust_remote_code=True, padding_side="right")
"""

QUANTIZATION = """\
        quantization_config=dict(type=BitsAndBytesConfig, load_in_4bit=True, load_in_8bit=False,
            llm_int8_threshold=6.0, llm_int8_has_fp16_weight=False, bnb_4bit_compute_dtype=torch.float16,
            bnb_4bit_use_double_quant=True, bnb_4bit_quant_type="nf4"),
"""
LORA = """\
    lora=dict(type=LoraConfig, r=32, lora_alpha=64, lora_dropout=0.05, bias="none", task_type="CAUSAL_LM",
              target_modules=["wqkv", "wo"]),
"""
MODEL = """\
model = dict(
    type=SupervisedFinetune,
    use_varlen_attn=use_varlen_attn,
    llm=dict(
        type=AutoModelForCausalLM.from_pretrained,
        pretrained_model_name_or_path=pretrained_model_name_or_path,
        trust_remote_code=True,
        torch_dtype=torch.float16,
{quantization}    ),
{lora})
"""
ONE_DATASET = """\
train_dataset = dict(type=process_hf_dataset,
    dataset=dict(type=load_dataset, path="json", data_files=dict(train=data_path)),
    tokenizer=tokenizer, max_length=max_length, dataset_map_fn={map_fn},
    template_map_fn=dict(type=template_map_fn_factory, template=prompt_template), remove_unused_columns=True,
    shuffle_before_pack=True, pack_to_max_length=pack_to_max_length, use_varlen_attn=use_varlen_attn)
"""
RUNTIME = """\
train_dataloader = dict(batch_size=batch_size, num_workers=dataloader_num_workers, dataset=train_dataset,
    sampler=dict(type=DefaultSampler, shuffle=True),
    collate_fn=dict(type=default_collate_fn, use_varlen_attn=use_varlen_attn))
optim_wrapper = dict(type=AmpOptimWrapper,
    optimizer=dict(type=optim_type, lr=lr, betas=betas, weight_decay=weight_decay),
    clip_grad=dict(max_norm=max_norm, error_if_nonfinite=False),
    accumulative_counts=accumulative_counts, loss_scale="dynamic", dtype="float16")
param_scheduler = [
    dict(type=LinearLR, start_factor=1e-5, by_epoch=True, begin=0, end=warmup_ratio * max_epochs,
         convert_to_iter_based=True),
    dict(type=CosineAnnealingLR, eta_min=0.0, by_epoch=True, begin=warmup_ratio * max_epochs, end=max_epochs,
         convert_to_iter_based=True),
]
train_cfg = dict(type=TrainLoop, max_epochs=max_epochs)
custom_hooks = [
    dict(type=DatasetInfoHook, tokenizer=tokenizer),
    dict(type=EvaluateChatHook, tokenizer=tokenizer, every_n_iters=evaluation_freq,
         evaluation_inputs=evaluation_inputs, system=SYSTEM, prompt_template=prompt_template),
]
if use_varlen_attn:
    custom_hooks += [dict(type=VarlenAttnArgsToMessageHubHook)]
default_hooks = dict(
    timer=dict(type=IterTimerHook),
    logger=dict(type=LoggerHook, log_metric_by_epoch=False, interval=10),
    param_scheduler=dict(type=ParamSchedulerHook),
    checkpoint=dict(type=CheckpointHook, by_epoch=False, interval=save_steps, max_keep_ckpts=save_total_limit),
    sampler_seed=dict(type=DistSamplerSeedHook))
env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
               dist_cfg=dict(backend="nccl"))
visualizer = None
log_level = "INFO"
load_from = None
resume = False
randomness = dict(seed=None, deterministic=False)
log_processor = dict(by_epoch=False)
"""


def v0_config(
    tmp_path,
    *,
    quantization=QUANTIZATION,
    lora=LORA,
    datasets=None,
    extra="",
    model_path="internlm/internlm2-chat-7b",
    name="v0.py",
):
    text = (
        IMPORTS
        + SETTINGS.format(model_path=model_path, data_path="./data/alpaca.json")
        + MODEL.format(quantization=quantization, lora=lora)
        + (datasets or ONE_DATASET.format(map_fn="alpaca_map_fn"))
        + RUNTIME
        + extra
    )
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def line_of(path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


# What every config above maps to beside its method and datasets: each v0 setting and the xtune key it becomes.
COMMON = {
    "data": {"template": "internlm2_chat", "max_length": 512, "pack_to_max_length": True},
    "training": {
        "batch_size": 2,
        "gradient_accumulation": 8,
        "lr": 1e-4,
        "weight_decay": 0.01,
        "max_grad_norm": 0.5,
        "epochs": 2,
        "warmup_ratio": 0.05,
        "lr_schedule": "cosine",
        "log_every": 10,
    },
    "saving": {"save_steps": 100, "save_total_limit": 3},
    "evaluation": {"freq": 50, "inputs": ["请给我介绍五个上海的景点", "Hi"], "system": V0_SYSTEMS["alpaca"]},
}
ALPACA = [{"path": "./data/alpaca.json", "format": "alpaca"}]
# InternLM2 loads as Llama in xtune: its fused wqkv is q, k and v there
LORA_SETTINGS = {"r": 32, "alpha": 64, "dropout": 0.05, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}


def expected(method: str, lora: dict | None, datasets=ALPACA) -> dict:
    model = {"gradient_checkpointing": True, "path": "internlm/internlm2-chat-7b", "method": method}
    if lora:
        model["lora"] = lora
    return {**COMMON, "model": model, "data": {**COMMON["data"], "datasets": datasets}}


@pytest.mark.parametrize(
    ("quantization", "lora", "method"),
    [(QUANTIZATION, LORA, "qlora"), ("", LORA, "lora"), ("", "", "full")],
    ids=["qlora", "lora", "full"],
)
def test_sft_configs_convert_key_by_key(tmp_path, capsys, quantization, lora, method):
    config = v0_config(tmp_path, quantization=quantization, lora=lora)
    out = tmp_path / "out" / "converted.yaml"
    main(["convert", "xtuner-config", str(config), str(out)])
    conversion = convert_v0_config(config)
    assert conversion.raw == expected(method, LORA_SETTINGS if lora else None)
    assert conversion.unmapped == []  # every setting of v0's own config layout is mapped or is xtune's own job
    # the written YAML is the whole config, read back as the same config, and keeps what it was converted from
    assert load_config(out) == conversion.config
    assert parse_yaml(out.read_text(encoding="utf-8")) == conversion.config.model_dump()
    assert f"converted from the XTuner v0 config {config}" in out.read_text(encoding="utf-8")
    captured = capsys.readouterr()
    assert f"wrote {out}" in captured.out and "not mapped" not in captured.err


def test_concat_dataset_custom_map_fn_and_v0_layout(tmp_path):
    """ConcatDataset's datasets each become a dataset: v0's built-in map functions by name, the user's own function
    by file, and no map function at all as v0's own {conversation} layout; the user's function returning v0's
    layout is read as such."""
    (tmp_path / "my_map.py").write_text(
        "def to_v0(example):\n"
        "    return {'conversation': [{'system': 'Be brief.', 'input': example['q'], 'output': example['a']}]}\n",
        encoding="utf-8",
    )
    datasets = (
        "from my_map import to_v0\n"
        + ONE_DATASET.format(map_fn="oasst1_map_fn").replace("train_dataset =", "oasst1 =")
        + ONE_DATASET.format(map_fn="to_v0").replace("train_dataset =", "mine =")
        + ONE_DATASET.format(map_fn="None").replace("train_dataset =", "plain =")
        + "train_dataset = dict(type=ConcatDataset, datasets=[oasst1, mine, plain])\n"
    )
    conversion = convert_v0_config(v0_config(tmp_path, datasets=datasets))
    assert conversion.raw["data"]["datasets"] == [
        {"path": "./data/alpaca.json", "format": "oasst1"},
        {"path": "./data/alpaca.json", "format": "my_map.py:to_v0"},
        {"path": "./data/alpaca.json", "format": "conversation"},
    ]
    assert conversion.unmapped == []
    sample = get_map_fn("my_map.py:to_v0", base_dir=tmp_path)({"q": "Hi", "a": "Hello!"})
    assert sample == {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
        ]
    }


LLAVA = """\
from transformers import CLIPImageProcessor, CLIPVisionModel
from xtuner.dataset import LLaVADataset
from xtuner.dataset.map_fns import llava_map_fn
from xtuner.dataset.samplers import LengthGroupedSampler
from xtuner.model import LLaVAModel
visual_encoder_name_or_path = "openai/clip-vit-large-patch14-336"
pretrained_pth = "./work_dirs/pretrain/iter_2181.pth"
max_length = int(2048 - (336 / 14) ** 2)  # as v0's LLaVA configs: the image's 576 tokens left out
model = dict(
    type=LLaVAModel,
    freeze_llm=True,
    freeze_visual_encoder=True,
    pretrained_pth=pretrained_pth,
    llm=dict(type=AutoModelForCausalLM.from_pretrained, pretrained_model_name_or_path=pretrained_model_name_or_path,
             trust_remote_code=True, torch_dtype=torch.float16,
{quantization}    ),
    llm_lora=dict(type=LoraConfig, r=512, lora_alpha=256, lora_dropout=0.05, bias="none", task_type="CAUSAL_LM"),
    visual_encoder=dict(type=CLIPVisionModel.from_pretrained,
                        pretrained_model_name_or_path=visual_encoder_name_or_path),
    visual_encoder_lora=dict(type=LoraConfig, r=64, lora_alpha=16, lora_dropout=0.05, bias="none"))
train_dataset = dict(type=LLaVADataset, data_path="./data/llava_v1_5_mix665k.json", image_folder="./data/images",
    tokenizer=tokenizer, image_processor=dict(type=CLIPImageProcessor.from_pretrained,
    pretrained_model_name_or_path=visual_encoder_name_or_path, trust_remote_code=True),
    dataset_map_fn=llava_map_fn, template_map_fn=dict(type=template_map_fn_factory, template=prompt_template),
    max_length=max_length, pad_image_to_square=True)
"""


def test_llava_finetune_config(tmp_path):
    text = (
        IMPORTS
        + SETTINGS.format(model_path="internlm/internlm2-chat-1_8b", data_path="unused")
        + LLAVA.format(quantization=QUANTIZATION)
        + RUNTIME.replace(
            "sampler=dict(type=DefaultSampler, shuffle=True)",
            "sampler=dict(type=LengthGroupedSampler, "
            "length_property='modality_length', per_device_batch_size=batch_size * accumulative_counts)",
        )
    )
    (config := tmp_path / "llava.py").write_text(text, encoding="utf-8")
    conversion = convert_v0_config(config)
    model = conversion.raw["model"]
    assert model["method"] == "qlora" and model["path"] == "internlm/internlm2-chat-1_8b"
    assert model["lora"] == {"r": 512, "alpha": 256, "dropout": 0.05}
    assert model["vision"] == {
        "path": "openai/clip-vit-large-patch14-336",
        "lora": True,
        "projector_path": "./work_dirs/pretrain/iter_2181.pth",
    }
    data = conversion.raw["data"]
    assert data["datasets"] == [
        {"path": "./data/llava_v1_5_mix665k.json", "image_folder": "./data/images", "format": "llava"}
    ]
    assert data["pad_image_to_square"] is True and data["group_by_length"] is True
    assert conversion.config.model.vision.lora and conversion.config.data.max_length == 1472
    # settings nothing in the config uses are listed too (here: two of the text configs' settings)
    assert [u.key for u in conversion.unmapped] == ["data_path", "pack_to_max_length"]


def test_unknown_imports_calls_and_values_are_listed_by_key_and_line(tmp_path, capsys):
    extra = textwrap.dedent(
        """\
        from my_tools.schedules import warm_restarts
        import numpy as np
        optim_wrapper["optimizer"] = dict(type=AdamW)
        model["llm"]["pretrained_model_name_or_path"] = pretrained_model_name_or_path
        custom_hooks.append(dict(type=EvaluateChatHook))
        param_scheduler = [dict(type=warm_restarts, period=np.log(100))]
        loss_weights = compute_weights(3)
        """
    )
    settings_change = ("betas = (0.9, 0.999)", "betas = (0.9, 0.95)")
    config = v0_config(tmp_path, extra=extra)
    config.write_text(config.read_text().replace(*settings_change), encoding="utf-8")
    conversion = convert_v0_config(config)
    at = lambda text: line_of(config, text)  # noqa: E731
    assert [str(u) for u in conversion.unmapped] == [
        f"line {at('optimizer=dict(type=optim_type')}: optim_wrapper.optimizer.betas: (0.9, 0.95): xtune's AdamW uses "
        "betas (0.9, 0.999)",
        f"line {at('from my_tools')}: import my_tools.schedules.warm_restarts: not a module of v0's libraries; not "
        "imported",
        f"line {at('import numpy')}: import numpy: not a module of v0's libraries; not imported",
        f"line {at('optim_wrapper[')}: `optim_wrapper['optimizer'] = dict(type=AdamW)`: a statement that only "
        "running the config would do; not run",
        f"line {at('model[')}: `model['llm']['pretrained_model_name_or_path'] = pretrained_model_name_or_path`: a "
        "statement that only running the config would do; not run",
        f"line {at('custom_hooks.append')}: `custom_hooks.append(dict(type=EvaluateChatHook))`: a statement that only "
        "running the config would do; not run",
        f"line {at('param_scheduler = [dict(type=warm')}: param_scheduler[0].type: my_tools.schedules.warm_restarts: "
        "xtune schedules are warmup + cosine, linear or constant",
        f"line {at('param_scheduler = [dict(type=warm')}: param_scheduler[0].period: np.log(100): no xtune setting",
        f"line {at('loss_weights')}: loss_weights: compute_weights(3): no xtune setting",
    ]
    # the converter says the same on stderr, and writes it at the top of the YAML
    out = tmp_path / "out.yaml"
    main(["convert", "xtuner-config", str(config), str(out)])
    err = capsys.readouterr().err
    written = out.read_text(encoding="utf-8")
    for item in conversion.unmapped:
        assert f"xtune: not mapped: {config}: {item}\n" in err
        assert f"#   {item}\n" in written


def test_code_in_a_config_is_read_never_run(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    calls = []
    monkeypatch.setattr(os, "system", lambda command: calls.append(command))
    payload = f"__import__('os').system('touch {marker}')"
    extra = f"{payload}\nexploit = {payload}\nlr_value = eval('1 + 1')\n"
    config = v0_config(tmp_path, extra=extra, name="evil.py")
    conversion = convert_v0_config(config)
    main(["convert", "xtuner-config", str(config), str(tmp_path / "evil.yaml")])
    assert not marker.exists() and calls == []
    listed = {u.key: u for u in conversion.unmapped}
    statement = next(u for u in conversion.unmapped if u.key.startswith("`__import__('os').system("))
    assert statement.line == line_of(config, payload) and "not run" in statement.reason
    assert listed["exploit"].reason.startswith("__import__('os').system(")
    assert listed["lr_value"].reason == "eval('1 + 1'): no xtune setting"


# v0's preference configs (configs/dpo, orpo, reward_model) as they lay out model and dataset
PREFERENCE_DATASET = """\
from xtuner.dataset.collate_fns.preference_collate_fn import preference_collate_fn
from xtuner.dataset.preference_dataset import build_preference_dataset
from xtuner.dataset.map_fns.dataset_map_fns import orpo_dpo_mix_40k_map_fn
train_dataset = dict(type=build_preference_dataset,
    dataset=dict(type=load_dataset, path="json", data_files=dict(train=data_path)),
    tokenizer=tokenizer, max_length=max_length, dataset_map_fn={map_fn}, is_dpo={is_dpo}, is_reward={is_reward},
    reward_token_id=-1, num_proc=32, use_varlen_attn=use_varlen_attn, max_packed_length=16384,
    shuffle_before_pack=True)
"""


def preference_config(tmp_path, model_type: str, model_args: str, map_fn="None", reward=False):
    config = v0_config(
        tmp_path,
        quantization="",
        lora="",
        datasets=PREFERENCE_DATASET.format(map_fn=map_fn, is_dpo=not reward, is_reward=reward),
    )
    text = config.read_text().replace(
        "from xtuner.model import SupervisedFinetune", f"from xtuner.model import {model_type}"
    )
    text = text.replace("type=SupervisedFinetune,", f"type={model_type}, {model_args}")
    config.write_text(text.replace("pack_to_max_length=pack_to_max_length, ", ""), encoding="utf-8")
    return config


@pytest.mark.parametrize(
    ("model_type", "model_args", "map_fn", "objective", "preference", "data_format"),
    [
        (
            "DPO",
            "loss_type='sigmoid', beta=0.2, label_smoothing=0.1,",
            "None",
            "dpo",
            {"beta": 0.2, "label_smoothing": 0.1},
            "preference",
        ),
        (
            "DPO",
            "loss_type='ipo', beta=0.05,",
            "orpo_dpo_mix_40k_map_fn",
            "ipo",
            {"beta": 0.05},
            "preference_conversations",
        ),
        ("ORPO", "beta=0.3,", "orpo_dpo_mix_40k_map_fn", "orpo", {"orpo_lambda": 0.3}, "preference_conversations"),
    ],
    ids=["dpo", "ipo", "orpo"],
)
def test_preference_configs_become_training_objectives(
    tmp_path, model_type, model_args, map_fn, objective, preference, data_format
):
    conversion = convert_v0_config(preference_config(tmp_path, model_type, model_args, map_fn))
    assert conversion.blocking == [] and conversion.raw["training"]["objective"] == objective
    assert conversion.raw["training"]["preference"] == preference
    assert conversion.raw["data"]["datasets"] == [{"path": "./data/alpaca.json", "format": data_format}]
    assert conversion.config.training.objective == objective  # the schema takes it as it is
    assert not [u for u in conversion.unmapped if "train_dataset" in u.key]  # v0's pair settings all read


def test_reward_model_config_and_what_xtune_cannot_match(tmp_path, capsys):
    config = preference_config(tmp_path, "RewardModel", "loss_type='ranking', penalty_type='log_barrier',", reward=True)
    conversion = convert_v0_config(config)
    assert conversion.raw["training"]["objective"] == "reward"
    assert "inputs" not in conversion.raw["evaluation"]  # a reward model answers no evaluation prompts
    [penalty] = [str(u) for u in conversion.unmapped if "penalty" in u.key]
    reason = "'log_barrier': xtune's reward loss adds no score penalty"
    assert penalty == f"line {line_of(config, 'penalty_type=')}: model.penalty_type: {reason}"
    unknown = convert_v0_config(preference_config(tmp_path, "DPO", "loss_type='kto_pair',"))
    assert [str(u) for u in unknown.blocking] == [
        f"line {line_of(config, 'type=DPO')}: model.loss_type: 'kto_pair': "
        "xtune's DPO losses are sigmoid (dpo), ipo (ipo), hinge (hinge)"
    ]
    # what would train something else than the v0 config refuses to train, and nothing is written
    with pytest.raises(ConfigError, match="cannot train in xtune as it is: .*'kto_pair'"):
        resolve_config(str(config))
    with pytest.raises(SystemExit) as info:
        main(["train", str(config), "--work-dir", str(tmp_path / "work")])
    assert info.value.code == 2 and not (tmp_path / "work").exists()
    assert "'kto_pair'" in capsys.readouterr().err


def test_train_converts_a_v0_config_on_the_fly(tmp_path, capsys, one_layer_model_dir):
    """`xtune train CONFIG.py`: the v0 config trains as converted, and the command says it read a v0 config."""
    data = tmp_path / "data.json"
    records = [{"instruction": f"Say {w}", "input": "", "output": w} for w in ("hi", "yo", "hey", "ok")]
    data.write_text(json.dumps(records), encoding="utf-8")
    extra = "train_cfg = dict(type=TrainLoop, max_iters=2)\n"
    lora = LORA.replace('target_modules=["wqkv", "wo"]', 'target_modules=["q_proj"]')
    config = v0_config(tmp_path, quantization="", lora=lora, model_path=str(one_layer_model_dir), extra=extra)
    text = (
        config.read_text()
        .replace("./data/alpaca.json", str(data))
        .replace("PROMPT_TEMPLATE.internlm2_chat", "PROMPT_TEMPLATE.default")
    )
    config.write_text(text.replace("max_length = 512", "max_length = 64"), encoding="utf-8")
    work = tmp_path / "work"
    main(["train", str(config), "--work-dir", str(work), "--set", "model.gradient_checkpointing=false"])
    captured = capsys.readouterr()
    assert f"xtune: training from XTuner v0 config {config} (read as data, never run)" in captured.err
    assert (work / "final" / "adapter_config.json").exists()
    metrics = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert max(m.get("step", 0) for m in metrics) == 2


@pytest.mark.parametrize(
    ("strategy", "choice"),
    [
        ("config=dict(zero_optimization=dict(stage=3, offload_optimizer=dict(device='cpu')))", "zero3_offload"),
        ("config='deepspeed_zero2'", "zero2"),
    ],
)
def test_deepspeed_strategy_becomes_the_engine(tmp_path, strategy, choice):
    extra = f"from mmengine._strategy import DeepSpeedStrategy\nstrategy = dict(type=DeepSpeedStrategy, {strategy})\n"
    conversion = convert_v0_config(v0_config(tmp_path, extra=extra))
    assert conversion.raw["training"]["engine"] == "deepspeed" and conversion.config.training.deepspeed == choice
    assert conversion.unmapped == []


def test_a_family_that_runs_its_own_code_keeps_trust_remote_code(tmp_path):
    config = v0_config(
        tmp_path, model_path="THUDM/chatglm3-6b", lora=LORA.replace('["wqkv", "wo"]', '["query_key_value"]')
    )
    config.write_text(config.read_text().replace("PROMPT_TEMPLATE.internlm2_chat", "PROMPT_TEMPLATE.chatglm3"))
    conversion = convert_v0_config(config)
    assert conversion.config.model.trust_remote_code and conversion.config.data.template == "chatglm3"
    assert conversion.config.model.lora.target_modules == ["query_key_value"]  # only InternLM2's names change


def test_sequence_parallel_size_and_its_sampler_become_training_sequence_parallel(tmp_path):
    extra = (
        "from xtuner.parallel.sequence import SequenceParallelSampler\n"
        "sequence_parallel_size = 4\n"
        "train_dataloader = dict(batch_size=batch_size, dataset=train_dataset,\n"
        "    sampler=dict(type=SequenceParallelSampler, seed=1024))\n"
    )
    conversion = convert_v0_config(v0_config(tmp_path, extra=extra))
    assert conversion.config.training.sequence_parallel == 4
    assert conversion.unmapped == []
