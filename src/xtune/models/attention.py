"""Causal attention in query chunks: xtune's attention for compiled training on CPU.

torch's CPU flash-attention kernel computes every query-key block whatever the mask, so a causal (or packed,
block-diagonal) mask saves it nothing. Here the queries are split into a fixed number of chunks and each chunk
is scored only against the keys up to its own end: 10 of 16 blocks for 4 chunks. The chunks are plain matmuls
and a softmax, which torch.compile fuses into the decoder layer; on CPU the forward and backward together take
0.7x the flash kernel's time (docs/benchmarks.md). Everywhere else (eager, generation with a cache, GPUs,
dropout) it is transformers' SDPA, whose mask it shares.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface, PreTrainedConfig
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

NAME = "xtune_causal_chunks"
CHUNKS = 4  # a fixed count, not a fixed size: the loop does not depend on the sequence length (one compilation)


def causal_chunked_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: query (batch, heads, length, head_dim), key and value with
    their own head count, `attention_mask` SDPA's boolean (batch, 1, length, length) or None for plain causal.
    Returns (batch, length, heads, head_dim)."""
    length = query.shape[2]
    chunkable = (
        torch.compiler.is_compiling()  # eager, the chunks' separate kernels are no faster than flash
        and query.device.type == "cpu"
        and key.shape[2] == length  # no cache: training and a prompt's forward
        and length >= CHUNKS  # no empty chunk (whose key gradient inductor got wrong too, as below)
        and not dropout
        and is_causal is not False
        and getattr(module, "is_causal", True)
        and kwargs.get("softcap") is None
    )
    if not chunkable:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    groups = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    positions = torch.arange(length, device=query.device)
    outputs = []
    for i in range(CHUNKS):
        # Chunks of length * i // CHUNKS: never past the end. With the length symbolic (one compiled graph for
        # all lengths), a last chunk of ceil(length / CHUNKS) cut short by the end (slicing clamps) got a key
        # gradient of garbage from inductor (torch 2.13; tests/models/test_attention.py).
        start, end = i * length // CHUNKS, (i + 1) * length // CHUNKS
        scores = torch.matmul(query[:, :, start:end], key[:, :, :end].transpose(2, 3)).float() * scaling
        if attention_mask is None:
            allowed = positions[start:end, None] >= positions[None, :end]
        else:
            allowed = attention_mask[:, :, start:end, :end]
        # The float minimum, not -inf: a query that may see nothing gets a uniform row rather than NaNs.
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        probs = torch.softmax(scores, dim=-1).to(value.dtype)
        outputs.append(torch.matmul(probs, value[:, :, :end]))
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None


def use_causal_chunked_attention(config: PreTrainedConfig) -> bool:
    """Switch the decoder of this config from SDPA to the chunked attention (the same mask; the same results
    within bf16 rounding); True when switched. A runtime choice only: config.json is written without it."""
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    AttentionInterface.register(NAME, causal_chunked_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    config._attn_implementation = NAME
    return True
