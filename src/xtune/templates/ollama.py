"""An Ollama `Modelfile` for an exported GGUF: the chat format xtune trained with, in Ollama's Go-template syntax.

Ollama renders `.Messages` (the system prompt it adds from SYSTEM arrives as a system message), so the template
walks the messages as ChatTemplate.render does. No `{{-` trim markers: they would also eat the newlines that
formats such as ChatML put after each turn. Tool calls are left to the GGUF's embedded jinja template.
"""

from __future__ import annotations

import json

from transformers import PreTrainedTokenizerBase

from xtune.templates.base import Template
from xtune.templates.chat import ChatTemplate


def modelfile(gguf_name: str, template: Template, tokenizer: PreTrainedTokenizerBase, system: str | None) -> str:
    """The Modelfile that `ollama create NAME -f Modelfile` reads next to the GGUF file."""
    bos, eos = tokenizer.bos_token or "", tokenizer.eos_token or ""
    lines = [f"FROM ./{gguf_name}", ""]
    if isinstance(template, ChatTemplate):
        lines += ['TEMPLATE """' + go_template(template, bos, eos) + '"""', ""]
        system = system if system is not None else template.default_system
    else:  # a tokenizer's own jinja: Ollama reads the GGUF's chat template, which is that jinja
        lines += ["# TEMPLATE: Ollama picks it from the chat template embedded in the GGUF file", ""]
    if system:
        lines += ['SYSTEM """' + system + '"""', ""]
    lines += [f"PARAMETER stop {json.dumps(word)}" for word in template.stop_words_for(eos)]
    return "\n".join(lines) + "\n"


def go_template(t: ChatTemplate, bos: str, eos: str) -> str:
    """ChatTemplate `t` (without tools) as an Ollama TEMPLATE."""

    def fill(fmt: str, content: str = "") -> str:
        return fmt.replace("{bos}", bos).replace("{eos}", eos).replace("{content}", content)

    out = [fill(t.prefix)]
    if t.merge_system:  # the system text opens the first user message
        out.append('{{ $system := "" }}')
    out.append("{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}")
    if t.merge_system:
        pending = "{{ if $system }}" + fill(t.system, "{{ $system }}") + "{{ end }}{{ .Content }}"
        out.append('{{ if eq .Role "system" }}{{ $system = .Content }}')
        out.append('{{ else if eq .Role "user" }}' + fill(t.user, pending) + '{{ $system = "" }}')
    else:
        out.append('{{ if eq .Role "system" }}' + fill(t.system, "{{ .Content }}"))
        out.append('{{ else if eq .Role "user" }}' + fill(t.user, "{{ .Content }}"))
    header = fill(t.assistant_prefix)
    if t.history_assistant_prefix is not None:
        header = "{{ if $last }}" + header + "{{ else }}" + fill(t.history_assistant_prefix) + "{{ end }}"
    end = fill(t.assistant_suffix + t.turn_separator)
    out.append(
        '{{ else if eq .Role "assistant" }}' + header + fill(t.reply_prefix) + "{{ .Content }}"
        "{{ if not $last }}" + end + "{{ end }}"
    )
    out.append('{{ end }}{{ if and $last (ne .Role "assistant") }}' + fill(t.assistant_prefix) + "{{ end }}{{ end }}")
    return "".join(out)
