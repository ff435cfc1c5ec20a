"""The named chat templates.

Each entry follows the model's official format: its tokenizer_config.json `chat_template` where the model publishes
one (tests/templates/official_templates.py keeps those texts with their sources, and tests/templates/test_official.py
checks that every entry renders the same text and token ids), otherwise the model's own prompt-building code.
Deviations are deliberate and noted at the entry (mostly: a trained reply must end in a trained end-of-turn marker,
so a fine-tuned model learns to stop).
"""

from __future__ import annotations

import difflib

from xtune.errors import ConfigError
from xtune.templates.chat import ChatTemplate

# Qwen2.5 and Qwen3 write tool results as <tool_response> blocks in one user turn, however many results there are.
_QWEN_TOOL_RESULTS = dict(
    tool_style="qwen",
    tool="\n<tool_response>\n{content}\n</tool_response>",
    tool_open="<|im_start|>user",
    tool_close="<|im_end|>\n",
)

_CHATML = dict(
    system="<|im_start|>system\n{content}<|im_end|>\n",
    user="<|im_start|>user\n{content}<|im_end|>\n",
    assistant_prefix="<|im_start|>assistant\n",
    assistant_suffix="<|im_end|>",
    turn_separator="\n",
    stop_words=("<|im_end|>",),
)

# Mistral-7B-Instruct v0.1/v0.2 and Mixtral-8x7B-Instruct share this template: the system prompt opens the first
# [INST] block, and the reply follows "[/INST]" after a space the model writes itself.
_MISTRAL = dict(
    prefix="{bos}",
    system="{content}\n\n",
    merge_system=True,
    user=" [INST] {content} [/INST]",
    assistant_prefix="",
    reply_prefix=" ",
    assistant_suffix="{eos}",
    stop_words=("{eos}",),
)

_DEEPSEEK_CODER_SYSTEM = (
    "You are an AI programming assistant, utilizing the Deepseek Coder model, developed by Deepseek Company, and you "
    "only answer questions related to computer science. For politically sensitive questions, security and privacy "
    "issues, and other non-computer science questions, you will refuse to answer\n"
)

_VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


def _baichuan(user: str, assistant: str) -> dict:
    """Baichuan's chat format: the system prompt bare, the user token before user turns, the assistant's before
    replies (its two token ids, 195 and 196, have different names in Baichuan 1's and Baichuan 2's vocabularies)."""
    return dict(
        system="{content}",
        user=user + "{content}",
        assistant_prefix=assistant,
        assistant_suffix="{eos}",
        stop_words=(user,),
    )


TEMPLATES: dict[str, ChatTemplate] = {
    t.name: t
    for t in [
        # XTuner's default: plain-text role markers for base models without a chat template.
        ChatTemplate(
            name="default",
            system="<|System|>:{content}\n",
            user="<|User|>:{content}\n",
            assistant_prefix="<|Bot|>:",
            assistant_suffix="{eos}",
            turn_separator="\n",
            prefix="{bos}",
            stop_words=("{eos}",),
        ),
        # --- InternLM ---------------------------------------------------------------------------------------------
        # internlm/internlm-chat-7b (v1): no jinja template; its remote code builds
        # "<|User|>:{q}<eoh>\n<|Bot|>:{a}<eoa>\n" after the tokenizer's bos. System line as in XTuner's internlm_chat.
        ChatTemplate(
            name="internlm_chat",
            prefix="{bos}",
            system="<|System|>:{content}\n",
            user="<|User|>:{content}<eoh>\n",
            assistant_prefix="<|Bot|>:",
            assistant_suffix="<eoa>",
            turn_separator="\n",
            stop_words=("<eoa>",),
        ),
        # internlm/internlm2-chat-1_8b tokenizer_config.json chat_template.
        # Tool results come back in the environment role (InternLM's chat_format.md).
        ChatTemplate(
            name="internlm2_chat",
            prefix="{bos}",
            tool_style="internlm2",
            tool="<|im_start|>environment name=<|plugin|>\n{content}<|im_end|>\n",
            tools_message="<|im_start|>system name=<|plugin|>\n{content}<|im_end|>\n",
            **_CHATML,
        ),
        # --- Qwen -------------------------------------------------------------------------------------------------
        # Qwen/Qwen2-1.5B-Instruct (also Qwen1.5) tokenizer_config.json chat_template. Qwen2.5 shares the model_type
        # (qwen2) but not the template: `auto` tells them apart by the tokenizer's own template (templates/__init__.py).
        ChatTemplate(
            name="qwen_chat",
            default_system="You are a helpful assistant.",
            tool_style="qwen",  # Qwen2 has no tool format of its own; Qwen2.5's, which Qwen2-based models learn
            tool="<|im_start|>tool\n{content}<|im_end|>\n",  # the official template renders any role this way
            **{**_CHATML, "stop_words": ("<|im_end|>", "<|endoftext|>")},
        ),
        # Qwen/Qwen2.5-*-Instruct tokenizer_config.json chat_template: its own default system prompt, the # Tools
        # block and <tool_call> JSON, and tool results in a user turn. Tool call arguments given as a JSON string are
        # written as they are (the official template would quote the string once more).
        ChatTemplate(
            name="qwen2_5_chat",
            default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
            **_QWEN_TOOL_RESULTS,
            **{**_CHATML, "stop_words": ("<|im_end|>", "<|endoftext|>")},
        ),
        # Qwen/Qwen3-* (hybrid thinking) with thinking off. The official template gives the final reply, and the
        # generation prompt when enable_thinking=False, an empty "<think>\n\n</think>\n\n" block and earlier replies
        # none; xtune renders a training conversation exactly so. The block is scaffolding (never trained): the
        # model learns to answer after it, as it is prompted at inference. No thinking-on variant: training on
        # reasoning traces needs reasoning_content support.
        ChatTemplate(
            name="qwen3",
            **{
                **_CHATML,
                "assistant_prefix": "<|im_start|>assistant\n<think>\n\n</think>\n\n",
                "history_assistant_prefix": "<|im_start|>assistant\n",
                "stop_words": ("<|im_end|>", "<|endoftext|>"),
                **_QWEN_TOOL_RESULTS,
            },
        ),
        # --- Llama, Mistral ---------------------------------------------------------------------------------------
        # meta-llama/Llama-2-7b-chat-hf tokenizer_config.json chat_template: bos before every [INST] block, the
        # system prompt in a <<SYS>> block inside the first one, contents trimmed.
        ChatTemplate(
            name="llama2_chat",
            system="<<SYS>>\n{content}\n<</SYS>>\n\n",
            merge_system=True,
            user="{bos}[INST] {content} [/INST]",
            assistant_prefix="",
            reply_prefix=" ",
            assistant_suffix=" {eos}",
            strip_content=True,
            stop_words=("{eos}",),
        ),
        # meta-llama/Meta-Llama-3-8B-Instruct tokenizer_config.json chat_template.
        ChatTemplate(
            name="llama3_chat",
            prefix="{bos}",
            system="<|start_header_id|>system<|end_header_id|>\n\n{content}<|eot_id|>",
            user="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
            assistant_prefix="<|start_header_id|>assistant<|end_header_id|>\n\n",
            assistant_suffix="<|eot_id|>",
            strip_content=True,
            stop_words=("<|eot_id|>", "<|end_of_text|>"),
            tool_style="llama3",  # Llama 3.1's JSON calls
            tool="<|start_header_id|>tool<|end_header_id|>\n\n{content}<|eot_id|>",  # generic roles, as official
        ),
        # mistralai/Mistral-7B-Instruct-v0.1 / v0.2 tokenizer_config.json chat_template.
        ChatTemplate(name="mistral", **_MISTRAL),
        # mistralai/Mixtral-8x7B-Instruct-v0.1 tokenizer_config.json chat_template (the same as Mistral's).
        ChatTemplate(name="mixtral", **_MISTRAL),
        # --- Gemma, Phi-3, Cohere, Yi, Zephyr, Vicuna -------------------------------------------------------------
        # google/gemma-7b-it (and gemma-2) tokenizer_config.json chat_template: the assistant is "model", contents
        # trimmed. Gemma has no system role (the official template raises on one); xtune puts a system prompt
        # before the first user message's text, as Gemma 3's template does.
        ChatTemplate(
            name="gemma",
            prefix="{bos}",
            system="{content}\n\n",
            merge_system=True,
            user="<start_of_turn>user\n{content}<end_of_turn>\n",
            assistant_prefix="<start_of_turn>model\n",
            assistant_suffix="<end_of_turn>",
            turn_separator="\n",
            strip_content=True,
            stop_words=("<end_of_turn>",),
        ),
        # microsoft/Phi-3-mini-4k-instruct tokenizer_config.json chat_template: a finished conversation ends in eos.
        ChatTemplate(
            name="phi3_chat",
            system="<|system|>\n{content}<|end|>\n",
            user="<|user|>\n{content}<|end|>\n",
            assistant_prefix="<|assistant|>\n",
            assistant_suffix="<|end|>",
            turn_separator="\n",
            suffix="{eos}",
            stop_words=("<|end|>", "<|endoftext|>"),
        ),
        # CohereForAI/c4ai-command-r-v01 (and -plus) default tokenizer_config.json chat_template; user and assistant
        # contents trimmed (xtune trims the system prompt too).
        ChatTemplate(
            name="cohere_chat",
            prefix="{bos}",
            system="<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>{content}<|END_OF_TURN_TOKEN|>",
            user="<|START_OF_TURN_TOKEN|><|USER_TOKEN|>{content}<|END_OF_TURN_TOKEN|>",
            assistant_prefix="<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>",
            assistant_suffix="<|END_OF_TURN_TOKEN|>",
            strip_content=True,
            stop_words=("<|END_OF_TURN_TOKEN|>",),
        ),
        # 01-ai/Yi-1.5-*-Chat tokenizer_config.json chat_template: the system prompt stands bare before the first
        # turn and every user turn already ends with the assistant header (no separate generation prompt).
        ChatTemplate(
            name="yi",
            system="{content}",
            user="<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n",
            assistant_prefix="",
            assistant_suffix="<|im_end|>",
            turn_separator="\n",
            stop_words=("<|im_end|>", "<|endoftext|>"),
        ),
        # HuggingFaceH4/zephyr-7b-beta tokenizer_config.json chat_template (the alignment-handbook default).
        ChatTemplate(
            name="zephyr",
            system="<|system|>\n{content}{eos}\n",
            user="<|user|>\n{content}{eos}\n",
            assistant_prefix="<|assistant|>\n",
            assistant_suffix="{eos}",
            turn_separator="\n",
            stop_words=("{eos}",),
        ),
        # lmsys/vicuna-7b-v1.5: no jinja template; FastChat's vicuna_v1.1 conversation (ADD_COLON_TWO, sep " ",
        # sep2 "</s>"), after the tokenizer's bos.
        ChatTemplate(
            name="vicuna",
            prefix="{bos}",
            system="{content} ",
            default_system=_VICUNA_SYSTEM,
            user="USER: {content} ",
            assistant_prefix="ASSISTANT:",
            reply_prefix=" ",
            assistant_suffix="{eos}",
            stop_words=("{eos}",),
        ),
        # --- DeepSeek ---------------------------------------------------------------------------------------------
        # deepseek-ai/DeepSeek-V3 (also V2.5) tokenizer_config.json chat_template, without tool calls.
        ChatTemplate(
            name="deepseek",
            prefix="{bos}",
            system="{content}",
            user="<｜User｜>{content}",
            assistant_prefix="<｜Assistant｜>",
            assistant_suffix="<｜end▁of▁sentence｜>",
            stop_words=("<｜end▁of▁sentence｜>",),
        ),
        # deepseek-ai/DeepSeek-V2-Chat, V2-Lite-Chat, Coder-V2-Instruct (and deepseek-llm-chat) chat_template.
        ChatTemplate(
            name="deepseek_v2",
            prefix="{bos}",
            system="{content}\n\n",
            user="User: {content}\n\n",
            assistant_prefix="Assistant:",
            reply_prefix=" ",
            assistant_suffix="{eos}",
            stop_words=("{eos}",),
        ),
        # deepseek-ai/deepseek-coder-*-instruct tokenizer_config.json chat_template.
        ChatTemplate(
            name="deepseek_coder",
            prefix="{bos}",
            system="{content}",
            default_system=_DEEPSEEK_CODER_SYSTEM,
            user="### Instruction:\n{content}\n",
            assistant_prefix="### Response:\n",
            assistant_suffix="\n<|EOT|>",
            turn_separator="\n",
            stop_words=("<|EOT|>",),
        ),
        # --- Templates whose official format has no end-of-turn marker --------------------------------------------
        # The next turn's header ends a reply in these formats. ChatGLM3's fine-tuning demo trains that header token
        # after a reply (and eos after the last one); Baichuan2's fine-tune.py trains eos after each reply without
        # writing it in the input; MiniCPM's template has no marker at all. xtune writes eos after every reply
        # instead (deviation), so each trained reply ends in a trained marker and the model learns to stop.
        # THUDM/chatglm3-6b tokenizer_config.json chat_template.
        ChatTemplate(
            name="chatglm3",
            prefix="[gMASK]sop",
            system="<|system|>\n {content}",
            user="<|user|>\n {content}",
            assistant_prefix="<|assistant|>",
            reply_prefix="\n ",
            assistant_suffix="{eos}",
            stop_words=("<|user|>", "<|observation|>"),
        ),
        # openbmb/MiniCPM-2B-sft tokenizer_config.json chat_template; contents trimmed. Its template leaves bos to
        # the tokenizer, xtune writes it (deviation: xtune tokenizes without adding special tokens).
        ChatTemplate(
            name="minicpm",
            prefix="{bos}",
            system="{content}",
            user="<用户>{content}<AI>",
            assistant_prefix="",
            assistant_suffix="{eos}",
            strip_content=True,
            stop_words=("<用户>",),
        ),
        # baichuan-inc/Baichuan2-*-Chat: no jinja template; generation_utils.build_chat_input: the system prompt
        # bare, <reserved_106> (user_token_id) before user turns, <reserved_107> (assistant_token_id) before replies.
        ChatTemplate(name="baichuan2_chat", **_baichuan("<reserved_106>", "<reserved_107>")),
        # baichuan-inc/Baichuan-13B-Chat: no jinja template; its remote code builds the input as Baichuan2's does, with
        # the same user/assistant token ids (195, 196), which its vocabulary names <reserved_102> and <reserved_103>.
        ChatTemplate(name="baichuan_chat", **_baichuan("<reserved_102>", "<reserved_103>")),
    ]
}


def get_template(name: str) -> ChatTemplate:
    try:
        return TEMPLATES[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(TEMPLATES), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"unknown template {name!r}; {hint}known templates: {', '.join(TEMPLATES)}") from None
