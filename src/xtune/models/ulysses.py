"""Ulysses sequence parallelism (as DeepSpeed-Ulysses): attention over rows whose tokens are split across the N ranks
of a group.

Each rank holds 1/N of every row's tokens (xtune.train.sequence_parallel cuts them). Everything in a decoder but
attention works token by token, so it runs on the shard as it is (rotary embeddings with the shard's own position
ids). Attention needs the whole row: an all-to-all trades the sequence shards of all heads for all tokens of 1/N of
the heads, the model's own attention function (SDPA, eager, flash-attention) runs on whole rows, and a second
all-to-all trades back. It is an attention function registered with transformers' attention interface, so every
family that attends through that interface is covered, with no model class patched.

The mask is rebuilt for whole rows from the position ids of all shards, gathered once per forward (the rule is
transformers' own: a sample starts wherever the position does not go up by one), so packed samples stay apart.
"""

from __future__ import annotations

import math
import sys

import torch
import torch.distributed as dist
from transformers import AttentionInterface, PreTrainedConfig
from transformers.integrations.sdpa_attention import repeat_kv
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama import modeling_llama

from xtune.errors import ConfigError

PREFIX = "xtune_ulysses_"


def all_to_all(x: torch.Tensor, group: dist.ProcessGroup, scatter_dim: int, gather_dim: int) -> torch.Tensor:
    """Split `x` into N pieces along `scatter_dim`, send piece j to rank j of `group`, and join the pieces received
    along `gather_dim`; differentiable (its gradient is the exchange back)."""
    return _AllToAll.apply(x, group, scatter_dim, gather_dim)


def _exchange(x: torch.Tensor, group: dist.ProcessGroup, scatter_dim: int, gather_dim: int) -> torch.Tensor:
    send = torch.stack(x.chunk(dist.get_world_size(group), dim=scatter_dim))
    received = torch.empty_like(send)
    dist.all_to_all_single(received, send, group=group)
    return torch.cat(received.unbind(0), dim=gather_dim)


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, scatter_dim, gather_dim):
        ctx.group, ctx.dims = group, (scatter_dim, gather_dim)
        return _exchange(x, group, scatter_dim, gather_dim)

    @staticmethod
    def backward(ctx, grad):
        scatter_dim, gather_dim = ctx.dims
        return _exchange(grad, ctx.group, gather_dim, scatter_dim), None, None, None


class _Regrouped:
    """The attention layer as the inner attention function sees it once the key heads were repeated for the
    exchange: fewer queries per key head, everything else the layer's own."""

    def __init__(self, module: torch.nn.Module, groups: int):
        self._module, self.num_key_value_groups = module, groups

    def __getattr__(self, name: str):
        return getattr(self._module, name)


class UlyssesAttention:
    """transformers' attention-function signature around `inner` (the implementation the model had). Shards in,
    shards out: query (batch, heads, length / N, head_dim), output (batch, length / N, heads, head_dim). An attention
    layer in eval mode (generation, evaluation: the whole prompt on one rank) attends alone through `inner`."""

    def __init__(self, group: dist.ProcessGroup, inner_name: str):
        self.group, self.inner_name = group, inner_name
        self.size = dist.get_world_size(group)
        self._rows: tuple | None = None  # (the shard's position ids, the whole rows', masks by kind): one forward's

    def __call__(self, module, query, key, value, attention_mask, **kwargs):
        inner = self._inner(module)
        if not module.training:
            return inner(module, query, key, value, attention_mask, **kwargs)
        positions = kwargs.pop("position_ids", None)
        if positions is None:
            raise RuntimeError(f"sequence parallelism: {type(module).__name__} does not pass position_ids to attention")
        heads, kv_heads = query.shape[1], key.shape[1]
        if heads % self.size:
            raise ConfigError(
                f"training.sequence_parallel {self.size}: the model's {heads} attention heads do not split into "
                f"{self.size} equal parts; choose a sequence_parallel that divides {heads}"
            )
        # Key heads are repeated until they split evenly too: lcm(kv_heads, N) divides heads, as both do.
        repeats = math.lcm(kv_heads, self.size) // kv_heads
        if repeats > 1:
            key, value = repeat_kv(key, repeats), repeat_kv(value, repeats)
            module = _Regrouped(module, heads // (kv_heads * repeats))
        query, key, value = (all_to_all(t, self.group, 1, 2) for t in (query, key, value))
        whole_positions, mask = self._whole_rows(positions, query)
        if self.inner_name.startswith("flash"):  # varlen boundaries from the whole rows' position ids
            kwargs["position_ids"] = whole_positions
        out, _ = inner(module, query, key, value, mask, **kwargs)
        return all_to_all(out, self.group, 1, 2), None

    def _inner(self, module: torch.nn.Module):
        if self.inner_name == "eager":  # the family's own eager function (softcapping and the like), else Llama's
            family = sys.modules.get(type(module).__module__)
            return getattr(family, "eager_attention_forward", modeling_llama.eager_attention_forward)
        return ALL_ATTENTION_FUNCTIONS[self.inner_name]

    def _whole_rows(self, positions: torch.Tensor, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The whole rows' position ids and the mask `inner` takes for them; gathered and built by the first layer,
        reused by the others and by their recomputation under gradient checkpointing (the same position ids)."""
        if self._rows is None or self._rows[0] is not positions:
            shards = [torch.empty_like(positions) for _ in range(self.size)]
            dist.all_gather(shards, positions.contiguous(), group=self.group)
            self._rows = (positions, torch.cat(shards, dim=1), {})
        _, whole, masks = self._rows
        kind = (self.inner_name, query.dtype)
        if self.inner_name.startswith("flash"):
            return whole, None
        if kind not in masks:
            rows = whole.expand(query.shape[0], -1)
            masks[kind] = whole_row_mask(rows, eager=self.inner_name == "eager", dtype=query.dtype)
        return whole, masks[kind]


def whole_row_mask(positions: torch.Tensor, eager: bool, dtype: torch.dtype) -> torch.Tensor | None:
    """Causal within each sample, nothing across samples, for rows of (batch, length) position ids: SDPA's boolean
    (batch, 1, length, length) mask, None where every row is one sample (SDPA is then causal by itself); eager's
    additive float mask always."""
    first = positions[:, :1] - 1
    sample = (torch.diff(positions, prepend=first, dim=-1) != 1).cumsum(-1)
    if not eager and bool((sample[:, -1] == 0).all()):
        return None
    index = torch.arange(positions.shape[1], device=positions.device)
    allowed = (sample[:, :, None] == sample[:, None, :]) & (index[:, None] >= index[None, :])
    allowed = allowed[:, None]
    if not eager:
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=positions.device).masked_fill(
        ~allowed, torch.finfo(dtype).min
    )


def use_ulysses_attention(config: PreTrainedConfig, group: dist.ProcessGroup) -> None:
    """Make the decoder of this config attend across the ranks of `group` around the attention implementation it
    has (SDPA, eager, flash-attention, xtune's chunks). A runtime choice only, as models/attention.py's."""
    inner = config._attn_implementation or "eager"
    if inner.startswith(PREFIX):
        return
    name = f"{PREFIX}{inner}"
    AttentionInterface.register(name, UlyssesAttention(group, inner))
    # The mask the model builds is the inner implementation's: used as it is in eval mode, ignored in training.
    if inner in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        ALL_MASK_ATTENTION_FUNCTIONS.register(name, ALL_MASK_ATTENTION_FUNCTIONS[inner])
    config._attn_implementation = name
