"""Training on CPU: glibc's allocator settings and when bf16 autocast pays off. Process-wide tuning that has nothing
to do with the loop's logic, kept apart so the recipe reads as the loop alone."""

from __future__ import annotations

import contextlib
import ctypes
import os

import torch


def cpu_has_fast_bf16() -> bool:
    """AMX or AVX512-BF16: bf16 matmuls several times faster than fp32 (5x measured on a Xeon with AMX)."""
    try:
        return torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    except AttributeError:  # private helpers; absent on other builds
        return False


def autocast_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """bf16 on a GPU that has it, and on CPUs with AMX/AVX512-BF16, where it is faster than fp32; None: fp32."""
    if mode == "auto":
        on_gpu = device.type == "cuda" and torch.cuda.is_bf16_supported()
        on_cpu = device.type == "cpu" and cpu_has_fast_bf16()
        mode = "bf16" if on_gpu or on_cpu else "fp32"
    return torch.bfloat16 if mode == "bf16" else None


def autocast_context(mode: str, device: torch.device) -> contextlib.AbstractContextManager:
    dtype = autocast_dtype(mode, device)
    return torch.autocast(device_type=device.type, dtype=dtype) if dtype else contextlib.nullcontext()


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h


def tune_malloc_for(method: str) -> str | None:
    """Apply the glibc setting that suits training with `method` on CPU; what it does, for the log, or None where
    it was left alone. Call once loading is done: what loading frees (a checkpoint's fp32 tensors that a dtype cast
    replaced) should go back to the system, not stay in the heap.

    Full fine-tuning keeps freed blocks for reuse (1.06x per step; its memory is mostly weights, gradients and
    optimizer state, the heap's free blocks a small share). LoRA keeps glibc's defaults: there the free blocks are
    the large share (a step's logits come in a new size each step, and the kept blocks fragment): on a 32k-vocabulary
    model the peak RSS was 1.71 GiB kept, 1.22 GiB with glibc's defaults (docs/benchmarks.md)."""
    if method == "qlora":  # chosen for memory
        applied, what = return_freed_blocks_over_4_mib(), "returns freed blocks over 4 MiB to the system"
    elif method == "full":
        applied, what = keep_freed_memory_for_reuse(), "keeps freed blocks up to 1 GiB for reuse"
    else:
        return None
    return what if applied else None


def keep_freed_memory_for_reuse() -> bool:
    """Have glibc keep freed blocks of up to 1 GiB in its heap instead of returning each one over 32 MiB to the
    system. Training on CPU frees and reallocates the same large blocks every step (logits, the embedding's and
    the head's gradients); returned, each comes back as a fresh mapping whose pages fault in on first touch (a
    1280 x 32000 fp32 tensor: 41 ms to allocate and fill, 10 ms reused). 1.06x per step on the medium full
    fine-tune (docs/benchmarks.md). True when applied (see set_glibc_malloc)."""
    return set_glibc_malloc({M_MMAP_THRESHOLD: 1 << 30, M_TRIM_THRESHOLD: 2**31 - 1})


def return_freed_blocks_over_4_mib() -> bool:
    """Have glibc return every freed block over 4 MiB to the system, memory before speed, for QLoRA, which is
    chosen for memory. By default glibc raises its mmap threshold to the size of each large block freed (up to
    32 MiB), so the 4-32 MiB blocks of a step (dequantized weights, MLP activations) end up in a heap that
    fragments: on a 1.1B model the training peak was 3.21 GiB with the default, 2.49 GiB with this, 1.97 GiB with
    live tensors only, at 1.18x the step time (docs/benchmarks.md). True when applied (see set_glibc_malloc)."""
    # glibc's default trim threshold, in case an earlier run in this process raised it
    return set_glibc_malloc({M_MMAP_THRESHOLD: 4 << 20, M_TRIM_THRESHOLD: 128 << 10})


def set_glibc_malloc(settings: dict[int, int]) -> bool:
    """`mallopt` each (parameter, value). Process-wide, and left alone where the user tunes the allocator (any
    MALLOC_* variable, glibc malloc tunables) or the C library is not glibc; True when applied."""
    user_tuned = any(k.startswith("MALLOC_") for k in os.environ) or "malloc" in os.environ.get("GLIBC_TUNABLES", "")
    if user_tuned or not _glibc():
        return False
    libc = ctypes.CDLL(None)
    return all(libc.mallopt(parameter, value) for parameter, value in settings.items())


def _glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (ValueError, OSError, AttributeError):  # not Linux, or not glibc
        return False
