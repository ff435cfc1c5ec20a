"""`xtune convert gguf`: a trained model as one GGUF file for llama.cpp, and a Modelfile for Ollama beside it."""

from __future__ import annotations

import argparse

from xtune.errors import XtuneError


def add_parser(convert: argparse._SubParsersAction) -> None:
    p = convert.add_parser(
        "gguf", help="write a model (adapters merged) as one GGUF file for llama.cpp, and an Ollama Modelfile beside it"
    )
    p.add_argument("model", help="a model directory, final/, checkpoint-N, or an adapter directory")
    p.add_argument("out", help="the .gguf file to write; the Modelfile goes into the same directory")
    p.add_argument("--type", dest="out_type", default="f16", help="f32, f16 (default), bf16 or q8_0")
    p.add_argument("--adapter", help="a PEFT adapter directory to merge into MODEL")
    p.add_argument("--template", help="chat template name; default: the one the model was trained with")
    p.add_argument("--trust-remote-code", action="store_true")
    p.set_defaults(func=cmd_convert_gguf)


def cmd_convert_gguf(args: argparse.Namespace) -> None:
    from xtune.models.gguf import export_gguf

    if not args.out.endswith(".gguf"):
        raise XtuneError(f"convert gguf OUT {args.out}: name a .gguf file, e.g. {args.out.rstrip('/')}.gguf")
    out = export_gguf(
        args.model, args.out, args.out_type, args.adapter, args.template, trust_remote_code=args.trust_remote_code
    )
    print(f"GGUF written to {out}; Ollama: cd {out.parent} && ollama create NAME -f Modelfile")
