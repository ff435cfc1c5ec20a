"""keep_freed_memory_for_reuse: glibc keeps large freed blocks for the next step instead of returning them to the
system, so reallocating one does not fault its pages in again; a user's own malloc tuning is left alone. Each
case runs in its own process: the setting is process-wide."""

from __future__ import annotations

import os
import subprocess
import sys

PROBE = """
import resource, torch
from xtune.train.recipe import keep_freed_memory_for_reuse

applied = keep_freed_memory_for_reuse()

def page_faults_of_a_fresh_block():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(64 * 2**20, dtype=torch.uint8).fill_(1)  # 64 MiB: above glibc's largest default mmap threshold
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

# The first few fault in while the heap grows to hold the block (measured: two or three of them); then the steady
# state, as in a training loop.
for _ in range(4):
    page_faults_of_a_fresh_block()
print(applied, sum(page_faults_of_a_fresh_block() for _ in range(4)))
"""
PAGES_IN_FOUR_BLOCKS = 4 * 64 * 2**20 // os.sysconf("SC_PAGE_SIZE")


def probe(**env: str) -> tuple[bool, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0] == "True", int(out[1])


def test_a_freed_large_block_is_reused_without_faulting_its_pages_in_again():
    applied, faults = probe()
    assert applied
    assert faults < PAGES_IN_FOUR_BLOCKS // 100, faults


def test_the_users_own_malloc_settings_are_left_alone():
    applied, faults = probe(MALLOC_MMAP_THRESHOLD_=str(32 * 2**20))
    assert not applied
    # glibc's own behaviour, which the setting changes: each block went back to the system and faulted in anew
    assert faults > PAGES_IN_FOUR_BLOCKS // 2, faults
