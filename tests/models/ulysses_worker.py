"""Run by test_ulysses.py under torchrun with 4 processes: Ulysses attention over groups of 2 and of 4 ranks against
full attention on whole rows in one process, forward and gradients. Rank 0 writes {case: largest difference}."""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM

from xtune.assets import resolve_path
from xtune.models.ulysses import UlyssesAttention, use_ulysses_attention

LENGTH = 24
PACKED = [7, 5, 9, 3]  # samples of one packed row (24 tokens)


class Attention(torch.nn.Module):
    """What transformers' attention functions read off the attention layer calling them."""

    def __init__(self, groups: int):
        super().__init__()
        self.is_causal, self.num_key_value_groups = True, groups


def positions(packed: bool, batch: int) -> torch.Tensor:
    row = torch.cat([torch.arange(n) for n in PACKED]) if packed else torch.arange(LENGTH)
    return row.expand(batch, -1).clone()


def reference_attention(query, key, value, position_ids):
    """SDPA on whole rows, keys repeated for grouped heads, samples kept apart by an independently built mask."""
    sample = (position_ids == 0).cumsum(-1)
    allowed = (sample[:, :, None] == sample[:, None, :]) & torch.ones(LENGTH, LENGTH, dtype=torch.bool).tril()
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=allowed[:, None])
    return out.transpose(1, 2)


def shard(t: torch.Tensor, dim: int, rank: int, size: int) -> torch.Tensor:
    return t.chunk(size, dim=dim)[rank]


def attention_case(group, rank, size, inner, heads, kv_heads, packed):
    torch.manual_seed(heads * 100 + kv_heads * 10 + packed)
    batch = 1 if packed else 2
    query = torch.randn(batch, heads, LENGTH, 8, requires_grad=True)
    key = torch.randn(batch, kv_heads, LENGTH, 8, requires_grad=True)
    value = torch.randn(batch, kv_heads, LENGTH, 8, requires_grad=True)
    grad_out = torch.randn(batch, LENGTH, heads, 8)
    position_ids = positions(packed, batch)
    expected = reference_attention(query, key, value, position_ids)
    expected.backward(grad_out)

    local = [shard(t.detach(), 2, rank, size).requires_grad_() for t in (query, key, value)]
    attention = UlyssesAttention(group, inner)
    local_positions = shard(position_ids, 1, rank, size)
    out, _ = attention(Attention(heads // kv_heads), *local, None, scaling=8**-0.5, position_ids=local_positions)
    out.backward(shard(grad_out, 1, rank, size))
    diffs = [(out.detach() - shard(expected, 1, rank, size)).abs().max()]
    diffs += [
        (t.grad - shard(full.grad, 2, rank, size)).abs().max()
        for t, full in zip(local, (query, key, value), strict=True)
    ]
    return max(float(d) for d in diffs)


def model_case(group, rank, size, inner):
    """A two-layer Llama with 4 query and 1 key head: the logits of each shard and the parameter gradients summed over
    the group equal those of the whole packed row in one process."""
    config = AutoConfig.from_pretrained(resolve_path("builtin:tiny-llama"))
    config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads = 2, 4, 1
    config.head_dim = config.hidden_size // 4
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation=inner).train()
    input_ids = torch.randint(0, config.vocab_size, (1, LENGTH))
    position_ids = positions(True, 1)
    weights = torch.randn(1, LENGTH, config.vocab_size)
    expected = model(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits
    (expected * weights).sum().backward()
    full_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    use_ulysses_attention(model.config, group)
    local_ids, local_positions = shard(input_ids, 1, rank, size), shard(position_ids, 1, rank, size)
    logits = model(input_ids=local_ids, position_ids=local_positions, use_cache=False).logits
    (logits * shard(weights, 1, rank, size)).sum().backward()
    diffs = [(logits.detach() - shard(expected, 1, rank, size)).abs().max()]
    for p, full in zip(model.parameters(), full_grads, strict=True):
        dist.all_reduce(p.grad, group=group)
        diffs.append((p.grad - full).abs().max() / full.abs().max())  # relative: summed gradients reach ~100
    return max(float(d) for d in diffs)


def main(out_path: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    groups = {2: [dist.new_group([0, 1]), dist.new_group([2, 3])], 4: [dist.new_group([0, 1, 2, 3])]}
    results = {}
    for size, group_list in groups.items():
        group, group_rank = group_list[rank // size], rank % size
        for inner in ("sdpa", "eager"):
            for heads, kv_heads, packed in [(8, 8, False), (8, 2, False), (8, 1, True), (4, 4, True)]:
                diff = attention_case(group, group_rank, size, inner, heads, kv_heads, packed)
                results[f"sp{size} {inner} heads={heads} kv={kv_heads} packed={packed}"] = diff
            results[f"sp{size} {inner} llama packed"] = model_case(group, group_rank, size, inner)
    gathered = [None] * world
    dist.all_gather_object(gathered, results)
    if rank == 0:
        worst = {case: max(r[case] for r in gathered) for case in results}
        with open(out_path, "w") as f:
            json.dump(worst, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
