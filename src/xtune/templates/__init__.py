"""Chat templates: how a conversation becomes text, and which spans of that text are trained.

One template system serves training (segments with a trained flag), chat (the generation prompt and stop
words) and export (the same template written as a jinja `chat_template` for the tokenizer).
"""

from __future__ import annotations

from jinja2.exceptions import TemplateError
from transformers import PreTrainedTokenizerBase

from xtune.model_dirs import checkpoint_model_type
from xtune.templates.base import Message, Segment, Template
from xtune.templates.catalog import TEMPLATES, get_template
from xtune.templates.chat import ChatTemplate
from xtune.templates.jinja import TokenizerTemplate

# config.json model_type -> the xtune template its chat models were trained with.
FAMILY_TEMPLATES = {
    "internlm2": "internlm2_chat",
    "internlm3": "internlm2_chat",
    "qwen2": "qwen_chat",
    "qwen2_moe": "qwen_chat",
    "qwen3": "qwen3",
    "qwen3_moe": "qwen3",
    "mistral": "mistral",
    "mixtral": "mixtral",
    "gemma": "gemma",
    "gemma2": "gemma",
    "gemma3": "gemma",
    "gemma3_text": "gemma",
    "phi3": "phi3_chat",
    "deepseek_v2": "deepseek_v2",
    "deepseek_v3": "deepseek",
    "chatglm": "chatglm3",
    "baichuan": "baichuan2_chat",
    "cohere": "cohere_chat",
    "minicpm": "minicpm",
}

# Generations that share a model_type but not a chat format: Qwen2 and Qwen2.5 checkpoints both say qwen2. `auto`
# takes the one whose text matches the tokenizer's own chat_template (first: the default without one).
FAMILY_VARIANTS = {"qwen_chat": ("qwen_chat", "qwen2_5_chat")}

# A conversation on which the variants differ: the default system prompt and the tool result.
_VARIANT_PROBE: list[Message] = [
    {"role": "user", "content": "What is 6 * 7?"},
    {"role": "assistant", "content": "Let me calculate."},
    {"role": "tool", "content": "42"},
    {"role": "assistant", "content": "42."},
]

__all__ = [
    "TEMPLATES",
    "ChatTemplate",
    "Message",
    "Segment",
    "Template",
    "TokenizerTemplate",
    "config_template",
    "get_template",
    "resolve_template",
]


def resolve_template(name: str, tokenizer: PreTrainedTokenizerBase, model_type: str | None = None) -> Template:
    """A named template; or for `auto`: the family's xtune template when the checkpoint's model_type (or, for
    Llama, its vocabulary) identifies one, else the tokenizer's own jinja chat_template, else `default`.
    `tokenizer_chat_template` always uses the tokenizer's jinja."""
    if name == "tokenizer_chat_template":
        return TokenizerTemplate(tokenizer)
    if name != "auto":
        return get_template(name)
    family = FAMILY_TEMPLATES.get(model_type or "")
    if model_type == "llama" and "<|eot_id|>" in tokenizer.get_vocab():
        family = "llama3_chat"
    if model_type == "baichuan" and tokenizer.convert_ids_to_tokens(195) == "<reserved_102>":
        family = "baichuan_chat"  # Baichuan 1 shares Baichuan2's model_type; its user token (195) is named apart
    if family in TEMPLATES:
        return _family_variant(family, tokenizer)
    if getattr(tokenizer, "chat_template", None):
        return TokenizerTemplate(tokenizer)
    return TEMPLATES["default"]


def config_template(cfg, tokenizer: PreTrainedTokenizerBase) -> Template:
    """The template a config trains with: data.template resolved against its model's checkpoint."""
    return resolve_template(cfg.data.template, tokenizer, checkpoint_model_type(cfg.model.path))


def _family_variant(family: str, tokenizer: PreTrainedTokenizerBase) -> Template:
    """The family's template; where one model_type covers several formats, the variant that renders a probe
    conversation exactly as the tokenizer's own chat_template, or that template itself when none does (a fine-tune
    with a format of its own, such as a DeepSeek-R1 distillation of Qwen2.5)."""
    variants = FAMILY_VARIANTS.get(family, (family,))
    if len(variants) == 1 or not getattr(tokenizer, "chat_template", None):
        return TEMPLATES[variants[0]]
    try:
        own = TokenizerTemplate(tokenizer).render_text(_VARIANT_PROBE)
    except TemplateError:  # a template that refuses tool results is none of the variants
        return TokenizerTemplate(tokenizer)
    bos, eos = tokenizer.bos_token or "", tokenizer.eos_token or ""
    for name in variants:
        if TEMPLATES[name].render_text(_VARIANT_PROBE, bos=bos, eos=eos) == own:
            return TEMPLATES[name]
    return TokenizerTemplate(tokenizer)
