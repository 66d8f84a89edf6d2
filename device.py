"""Which device, precision and processes a run uses, and how the CPU allocator keeps freed memory: the
choices run.py, evaluate.py, predict.py, serve.py and bench.py share (`--device`, `--precision` /
`--mixed_precision`, run.py's `--keep_freed_memory`), and run.py's processes under torchrun (`setup`,
`Dist`, the sums over processes, the stop signal)."""
from __future__ import annotations

import ctypes
import datetime
import logging
import os
import signal
import sys
import typing

import torch
import torch.distributed as dist
from tqdm import tqdm

log = logging.getLogger("run")


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


# the autocast dtype of each precision (None: plain fp32), and the names --precision takes
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
PRECISIONS = ("auto", *AUTOCAST_DTYPES)


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
    return AUTOCAST_DTYPES[name]


# ---- processes and signals ---------------------------------------------------------------------

class Dist(typing.NamedTuple):
    """This process's place in a torchrun job (rank 0 of 1 for plain `python run.py`)."""
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device_name: str, keep_memory: bool) -> tuple[Dist, torch.device]:
    """The training device (--device; keep_memory: device.keep_freed_memory on the CPU), and the torchrun
    process group when there is one (NCCL on CUDA, Gloo on the CPU)."""
    device = pick_device(device_name)
    if keep_memory and keep_freed_memory(device):
        log.info("CPU: memory a step frees is kept for the next (--keep_freed_memory)")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True            # fixed input sizes: pick the fastest convolutions
        torch.set_float32_matmul_precision("high")       # TF32 for what runs in fp32
    world = int(os.environ.get("WORLD_SIZE", "1"))   # set by torchrun
    if world == 1:
        return Dist(), device
    if device.type == "cuda":
        device = torch.device(f"cuda:{os.environ['LOCAL_RANK']}")
        torch.cuda.set_device(device)
    # rank 0 alone writes (and fsyncs) checkpoints of up to ~1.7 GB while the others wait
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(minutes=30))
    return Dist(dist.get_rank(), world), device


def on_rank0(fn: typing.Callable[[], typing.Any], d: Dist, device: torch.device):
    """fn() on rank 0 (checkpoints, logs), its failure made every process's: the others would
    otherwise wait for rank 0 in the next collective until the watchdog kills them. Returns fn's
    result on rank 0, None on the others."""
    result, error = None, None
    if d.main:
        try:
            result = fn()
        except Exception as e:   # noqa: BLE001  (re-raised below, on every rank)
            error = e
    if d.world > 1 and bool(all_sum(torch.tensor([error is not None], device=device, dtype=torch.int32), d).item()):
        if error is None:
            raise SystemExit(f"rank {d.rank}: rank 0 failed writing its outputs (see its error); stopping")
    if error is not None:
        raise error
    return result


def all_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    """t summed over the processes, in place (t itself in a single process)."""
    if d.world > 1:
        dist.all_reduce(t)
    return t


def all_min(value: int, d: Dist, device: torch.device) -> int:
    """The smallest of the processes' values."""
    if d.world == 1:
        return value
    t = torch.tensor([value], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def share_weights(model: torch.nn.Module, d: Dist) -> None:
    """Every process starts from rank 0's weights and buffers."""
    if d.world > 1:
        for t in model.state_dict().values():
            dist.broadcast(t, 0)


def sum_gradients(params: list[torch.nn.Parameter], d: Dist) -> None:
    """Each parameter's gradient summed over the processes, in one exchange per optimizer step. After
    the step's backward passes, not during them (as DistributedDataParallel would): a process that ran
    out of memory mid-step can then repeat the step with the others, none of them left waiting in an
    exchange. A parameter without a gradient adds zeros."""
    if d.world == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch._utils._flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    for p, summed in zip(params, torch._utils._unflatten_dense_tensors(flat, grads)):
        p.grad = summed


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps, so it can save first."""

    def __init__(self):
        self.signal = 0
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.signal:            # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.signal = signum
        tqdm.write(f"{signal.Signals(signum).name}: saving a checkpoint after this step, then stopping")
