"""Which device and precision a run uses, and how the CPU allocator keeps freed memory: the choices
run.py, evaluate.py, predict.py, serve.py and bench.py share (`--device`, `--precision` /
`--mixed_precision`, run.py's `--keep_freed_memory`)."""
from __future__ import annotations

import ctypes
import sys

import torch


def pick_device(name: str) -> torch.device:
    """"auto" = CUDA when present, else the CPU; asking for CUDA without it is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is available (use --device cpu)")
    return device


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4   # glibc's <malloc.h> parameter numbers


def mallopt(*settings: tuple[int, int]) -> bool:
    """Set glibc malloc parameters, (parameter, value) pairs as mallopt(3) takes them; False where the
    C library is another (musl, macOS, Windows) and there is nothing to set."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        set_one = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return all([bool(set_one(parameter, value)) for parameter, value in settings])


def keep_freed_memory(device: torch.device) -> bool:
    """On the CPU under glibc (Linux), keep memory freed by one step for the next instead of handing
    it back to the kernel; returns whether the setting was made.

    PyTorch takes CPU tensors straight from malloc, and glibc maps every block over 32 MB afresh and
    unmaps it on free, so each step's large activations were faulted in (and zero-filled) page by page
    again. Kept, a training step of widths 32..512 at 512x512 measured 1.3-2.1x and 512_96 inference
    1.5x as fast, the kernel's share of a bench run of the step fell from 10 s to 1 s, and peak
    memory rose 7-20% (bench.py, "CPU allocator"). The setting is the process's, inherited by forked
    workers, and cannot be undone in it; serve.py does the opposite (serve.release_large_buffers) to
    keep a server's memory flat. (Blocks over 64 MB asked for by other threads than the main one still
    come from mappings: PyTorch's CPU forward and backward allocate in the calling thread.)"""
    # no block from mmap, and the free top of the heap never returned (-1 reads as the largest size)
    return device.type == "cpu" and mallopt((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def native_bf16(device: torch.device) -> bool:
    """cuDNN runs bf16 convolutions natively from compute capability 8 (Ampere) on; older GPUs
    (T4, V100) accept bf16 autocast but fall to a slow emulated path."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)


def pick_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a precision name (None: plain fp32). "auto": bf16 on GPUs that run it
    natively, fp16 (with a loss scaler when training) on older GPUs, fp32 on the CPU. An explicit
    bf16 on a GPU without native bf16 is refused."""
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {name!r}")
    if name == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if native_bf16(device) else torch.float16
    if name == "bf16" and device.type == "cuda" and not native_bf16(device):
        major, minor = torch.cuda.get_device_capability(device)
        raise ValueError(f"bf16 on {torch.cuda.get_device_name(device)} (compute capability {major}.{minor}) "
                         "has no native kernels and runs every convolution on a slow path; use fp16 (or auto)")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
