"""keep_freed_memory_for_reuse: glibc keeps large freed blocks in its heap for the next step instead of returning
them to the system, so reallocating one does not fault its pages in again; a user's own malloc tuning is left alone;
CPU training applies it, except QLoRA's. The probes run in their own processes: the setting is process-wide."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from xtune.train import recipe as recipe_module

from .conftest import small_config

PROBE = """
import ctypes, resource, torch
from xtune.train.recipe import keep_freed_memory_for_reuse

class MallInfo2(ctypes.Structure):  # glibc's struct mallinfo2, all size_t
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
applied = keep_freed_memory_for_reuse()

def a_fresh_block():
    # Page faults while a 64 MiB block (above glibc's largest default mmap threshold) is allocated and filled, and
    # the bytes glibc then holds in separate mappings.
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = torch.empty(64 * 2**20, dtype=torch.uint8).fill_(1)
    faults, mapped = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, libc.mallinfo2().hblkhd
    del block
    return faults, mapped

# The first few fault in while the heap grows to hold the block (measured: two or three); then the steady state
# of a training loop.
for _ in range(4):
    a_fresh_block()
steady = [a_fresh_block() for _ in range(4)]
print("PROBE", applied, sum(f for f, _ in steady), max(m for _, m in steady))
"""
PAGES_IN_FOUR_BLOCKS = 4 * 64 * 2**20 // os.sysconf("SC_PAGE_SIZE")


def probe(**env: str) -> tuple[bool, int, int]:
    """(applied, page faults of 4 reallocations, the most bytes glibc held in separate mappings meanwhile)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    line = next(line for line in out.stdout.splitlines() if line.startswith("PROBE "))
    _, applied, faults, mapped = line.split()
    return applied == "True", int(faults), int(mapped)


def test_a_freed_large_block_is_reused_without_faulting_its_pages_in_again():
    applied, faults, mapped = probe()
    assert applied
    assert mapped < 64 * 2**20, mapped  # the block came from the heap, not from a mapping of its own
    assert faults < PAGES_IN_FOUR_BLOCKS // 100, faults


def test_the_users_own_malloc_settings_are_left_alone():
    applied, _, mapped = probe(MALLOC_MMAP_THRESHOLD_=str(32 * 2**20))
    assert not applied
    assert mapped >= 64 * 2**20, mapped  # glibc's behaviour, which the setting changes: a mapping of its own


@pytest.mark.parametrize(("method", "applied"), [("lora", True), ("qlora", False)])
def test_cpu_training_applies_it_except_for_qlora(method, applied, cache_dir, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(recipe_module, "keep_freed_memory_for_reuse", lambda: calls.append(1) or False)
    cfg = small_config(method, cache_dir, training={"max_steps": 1}, evaluation={"inputs": []})
    recipe = recipe_module.FinetuneRecipe(cfg, tmp_path, device=torch.device("cpu"))
    recipe.setup()
    assert not calls  # not while loading: what loading frees goes back to the system
    recipe.train()
    assert calls == ([1] if applied else [])
