"""Map functions: one raw record -> a standard sample.

A sample is either a conversation, `{"messages": [{"role", "content", "loss"?}, ...]}`, which a chat template
renders, or plain text, `{"text": ...}`, for incremental pre-training (every token trained, no template).
A map function raises `RecordError` naming the key it could not use; the loader adds file and line.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict

from xtune.errors import ConfigError
from xtune.templates.base import Message
from xtune.templates.tool_calls import ToolCall, split_reply
from xtune.user_code import load_function


class Sample(TypedDict, total=False):
    """A conversation (messages, and the tools it may call) or pre-training text; images for multimodal data; or a
    preference pair: two conversations, `chosen` and `rejected`, that share everything but their final assistant
    turn (see preference_pair); or, for KTO, a conversation with `label` (its final reply desirable or not)."""

    messages: list[Message]
    label: bool
    chosen: list[Message]
    rejected: list[Message]
    tools: list[dict[str, Any]]
    text: str
    images: list[str]


MapFn = Callable[[dict[str, Any]], Sample]

ROLES = ("system", "user", "assistant", "tool")


class RecordError(ValueError):
    """A record that a map function cannot convert; `key` names the field at fault. With a `skip_reason` the
    config allows dropping the record: it is skipped and counted under that reason instead of stopping the run."""

    def __init__(self, message: str, key: str | None = None, skip_reason: str | None = None):
        super().__init__(message)
        self.key = key
        self.skip_reason = skip_reason


def _text(record: dict, key: str, required: bool = True) -> str:
    value = record.get(key)
    if value is None:  # datasets fills keys absent from some records with None
        if required:
            raise RecordError(f"missing key {key!r}", key)
        return ""
    if not isinstance(value, str):
        raise RecordError(f"key {key!r} must be a string, got {type(value).__name__}", key)
    return value


def _instruction(record: dict, instruction: str, extra: str, output: str) -> Sample:
    prompt, more = _text(record, instruction), _text(record, extra, required=False)
    if more:
        prompt = f"{prompt}\n{more}"
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": _text(record, output)}]}


def alpaca(record: dict) -> Sample:
    """{"instruction", "input"?, "output"} -> one user/assistant exchange (input appended to instruction)."""
    return _instruction(record, "instruction", "input", "output")


def alpaca_zh(record: dict) -> Sample:
    """{"instruction_zh", "input_zh"?, "output_zh"} (silk-road/alpaca-data-gpt4-chinese field names)."""
    return _instruction(record, "instruction_zh", "input_zh", "output_zh")


def prompt_response(record: dict) -> Sample:
    """{"prompt", "response", "system"?} -> one exchange."""
    messages = [
        {"role": "user", "content": _text(record, "prompt")},
        {"role": "assistant", "content": _text(record, "response")},
    ]
    system = _text(record, "system", required=False)
    return {"messages": ([{"role": "system", "content": system}] if system else []) + messages}


_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "tool": "tool",
    "observation": "tool",
}


def sharegpt(record: dict) -> Sample:
    """{"conversations": [{"from": "human"|"gpt"|"system", "value"}]} -> a conversation."""
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise RecordError("missing key 'conversations' (a non-empty list of {from, value})", "conversations")
    messages = []
    for i, turn in enumerate(turns):
        speaker = turn.get("from") if isinstance(turn, dict) else None
        if speaker not in _SHAREGPT_ROLES:
            raise RecordError(
                f"conversations[{i}].from is {speaker!r}; expected one of {', '.join(_SHAREGPT_ROLES)}",
                f"conversations[{i}].from",
            )
        messages.append({"role": _SHAREGPT_ROLES[speaker], "content": _text(turn, "value")})
    return {"messages": _drop_leading_assistant(messages)}


def _drop_leading_assistant(messages: list[dict]) -> list[dict]:
    """A conversation that opens with the assistant (after any system message) has nothing it answers."""
    start = 1 if messages and messages[0]["role"] == "system" else 0
    end = start
    while end < len(messages) and messages[end]["role"] == "assistant":
        end += 1
    return messages[:start] + messages[end:]


def openai(record: dict) -> Sample:
    """{"messages": [{"role", "content", "loss"?, "tool_calls"?}], "tools"?} as in OpenAI fine-tuning files: assistant
    tool calls, `tool` results and the tool list render in the template's own tool format."""
    out = _conversation(record.get("messages"), "messages")
    return _with_tools({"messages": _drop_leading_assistant(out)}, record)


def _conversation(messages: Any, key: str) -> list[Message]:
    """A list of OpenAI-style messages under `key`, checked and converted."""
    if not isinstance(messages, list) or not messages:
        raise RecordError(f"missing key {key!r} (a non-empty list of {{role, content}})", key)
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise RecordError(f"{key}[{i}] must be an object with role and content", f"{key}[{i}]")
        role = message.get("role")
        if role not in ROLES:
            raise RecordError(f"{key}[{i}].role is {role!r}; expected one of {', '.join(ROLES)}", f"{key}[{i}].role")
        calls = _tool_calls(message.get("tool_calls"), f"{key}[{i}].tool_calls") if role == "assistant" else []
        if calls and message.get("content") is None:  # OpenAI writes "content": null beside tool calls
            content = ""
        elif "content" in message:
            content = _text(message, "content")
        else:
            raise RecordError(f"{key}[{i}] is missing key 'content'", f"{key}[{i}].content")
        converted: dict[str, Any] = {"role": role, "content": content}
        if calls:
            converted["tool_calls"] = calls
        loss = message.get("loss")
        if loss is not None:  # None: the key is absent, or datasets filled it in for a record without it
            if not isinstance(loss, bool):  # bool("false") is True: a quoted or numeric flag would be trained
                raise RecordError(
                    f"{key}[{i}].loss must be true or false (a JSON boolean), got {loss!r}", f"{key}[{i}].loss"
                )
            converted["loss"] = loss
        out.append(converted)
    _check_tool_results(out)
    return out


def _check_tool_results(messages: list[dict]) -> None:
    """Each tool result answers one call of the assistant message just before it. A result that answers none
    would train the reply after it on an answer the model never asked for, and renders as a tool turn with no
    call in the template's format."""
    pending = 0  # calls of the last assistant message not answered yet
    for i, message in enumerate(messages):
        if message["role"] == "tool":
            if not pending:
                raise RecordError(
                    f"messages[{i}] is a tool result that answers no call; add the call to the tool_calls of the "
                    "assistant message before it, or remove the result",
                    f"messages[{i}]",
                )
            pending -= 1
        else:
            pending = len(message.get("tool_calls", ()))


def _without_nulls(value: Any) -> Any:
    """`datasets` loads JSON into one Arrow schema: an object key that only some records have becomes null in all
    the others (a tool's parameters, a call's arguments). Those nulls were never written; drop them."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _tool_calls(raw: Any, key: str) -> list[dict]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise RecordError(f"{key} must be a list of {{type, function: {{name, arguments}}}}", key)
    calls = []
    for j, call in enumerate(raw):
        function = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise RecordError(f"{key}[{j}] needs a function name: {{function: {{name, arguments}}}}", f"{key}[{j}]")
        arguments = function.get("arguments") or {}
        if isinstance(arguments, str):  # the OpenAI API sends arguments as a JSON string
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError as e:
                raise RecordError(f"{key}[{j}].function.arguments is not valid JSON: {e.msg}", key) from None
        if not isinstance(arguments, dict):
            raise RecordError(f"{key}[{j}].function.arguments must be a JSON object", key)
        calls.append(ToolCall(function["name"], _without_nulls(arguments)).to_message())
    return calls


def _with_tools(sample: Sample, record: dict) -> Sample:
    tools = record.get("tools")
    if tools is None:
        return sample
    if not isinstance(tools, list) or not all(isinstance(t, dict) and "name" in t.get("function", t) for t in tools):
        raise RecordError("key 'tools' must be a list of {type: function, function: {name, description, parameters}}")
    tools = [_without_nulls(t if "function" in t else {"type": "function", "function": t}) for t in tools]
    return {**sample, "tools": tools}


# An Observation runs until the model's next step starts.
_OBSERVATION = re.compile(r"^[ \t]*Observation:[ \t]?(.*?)\n(?=[ \t]*(?:Thought|Action|Final Answer):)", re.S | re.M)


def react(record: dict) -> Sample:
    """{"question", "response", "system"?, "tools"?}: a ReAct trajectory (Thought / Action / Action Input /
    Observation ... Final Answer, as in MS-Agent) as tool calls and results, so the steps are trained and the
    Observations, which the tools wrote, are not."""
    response = _text(record, "response")
    messages: list[dict] = []
    system = _text(record, "system", required=False)
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": _text(record, "question")})
    position = 0
    for observation in _OBSERVATION.finditer(response):
        step = response[position : observation.start()].rstrip("\n")
        content, calls = split_reply(step, "react")
        if len(calls) != 1:
            found = "no Action" if not calls else f"{len(calls)} Actions"
            raise RecordError(
                f"key 'response': {found} before Observation {observation.group(0).strip()!r}", "response"
            )
        messages.append({"role": "assistant", "content": content, "tool_calls": [calls[0].to_message()]})
        messages.append({"role": "tool", "content": observation.group(1).strip()})
        position = observation.end()
    final = response[position:].strip()
    if "Final Answer:" not in final:
        raise RecordError("key 'response' must end with 'Final Answer: ...' after the last Observation", "response")
    messages.append({"role": "assistant", "content": final})
    return _with_tools({"messages": messages}, record)


_GUANACO_TURN = re.compile(r"### (Human|Assistant):")


def oasst1(record: dict) -> Sample:
    """openassistant-guanaco: {"text": "### Human: ... ### Assistant: ..."} -> a multi-turn conversation."""
    text = _text(record, "text")
    pieces = _GUANACO_TURN.split(text)
    messages = [
        {"role": "user" if who == "Human" else "assistant", "content": body.strip()}
        for who, body in zip(pieces[1::2], pieces[2::2], strict=True)
    ]
    if not any(m["role"] == "assistant" for m in messages):
        raise RecordError("key 'text' has no '### Assistant:' turn", "text")
    return {"messages": messages}


def pretrain(record: dict) -> Sample:
    """{"text"} -> plain text for incremental pre-training."""
    return {"text": _text(record, "text")}


# ---------------------------------------------------------------------------------------------- preference pairs
def preference_pair(sample: Sample) -> tuple[list[Message], list[Message]]:
    """The two conversations of a preference sample, as they are trained: everything before the final assistant
    turn is the shared prompt (context, never trained, earlier assistant turns included), and only that final turn
    is scored. Raises RecordError where the two do not share their prompt."""
    chosen, rejected = sample.get("chosen"), sample.get("rejected")
    for key, conversation in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(conversation, list) or not conversation or conversation[-1].get("role") != "assistant":
            raise RecordError(f"key {key!r} must be a conversation that ends with an assistant turn", key)
    if chosen[:-1] != rejected[:-1]:
        first = next(
            (i for i, (c, r) in enumerate(zip(chosen[:-1], rejected[:-1], strict=False)) if c != r),
            min(len(chosen), len(rejected)) - 1,
        )
        raise RecordError(
            f"chosen and rejected differ at message {first}, before their final assistant turns: a pair shares its "
            "prompt and differs only in the last reply",
            "chosen",
        )
    prompt = [{**m, "loss": False} if m["role"] == "assistant" else m for m in chosen[:-1]]
    return prompt + [{**chosen[-1], "loss": True}], prompt + [{**rejected[-1], "loss": True}]


def _turns(record: dict, key: str, role: str) -> list[Message]:
    """`key` as messages: a string is one message of `role`, a list is OpenAI-style messages."""
    value = record.get(key)
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list):
        return _conversation(value, key)
    if value is None:
        raise RecordError(f"missing key {key!r}", key)
    raise RecordError(f"key {key!r} must be a string or a list of {{role, content}}, got {type(value).__name__}", key)


def preference(record: dict) -> Sample:
    """{"prompt": [messages] or "text", "chosen": [messages] or "text", "rejected": [messages] or "text", "system"?}:
    a preference pair with an explicit prompt (XTuner, TRL); only the final reply of chosen and rejected is scored."""
    prompt = _turns(record, "prompt", "user")
    system = _text(record, "system", required=False)
    if system and prompt[0]["role"] != "system":
        prompt = [{"role": "system", "content": system}, *prompt]
    sample: Sample = {"chosen": prompt + _turns(record, "chosen", "assistant")}
    sample["rejected"] = prompt + _turns(record, "rejected", "assistant")
    preference_pair(sample)
    return _with_tools(sample, record)


def preference_conversations(record: dict) -> Sample:
    """{"chosen": [messages], "rejected": [messages]}: two whole conversations sharing everything up to the last
    assistant turn (UltraFeedback-binarized); only that turn is scored."""
    sample: Sample = {"chosen": _turns(record, "chosen", "user"), "rejected": _turns(record, "rejected", "user")}
    preference_pair(sample)
    return _with_tools(sample, record)


_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")


def _hh_conversation(record: dict, key: str) -> list[Message]:
    pieces = _HH_TURN.split(_text(record, key))
    if pieces[0].strip() or len(pieces) < 3:
        raise RecordError(f"key {key!r} must be '\\n\\nHuman: ...\\n\\nAssistant: ...' turns", key)
    return [
        {"role": "user" if who == "Human" else "assistant", "content": body.strip()}
        for who, body in zip(pieces[1::2], pieces[2::2], strict=True)
    ]


def hh_rlhf(record: dict) -> Sample:
    """{"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": ...} (Anthropic HH-RLHF): text pairs that
    share every turn but the last assistant reply, which alone is scored."""
    sample: Sample = {"chosen": _hh_conversation(record, "chosen"), "rejected": _hh_conversation(record, "rejected")}
    preference_pair(sample)
    return sample


def kto(record: dict) -> Sample:
    """{"messages": [{"role", "content"}], "label": true|false} (KTO, unpaired): one conversation whose final assistant
    reply is desirable (true) or not (false); only that reply is scored, earlier assistant turns are its prompt."""
    label = record.get("label")
    if label is None:
        raise RecordError("missing key 'label': true if the final reply is desirable, false if not", "label")
    if not isinstance(label, bool):  # bool("false") is True: a quoted or numeric label would flip the preference
        raise RecordError(f"key 'label' must be true or false (a JSON boolean), got {label!r}", "label")
    messages = _conversation(record.get("messages"), "messages")
    if messages[-1]["role"] != "assistant":
        raise RecordError("key 'messages' must end with the assistant reply that 'label' judges", "messages")
    return _with_tools({"messages": messages, "label": label}, record)


MAP_FUNCTIONS: dict[str, MapFn] = {
    "alpaca": alpaca,
    "alpaca_zh": alpaca_zh,
    "openai": openai,
    "sharegpt": sharegpt,
    "oasst1": oasst1,
    "prompt_response": prompt_response,
    "pretrain": pretrain,
    "react": react,
    "preference": preference,
    "preference_conversations": preference_conversations,
    "hh_rlhf": hh_rlhf,
    "kto": kto,
}

EXAMPLES: dict[str, dict] = {
    "alpaca": {"instruction": "Translate to French", "input": "Hello", "output": "Bonjour"},
    "alpaca_zh": {"instruction_zh": "翻译成英文", "input_zh": "你好", "output_zh": "Hello"},
    "openai": {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]},
    "sharegpt": {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]},
    "oasst1": {"text": "### Human: Hi### Assistant: Hello!"},
    "prompt_response": {"prompt": "Hi", "response": "Hello!"},
    "pretrain": {"text": "Any document, trained on every token."},
    "react": {
        "question": "What is 6 * 7?",
        "response": 'Thought: multiply\nAction: calculate\nAction Input: {"expression": "6 * 7"}\nObservation: 42\n'
        "Final Answer: 42",
    },
    "preference": {"prompt": "Hi", "chosen": "Hello! How can I help?", "rejected": "What?"},
    "preference_conversations": {
        "chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"}],
        "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "What?"}],
    },
    "hh_rlhf": {
        "chosen": "\n\nHuman: Hi\n\nAssistant: Hello! How can I help?",
        "rejected": "\n\nHuman: Hi\n\nAssistant: What?",
    },
    "kto": {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "What?"}], "label": False},
}


def describe(name: str) -> str:
    """A built-in format's whole description (its map function's docstring) as one paragraph."""
    return " ".join((MAP_FUNCTIONS[name].__doc__ or "").split())


def get_map_fn(name: str, base_dir: Path | None = None) -> MapFn:
    """A built-in name, `package.module:function`, or `path/to/file.py:function`."""
    if name in MAP_FUNCTIONS:
        return MAP_FUNCTIONS[name]
    if ":" not in name:
        raise ConfigError(
            f"unknown dataset format {name!r}; built-in formats: {', '.join(MAP_FUNCTIONS)}, "
            "or name your own as 'my_module:my_map_fn' or 'path/to/file.py:my_map_fn'"
        )
    return accept_v0_conversation(load_function(name, "dataset format", base_dir))


# --- XTuner v0's datasets, by v0's names -----------------------------------------------------------------------------
# Each reads the record layout of the dataset v0 trained on (its published card, and v0's map function for which field
# is the prompt) and gives the system prompt v0 gave it (xtuner.utils.SYSTEM_TEMPLATE), so a v0 recipe trains on the
# same conversations.
_V0_CODER = (
    "You are a professional programer. Please provide the corresponding code based on the description of Human.\n"
)
_V0_LAWYER = "你现在是一名专业的中国律师，请根据用户的问题给出准确、有理有据的回复。\n"


def _task(system: str, prompt: str, reply: str) -> Sample:
    return {
        "messages": [
            *([{"role": "system", "content": system}] if system else []),
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": reply},
        ]
    }


def conversation(record: dict) -> Sample:
    """XTuner v0's own layout (its custom-dataset JSON, and what v0 map functions return): {"conversation": [{"system"?,
    "input", "output"}, ...]}, one user/assistant exchange per item, a system prompt before the item that has one."""
    turns = record.get("conversation")
    if not isinstance(turns, list) or not turns:
        raise RecordError("missing key 'conversation' (a non-empty list of {system?, input, output})", "conversation")
    messages: list[dict] = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RecordError(f"conversation[{i}] must be an object with input and output", f"conversation[{i}]")
        system = _text(turn, "system", required=False)
        if system:
            messages.append({"role": "system", "content": system})
        prompt = _text(turn, "input", required=False)
        if prompt or i == 0:
            messages.append({"role": "user", "content": prompt})
        messages.append({"role": "assistant", "content": _text(turn, "output")})
    return {"messages": messages}


def accept_v0_conversation(map_fn: MapFn) -> MapFn:
    """Your own map function may return v0's {"conversation": [...]} as v0's did; it is read as `conversation`."""

    def mapped(record: dict) -> Sample:
        sample = map_fn(record)
        if isinstance(sample, dict) and "conversation" in sample and "messages" not in sample:
            return conversation(sample)
        return sample

    mapped.__wrapped__ = map_fn  # the tokenized-data cache keys on the user's own function
    return mapped


def arxiv(record: dict) -> Sample:
    """arXiv metadata (v0's arxiv_gentitle): {"abstract", "title"} -> write the paper's title from its abstract."""
    system = (
        "If you are an expert in writing papers, please generate a good paper title for this paper based on other "
        "authors' descriptions of their abstracts.\n"
    )
    return _task(system, _text(record, "abstract"), _text(record, "title"))


def code_alpaca(record: dict) -> Sample:
    """HuggingFaceH4/CodeAlpaca_20K: {"prompt", "completion"} with v0's programmer system prompt."""
    return _task(_V0_CODER, _text(record, "prompt"), _text(record, "completion"))


def tiny_codes(record: dict) -> Sample:
    """nampdn-ai/tiny-codes: {"prompt", "response"} with v0's programmer system prompt."""
    return _task(_V0_CODER, _text(record, "prompt"), _text(record, "response"))


def colorist(record: dict) -> Sample:
    """burkelibbey/colors: {"description": "name: words", "color": "#hex"} -> the colour for the words after the
    first colon, with v0's colour-designer system prompt."""
    words = _text(record, "description").partition(":")[2].strip()
    system = (
        "You are a professional color designer. Please provide the corresponding colors based on the description of "
        "Human.\n"
    )
    return _task(system, words, _text(record, "color"))


def crime_kg_assistant(record: dict) -> Sample:
    """CrimeKgAssitant (Chinese criminal-law Q&A): {"input", "output"} with v0's lawyer system prompt."""
    return _task(_V0_LAWYER, _text(record, "input"), _text(record, "output"))


def law_reference(record: dict) -> Sample:
    """DISC-Law-SFT with references: {"question", "answer"} with v0's lawyer system prompt."""
    return _task(_V0_LAWYER, _text(record, "question"), _text(record, "answer"))


def lawyer(record: dict) -> Sample:
    """v0's lawyer data, either of its two files: crime_kg_assistant's {"input", "output"} or law_reference's
    {"question", "answer"}."""
    return law_reference(record) if "question" in record else crime_kg_assistant(record)


def medical(record: dict) -> Sample:
    """shibing624/medical (finetune): {"instruction", "input"?, "output"} with v0's doctor system prompt."""
    system = "如果你是一名医生，请根据患者的描述回答医学问题。\n"
    return {
        "messages": [
            {"role": "system", "content": system},
            *_instruction(record, "instruction", "input", "output")["messages"],
        ]
    }


def sql(record: dict) -> Sample:
    """b-mc2/sql-create-context: {"context" (CREATE TABLE), "question", "answer"} with v0's SQL system prompt."""
    system = (
        "If you are an expert in SQL, please generate a good SQL Query for Question based on the CREATE TABLE "
        "statement.\n"
    )
    return _task(system, _text(record, "context") + "\n" + _text(record, "question"), _text(record, "answer"))


def open_orca(record: dict) -> Sample:
    """Open-Orca/OpenOrca: {"system_prompt", "question", "response"}."""
    system = _text(record, "system_prompt", required=False)
    return _task(system, _text(record, "question"), _text(record, "response"))


def stack_exchange(record: dict) -> Sample:
    """ArmelR/stack-exchange-instruction: {"question", "response"}."""
    return _task("", _text(record, "question"), _text(record, "response"))


def wizardlm(record: dict) -> Sample:
    """WizardLM evol-instruct (ShareGPT layout): {"conversations": [{"from": "human"|"gpt", "value"}]}; turns before
    the first human one, and a last human turn without an answer, are dropped."""
    sample = sharegpt(record)
    messages = sample["messages"]
    while messages and messages[-1]["role"] == "user":
        messages.pop()
    return {"messages": messages}


_MSAGENT_THINK = re.compile(r"<\|startofthink\|>(.*?)<\|endofthink\|>", re.S)
_MSAGENT_EXEC = re.compile(r"<\|startofexec\|>(.*?)<\|endofexec\|>", re.S)


def _msagent_json(text: str, key: str) -> Any:
    body = text.replace("```JSON", "").replace("```json", "").replace("```", "").strip()
    try:
        return json.loads(body)
    except json.JSONDecodeError as e:
        raise RecordError(f"key {key!r}: the JSON between the markers is not valid ({e.msg})", key) from None


def _msagent_tools(system: str) -> list[dict]:
    """The APIs an MSAgent system prompt describes as JSON objects with a name and a description."""
    decoder, tools, position = json.JSONDecoder(), [], 0
    while (start := system.find("{", position)) != -1:
        try:
            api, end = decoder.raw_decode(system, start)
        except json.JSONDecodeError:
            position = start + 1
            continue
        position = end
        if not (isinstance(api, dict) and "name" in api and "description" in api):
            continue
        parameters: dict[str, Any] = {"type": "object", "properties": {}}
        for path in api.get("paths", [])[:1]:
            for p in path.get("parameters", []) if isinstance(path, dict) else []:
                if isinstance(p, dict) and "name" in p:
                    parameters["properties"][p["name"]] = {"description": p.get("description", "")}
        tools.append(
            {
                "type": "function",
                "function": {"name": api["name"], "description": api["description"], "parameters": parameters},
            }
        )
    return tools


def msagent_react(record: dict) -> Sample:
    """damo/MSAgent-Bench: {"conversations": [{"from": "system"|"user"|"assistant", "value"}]} (a list, or its Python
    text as published, read as a literal), the APIs described in the system turn, calls as
    <|startofthink|>```JSON{"api_name", "parameters"}```<|endofthink|> and results as <|startofexec|>...<|endofexec|>:
    as tool calls, tool results and a tool list, which each template writes in its model's tool format."""
    turns = record.get("conversations")
    if isinstance(turns, str):
        try:
            turns = ast.literal_eval(turns)  # a literal only: the published file writes Python reprs, never code
        except (ValueError, SyntaxError):
            raise RecordError(
                "key 'conversations' is neither a list nor a Python literal of one", "conversations"
            ) from None
    if not isinstance(turns, list) or len(turns) < 2:
        raise RecordError("key 'conversations' must hold at least a user and an assistant turn", "conversations")
    messages: list[dict] = []
    tools: list[dict] = []
    for i, turn in enumerate(turns):
        key = f"conversations[{i}]"
        speaker, value = (turn.get("from"), _text(turn, "value")) if isinstance(turn, dict) else (None, "")
        if speaker == "system":
            tools += _msagent_tools(value)
        elif speaker == "user":
            messages.append({"role": "user", "content": value})
        elif speaker == "assistant":
            before, _, executed = value.partition("<|startofexec|>")
            think = _MSAGENT_THINK.search(before)
            if think is None:
                messages.append({"role": "assistant", "content": value.strip()})
                continue
            call = _msagent_json(think.group(1), f"{key}.value")
            if not isinstance(call, dict) or not isinstance(call.get("api_name"), str):
                raise RecordError(f"{key}.value: a call needs an api_name", f"{key}.value")
            arguments = call.get("parameters") or {}
            messages.append(
                {
                    "role": "assistant",
                    "content": before[: think.start()].strip(),
                    "tool_calls": [ToolCall(call["api_name"], arguments).to_message()],
                }
            )
            if executed:
                result = _MSAGENT_EXEC.search("<|startofexec|>" + executed)
                if result is None:
                    raise RecordError(f"{key}.value: <|startofexec|> without <|endofexec|>", f"{key}.value")
                output = _msagent_json(result.group(1), f"{key}.value")
                messages.append({"role": "tool", "content": json.dumps(output, ensure_ascii=False)})
                answer = ("<|startofexec|>" + executed)[result.end() :].strip()
                if answer:
                    messages.append({"role": "assistant", "content": answer})
        else:
            raise RecordError(f"{key}.from is {speaker!r}; expected system, user or assistant", f"{key}.from")
    _check_tool_results(messages)
    sample: Sample = {"messages": _drop_leading_assistant(messages)}
    return {**sample, "tools": tools} if tools else sample


XTUNER_V0_FORMATS: dict[str, MapFn] = {
    "conversation": conversation,
    "arxiv": arxiv,
    "code_alpaca": code_alpaca,
    "colorist": colorist,
    "crime_kg_assistant": crime_kg_assistant,
    "law_reference": law_reference,
    "lawyer": lawyer,
    "medical": medical,
    "msagent_react": msagent_react,
    "open_orca": open_orca,
    "sql": sql,
    "stack_exchange": stack_exchange,
    "tiny_codes": tiny_codes,
    "wizardlm": wizardlm,
}
MAP_FUNCTIONS.update(XTUNER_V0_FORMATS)
_MSAGENT_API = {
    "name": "weather",
    "description": "Today's weather of a city",
    "paths": [{"parameters": [{"name": "city", "description": "the city"}]}],
}
EXAMPLES.update(
    {
        "conversation": {"conversation": [{"system": "You are terse.", "input": "Hi", "output": "Hello!"}]},
        "arxiv": {"abstract": "We show that attention is all you need.", "title": "Attention Is All You Need"},
        "code_alpaca": {"prompt": "Reverse a list in Python", "completion": "items[::-1]"},
        "colorist": {"description": "sky: a calm light blue", "color": "#87ceeb"},
        "crime_kg_assistant": {"input": "盗窃罪怎么判？", "output": "视数额而定……"},
        "law_reference": {"question": "合同何时成立？", "answer": "承诺生效时合同成立。"},
        "lawyer": {"question": "合同何时成立？", "answer": "承诺生效时合同成立。"},
        "medical": {"instruction": "头痛怎么办？", "input": "", "output": "注意休息……"},
        "msagent_react": {
            "conversations": [
                {"from": "system", "value": json.dumps(_MSAGENT_API)},
                {"from": "user", "value": "Weather in Paris?"},
                {
                    "from": "assistant",
                    "value": 'Let me check.<|startofthink|>```JSON{"api_name": "weather", "parameters": {"city": '
                    '"Paris"}}```<|endofthink|><|startofexec|>```JSON{"result": "sunny"}```<|endofexec|>It is sunny.',
                },
            ]
        },
        "open_orca": {"system_prompt": "You are helpful.", "question": "2+2?", "response": "4"},
        "sql": {"context": "CREATE TABLE t (a INT)", "question": "Count rows", "answer": "SELECT COUNT(*) FROM t"},
        "stack_exchange": {"question": "How do I exit vim?", "response": "Type :q and Enter."},
        "tiny_codes": {"prompt": "Print hello in C", "response": 'printf("hello");'},
        "wizardlm": {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]},
    }
)
