"""The chunked causal attention used in compiled CPU training: it computes what SDPA computes under the same
masks (packed samples, plain causal, grouped key heads, lengths the chunks do not divide), gradients included;
in bf16 it is about as precise as transformers' eager attention; outside compiled code it is SDPA itself."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.models.llama.modeling_llama import eager_attention_forward

from xtune.assets import resolve_path
from xtune.models.attention import NAME, causal_chunked_attention, use_causal_chunked_attention


class Attention(torch.nn.Module):
    """What transformers' attention functions read off the attention layer calling them."""

    def __init__(self, groups: int = 1):
        super().__init__()
        self.is_causal, self.num_key_value_groups = True, groups


def packed_mask(lengths: list[int], batch: int) -> torch.Tensor:
    """SDPA's boolean mask for samples packed end to end in each row: causal within a sample, nothing across."""
    sample = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])
    position = torch.cat([torch.arange(n) for n in lengths])
    allowed = (sample[:, None] == sample[None, :]) & (position[:, None] >= position[None, :])
    return allowed[None, None].expand(batch, 1, -1, -1)


def attention_inputs(length: int, heads: int, kv_heads: int, dtype=torch.float32, query_scale: float = 1.0):
    torch.manual_seed(0)
    query = torch.randn(2, heads, length, 16) * query_scale
    key, value = torch.randn(2, kv_heads, length, 16), torch.randn(2, kv_heads, length, 16)
    grad_out = torch.randn(2, length, heads, 16)
    return [t.to(dtype).requires_grad_() for t in (query, key, value)], grad_out.to(dtype)


def reference(query, key, value, mask):
    """SDPA on (batch, heads, length, dim), keys repeated for grouped heads; (batch, length, heads, dim)."""
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, is_causal=mask is None)
    return out.transpose(1, 2)


def forward_backward(fn, inputs, grad_out, *args):
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*inputs, *args)
    out.backward(grad_out)
    return out.detach(), [t.grad for t in inputs]


def chunks(query, key, value, mask):
    groups = query.shape[1] // key.shape[1]
    return causal_chunked_attention(Attention(groups), query, key, value, mask)[0]


compiled_chunks = torch.compile(chunks)


def test_chunks_compute_what_sdpa_computes():
    """One compiled function through every case in turn, as training reuses one graph for every length: from
    the second length on it is compiled with the length symbolic, where an earlier chunking went wrong."""

    @torch.compile
    def compiled(query, key, value, mask):
        return chunks(query, key, value, mask)

    cases = [  # (sample lengths packed in each row, or None: causal without a mask; heads; key heads)
        ([20, 13, 17], 4, 4),
        ([50], 4, 2),
        (None, 4, 1),
        ([7, 3], 2, 2),  # 10: a length the chunks do not divide
        ([2, 1], 4, 2),  # shorter than the chunk count: SDPA itself
    ]
    for lengths, heads, kv_heads in cases:
        length = sum(lengths) if lengths else 37
        mask = packed_mask(lengths, 2) if lengths else None
        inputs, grad_out = attention_inputs(length, heads, kv_heads)

        want, want_grads = forward_backward(reference, inputs, grad_out, mask)
        have, have_grads = forward_backward(compiled, inputs, grad_out, mask)

        torch.testing.assert_close(have, want, rtol=1e-5, atol=1e-5)
        for have_grad, want_grad in zip(have_grads, want_grads, strict=True):
            torch.testing.assert_close(have_grad, want_grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("query_scale", [1.0, 4.0])  # 4: attention logits of a few units, a peaked softmax
def test_bf16_rounds_where_transformers_eager_attention_does(query_scale):
    """In bf16 the scores leave the matmul rounded, as in transformers' eager attention (torch's fused kernel
    keeps them in fp32, so its error is lower): against an fp32 reference, as precise as eager within a quarter."""
    mask = packed_mask([40, 24], 2)
    inputs, grad_out = attention_inputs(64, 4, 4, torch.bfloat16, query_scale)
    additive_mask = torch.zeros(mask.shape, dtype=torch.bfloat16).masked_fill(~mask, torch.finfo(torch.bfloat16).min)

    def eager(query, key, value):
        return eager_attention_forward(Attention().eval(), query, key, value, additive_mask, scaling=16**-0.5)[0]

    exact_inputs = [t.detach().float() for t in inputs]
    exact, exact_grads = forward_backward(reference, exact_inputs, grad_out.float(), mask)
    eager_out, eager_grads = forward_backward(eager, inputs, grad_out)
    chunk_out, chunk_grads = forward_backward(compiled_chunks, inputs, grad_out, mask)

    def error(have, want):
        return float((have.float() - want).norm() / want.norm())

    assert error(chunk_out, exact) <= 1.25 * error(eager_out, exact)
    for chunk_grad, eager_grad, exact_grad in zip(chunk_grads, eager_grads, exact_grads, strict=True):
        assert error(chunk_grad, exact_grad) <= 1.25 * error(eager_grad, exact_grad)


def test_outside_compiled_code_it_is_sdpa():
    (query, key, value), _ = attention_inputs(24, 4, 2)
    mask = packed_mask([10, 14], 2)
    have = chunks(query, key, value, mask)
    torch.testing.assert_close(have, reference(query, key, value, mask), rtol=0, atol=0)


def test_switching_a_model_leaves_its_saved_config_alone(tmp_path):
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(resolve_path("builtin:tiny-llama")))
    model.config._attn_implementation = "sdpa"
    assert use_causal_chunked_attention(model.get_decoder().config)
    assert model.config._attn_implementation == NAME
    model.save_pretrained(tmp_path)
    assert NAME not in (tmp_path / "config.json").read_text()
    assert "attn_implementation" not in json.loads((tmp_path / "config.json").read_text())

    model.config._attn_implementation = "eager"  # an explicit choice other than SDPA is kept
    assert not use_causal_chunked_attention(model.config)
    assert model.config._attn_implementation == "eager"
