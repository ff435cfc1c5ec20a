"""`xtune chat`: interactive streaming chat, or non-interactive answers with --prompt."""

from __future__ import annotations

import argparse
import sys

import torch
import yaml

from xtune.chat.generate import GenerationSettings
from xtune.chat.session import ChatSession
from xtune.templates import resolve_template
from xtune.train.recipe import CONFIG_FILE

HELP = "Type a message. RESET clears the history, EXIT quits."


def run_chat(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    from xtune.multimodal.chat import image_session, is_llava, load_llava_for_inference

    model, tokenizer, source = load_llava_for_inference(args.model, args.adapter, args.bits, args.trust_remote_code)
    trained = yaml.safe_load((source / CONFIG_FILE).read_text()) if (source / CONFIG_FILE).exists() else {}
    template_name = args.template or trained.get("data", {}).get("template")
    template = resolve_template(template_name, tokenizer) if template_name else None
    system = args.system
    if system is None:
        system = (trained.get("evaluation") or {}).get("system") or (trained.get("data") or {}).get("system")
    settings = GenerationSettings(
        max_new_tokens=args.max_new_tokens,
        temperature=0.0 if args.greedy else args.temperature,
        top_p=args.top_p,
        stop_words=list(args.stop_words),
    )
    images = getattr(args, "image", None) or []
    if images or is_llava(model):  # a LLaVA answers about --image (or without one, text only)
        session = image_session(model, tokenizer, template, settings, source, images, system=system)
    else:
        session = ChatSession(model, tokenizer, template, settings, system=system)

    def stream(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    if args.prompt:
        for prompt in args.prompt:
            session.ask(prompt, on_text=stream)
            sys.stdout.write("\n")
        return
    print(HELP, file=sys.stderr)
    while True:
        try:
            prompt = input("\n>>> ")
        except EOFError:
            return
        command = prompt.strip().upper()
        if command == "EXIT":
            return
        if command == "RESET":
            session.reset()
            print("(history cleared)", file=sys.stderr)
            continue
        if prompt.strip():
            session.ask(prompt, on_text=stream)
            sys.stdout.write("\n")
