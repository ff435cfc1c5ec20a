"""Check an xtune GGUF in llama.cpp itself (llama-cpp-python), not only in transformers' GGUF reader: llama.cpp's
logits on the f32 file equal the Hugging Face model's (< 1e-3), greedy generation gives the same tokens, and
llama.cpp stops at the template's end of turn. Not part of the test command: llama-cpp-python builds from source
(about 20 minutes on 2 cores); scripts/check_llama_cpp.sh installs it and runs this.

    python scripts/check_llama_cpp.py [--layers 2] [--work /tmp/xtune-llama-cpp]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from llama_cpp import Llama
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from xtune.assets import resolve_path
from xtune.models.gguf import export_gguf
from xtune.templates import get_template


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--work", default=None)
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="xtune-llama-cpp-"))

    # a random tiny Llama with sharp attention (Q/K scaled), so that a wrong rotary layout shows in the logits
    tiny = resolve_path("builtin:tiny-llama")
    config = AutoConfig.from_pretrained(tiny)
    config.num_hidden_layers = args.layers
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(20)
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    tokenizer.chat_template = get_template("qwen_chat").to_jinja()
    model.save_pretrained(work / "model")
    tokenizer.save_pretrained(work / "model")
    (work / "model" / "xtune_config.yaml").write_text("data:\n  template: qwen_chat\n")
    gguf_path = export_gguf(str(work / "model"), work / "model.gguf", "f32")

    prompt = "<|im_start|>user\n请介绍一下你自己<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizer(prompt, add_special_tokens=False).input_ids
    # an f32 KV cache (the default is f16, whose rounding of K and V the comparison would measure instead)
    llm = Llama(model_path=str(gguf_path), n_ctx=256, logits_all=True, n_threads=2, verbose=False, type_k=0, type_v=0)
    llama_ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    print(f"tokenization: llama.cpp {'matches' if llama_ids == ids else 'DIFFERS from'} transformers ({len(ids)} ids)")

    llm.eval(ids)
    llama_logits = np.asarray(llm.scores[: len(ids)])
    with torch.no_grad():
        hf_logits = model(input_ids=torch.tensor([ids])).logits[0].numpy()
    diff = float(np.abs(llama_logits - hf_logits).max())
    print(f"logits: max |llama.cpp - transformers| = {diff:.2e} over {len(ids)} positions (bound 1e-3)")

    new = 24
    with torch.no_grad():
        hf_greedy = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=new)[0, len(ids) :].tolist()
    llm.reset()
    llama_greedy = []
    for token in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0):
        llama_greedy.append(token)
        if len(llama_greedy) == new:
            break
    same = llama_greedy[: len(hf_greedy)] == hf_greedy  # transformers stops at EOS, llama.cpp's generate() does not
    print(f"greedy: {'same' if same else 'DIFFERENT'} tokens: {llama_greedy} vs {hf_greedy}")
    print(f"EOS in the file: {llm.token_eos()} (<|im_end|> is {tokenizer.convert_tokens_to_ids('<|im_end|>')})")
    ok = diff < 1e-3 and same and llama_ids == ids and llm.token_eos() == tokenizer.convert_tokens_to_ids("<|im_end|>")
    print("OK" if ok else "FAILED")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
