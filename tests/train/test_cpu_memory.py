"""glibc's malloc settings for CPU training. keep_freed_memory_for_reuse (full fine-tuning; LoRA keeps glibc's
defaults): large freed blocks stay in the heap for the next step instead of going back to the system, so
reallocating one does not fault its pages in again.
return_freed_blocks_over_4_mib (QLoRA): each block over 4 MiB goes back, also after glibc has seen such blocks freed
(by default it then keeps them in a heap that fragments). A user's own malloc tuning is left alone. The probes run
in their own processes: the settings are process-wide."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from xtune.train import cpu
from xtune.train.recipe import FinetuneRecipe

from .conftest import small_config

PROBE = """
import ctypes, resource, torch
# A training process has everything the recipe imports loaded; in one that imported torch alone, the block came from
# the heap with the setting but faulted every page in again each time (measured; the heap's earlier state matters).
import xtune.train.recipe
from xtune.train import cpu

class MallInfo2(ctypes.Structure):  # glibc's struct mallinfo2, all size_t
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
applied = getattr(cpu, "{setting}")() if "{setting}" else False  # "": glibc's defaults

def a_fresh_block():
    # Page faults while a block is allocated and filled, and the bytes glibc then holds in separate mappings.
    before, mapped_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, libc.mallinfo2().hblkhd
    block = torch.empty({mib} * 2**20, dtype=torch.uint8).fill_(1)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    mapped = libc.mallinfo2().hblkhd - mapped_before
    del block
    return faults, mapped

# The first few fault in while the heap grows to hold the block (measured: two or three); then the steady state
# of a training loop.
for _ in range(4):
    a_fresh_block()
steady = [a_fresh_block() for _ in range(4)]
print("PROBE", applied, sum(f for f, _ in steady), min(m for _, m in steady), max(m for _, m in steady))
"""
PAGES_IN_FOUR_BLOCKS = 4 * 64 * 2**20 // os.sysconf("SC_PAGE_SIZE")


def probe(setting: str = "keep_freed_memory_for_reuse", mib: int = 64, **env: str) -> tuple[bool, int, int, int]:
    """Four reallocations of a `mib` block after `setting`: (applied, their page faults, the fewest and the most
    bytes glibc held in separate mappings while each was alive)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    code = PROBE.replace("{setting}", setting).replace("{mib}", str(mib))
    out = subprocess.run(
        [sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    line = next(line for line in out.stdout.splitlines() if line.startswith("PROBE "))
    _, applied, faults, fewest, most = line.split()
    return applied == "True", int(faults), int(fewest), int(most)


def test_a_freed_large_block_is_reused_without_faulting_its_pages_in_again():
    applied, faults, _, mapped = probe()
    assert applied
    assert mapped < 64 * 2**20, mapped  # the block came from the heap, not from a mapping of its own
    assert faults < PAGES_IN_FOUR_BLOCKS // 100, faults


def test_the_users_own_malloc_settings_are_left_alone():
    applied, _, _, mapped = probe(MALLOC_MMAP_THRESHOLD_=str(32 * 2**20))
    assert not applied
    assert mapped >= 64 * 2**20, mapped  # glibc's behaviour, which the setting changes: a mapping of its own


def test_for_qlora_a_freed_block_over_4_mib_goes_back_every_time():
    applied, _, fewest, _ = probe("return_freed_blocks_over_4_mib", mib=6)
    assert applied
    assert fewest >= 6 * 2**20, fewest  # each block was a mapping of its own, unmapped when freed


def test_by_default_glibc_keeps_such_blocks_after_the_first():
    """What the QLoRA setting changes: after freeing a 6 MiB mapping glibc serves the next ones from its heap."""
    _, _, fewest, _ = probe("", mib=6)
    assert fewest < 6 * 2**20, fewest


@pytest.mark.parametrize(
    ("method", "setting"),
    [("full", "keep_freed_memory_for_reuse"), ("qlora", "return_freed_blocks_over_4_mib"), ("lora", None)],
)
def test_cpu_training_applies_the_methods_setting(method, setting, cache_dir, tmp_path, monkeypatch):
    calls = []
    for name in ("keep_freed_memory_for_reuse", "return_freed_blocks_over_4_mib"):
        monkeypatch.setattr(cpu, name, lambda name=name: calls.append(name) or False)
    cfg = small_config(method, cache_dir, training={"max_steps": 1}, evaluation={"inputs": []})
    recipe = FinetuneRecipe(cfg, tmp_path, device=torch.device("cpu"))
    recipe.setup()
    assert not calls  # not while loading: what loading frees goes back to the system
    recipe.train()
    assert calls == ([setting] if setting else [])  # LoRA: glibc's defaults, the leaner
