"""How much GPU memory a training run needs: the plan of one step computed without a GPU, and the
largest micro-batch that fits.

The plan replays run.py's training step from the second step on, when AdamW's moments exist: the
batch on the device, the forward under autocast, losses.segmentation_loss, the backward, gradient
clipping, the fused AdamW step and zero_grad, with gradients and moments only for the parameters
the stage trains (unet.stage_parameters). It runs the model's own code on fake tensors
(FakeTensorMode: shapes and dtypes, no data, no arithmetic), so a 512_96 step plans in about two
seconds. Every storage an operation creates is counted from its creation until it is freed (a weak
reference), in the CUDA caching allocator's 512-byte blocks: the peak is what
torch.cuda.max_memory_allocated reports for the step after torch.cuda.reset_peak_memory_stats.

Two things stand in for a GPU:
- the fake tensors are CPU tensors: PyTorch's autograd engine runs no backward of fake CUDA tensors
  without a GPU ("hasPrimaryContext expects a valid device index");
- CUDA's autocast rules differ from the CPU's: under CUDA autocast GroupNorm, LayerNorm, softmax,
  upsampling and sums give fp32 outputs, which the CPU's leave in bf16/fp16. While a plan runs,
  `cuda_autocast_rules` gives CPU autocast CUDA's rule (aten/src/ATen/autocast_mode.cpp) for every
  operation where the two differ.

Sizes are affine in the micro-batch and the order of allocations does not depend on it from 2 on
(a batch of one takes a few reshapes without a copy), so steps traced at micro-batches 1, 2 and 4
give every micro-batch's figures exactly (`StepMemory`; tests/test_memory_plan.py checks this).

Not planned: what kernels allocate inside (cuDNN's and cuBLAS's workspaces come from the same
allocator; on the CPU, the real allocator's peak measured 0.3-6% above this count), large blocks
the allocator hands out whole though up to 1 MiB larger than asked, its fragmentation and the CUDA
context. `fits` leaves a margin for them; `--batch_size auto` (`auto_micro_batch`) and the plan's
`largest_fitting` use the same one. Not planned either: torch.compile (usually less memory) and
the validation forward (no gradients, far below a training step); --channels_last keeps the sizes.

`python memory.py` prints the largest micro-batch of each stage of the published recipe on 16 to 80
GB cards, planned (`recipe_table`, the table in docs/performance.md). Also here: what run.py does
when a step runs out of memory after all (`out_of_memory_help`,
`halve_micro_batch`), and the plan as `python run.py --plan` prints and writes it (`format_plan`,
`write_plan`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import argparse
import json
import logging
import sys
import time
import typing
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map_only

from losses import LossConfig, segmentation_loss
from device import AUTOCAST_DTYPES
from unet import PRESETS, UNet, UNetConfig, stage_parameters, write_atomic

PRECISIONS = ("bf16", "fp16", "fp32")
BLOCK = 512                          # the CUDA caching allocator rounds every allocation up to this
GIB = 2 ** 30
# The margin between a planned peak and the free memory (`fits`), shared by `--batch_size auto` and
# the plan's largest_fitting: 10% of the peak for what kernels allocate inside (6% at most on the
# CPU), blocks handed out whole and fragmentation (reserved memory above the allocated peak), and
# 512 MiB for cuDNN's and cuBLAS's workspaces.
MARGIN_FRACTION = 0.10
MARGIN_BYTES = 512 * 2 ** 20
# What torch.cuda.mem_get_info reports free on a card sold as N GB, assumed N * 1e9 bytes less
# this: the CUDA context (0.3-0.5 GiB) and what the driver keeps (a "16 GB" T4 holds 15.8e9 bytes).
CARD_ALLOWANCE_BYTES = GIB
CARDS_GB = (16, 24, 40, 80)
CLIP_NORM = 1.0                      # run.py's default --max_grad_norm; clipping allocates scalars only
log = logging.getLogger("run")


def card_free_bytes(gigabytes: int) -> int:
    """The free memory assumed on a card sold as `gigabytes` GB."""
    return gigabytes * 10 ** 9 - CARD_ALLOWANCE_BYTES


def fits(peak_bytes: int, free_bytes: int) -> bool:
    """Whether a step of this planned peak runs in this much free memory, with the margin."""
    return peak_bytes * (1 + MARGIN_FRACTION) + MARGIN_BYTES <= free_bytes


# ---- CUDA's autocast rules on the CPU ---------------------------------------------------------

# CUDA's autocast policy for the operations where it differs from the CPU's (torch 2.14's
# autocast_mode.cpp). "fp32": floating inputs cast to fp32; "fp32_dtype": run with dtype=float32
# (fp32_set_opt_dtype); "promote": inputs cast to the widest floating type among them; "lower":
# inputs cast to the autocast dtype (without the cast cache CUDA keeps for parameters: these are
# internal convolution and RNN entry points our models do not call).
CUDA_RULES = {
    "fp32": ("_upsample_bicubic2d_aa", "_upsample_bilinear2d_aa", "_upsample_nearest_exact1d",
             "_upsample_nearest_exact2d", "_upsample_nearest_exact3d", "acos", "asin", "cosh",
             "cosine_similarity", "dist", "erfinv", "exp", "expm1", "frobenius_norm.dim", "group_norm",
             "layer_norm", "log", "log10", "log1p", "log2", "logsumexp", "native_layer_norm", "nuclear_norm",
             "nuclear_norm.dim", "pdist", "pow.Scalar", "pow.Tensor_Scalar", "pow.Tensor_Tensor",
             "reciprocal", "renorm", "rms_norm", "rsqrt", "sinh", "softplus", "tan", "upsample_bicubic2d",
             "upsample_bilinear2d", "upsample_linear1d", "upsample_nearest1d", "upsample_nearest2d",
             "upsample_nearest3d", "upsample_trilinear3d",
             # fp32_append_dtype in CUDA's table (a dtype argument instead of a cast: one copy fewer)
             "norm.Scalar", "norm.ScalarOpt_dim"),
    "fp32_dtype": ("cumprod", "cumsum", "linalg_matrix_norm", "linalg_matrix_norm.str_ord", "linalg_vector_norm",
                   "log_softmax.int", "prod", "prod.dim_int", "softmax.int", "sum", "sum.dim_IntList"),
    "promote": ("addcdiv", "addcmul", "atan2", "bilinear", "cross", "dot", "grid_sampler", "index_put",
                "scatter_add", "tensordot", "vdot"),
    "lower": ("_convolution", "_cudnn_rnn", "_scaled_dot_product_flash_attention", "_thnn_fused_gru_cell",
              "_thnn_fused_lstm_cell", "addmv", "addr", "chain_matmul", "convolution", "cudnn_convolution",
              "cudnn_convolution_transpose", "einsum", "gru_cell", "linalg_multi_dot", "lstm_cell", "mv",
              "rnn_relu_cell", "rnn_tanh_cell"),
    "refused": ("binary_cross_entropy",),    # CUDA autocast raises: unsafe in low precision
}
_RULE_OF = {name: rule for rule, names in CUDA_RULES.items() for name in names}
_NO_AUTOCAST_CPU = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)


@functools.cache
def autocast_rule_ops() -> tuple[frozenset[str], frozenset[str]]:
    """(operations with a CUDA autocast kernel, with a CPU one), as "name" or "name.overload", as
    torch registers them (read once: before cuda_autocast_rules adds its own)."""
    def kernels(key: str) -> frozenset[str]:
        return frozenset(n.removeprefix("aten::") for n in torch._C._dispatch_get_all_op_names()
                         if n.startswith("aten::") and torch._C._dispatch_has_kernel_for_dispatch_key(n, key))
    return kernels("AutocastCUDA"), kernels("AutocastCPU")


def _aten_op(name: str):
    base, _, overload = name.partition(".")
    return getattr(getattr(torch.ops.aten, base), overload or "default")


def _eligible(t) -> bool:
    """What autocast casts: floating tensors other than fp64."""
    return isinstance(t, Tensor) and t.is_floating_point() and t.dtype != torch.float64


def _rule_kernel(name: str, rule: str):
    """An AutocastCPU kernel (given the dispatch key set) applying `rule` to aten operation `name`;
    "as_is": CUDA autocast has no rule for it, so it passes on with autocast on for what it calls."""
    op = _aten_op(name)
    dtype_at = [a.name for a in op._schema.arguments].index("dtype") if rule == "fp32_dtype" else -1

    def kernel(keyset, *args, **kwargs):
        if rule == "as_is":
            return op.redispatch(keyset.remove(torch._C.DispatchKey.AutocastCPU), *args, **kwargs)
        if rule == "refused":
            raise RuntimeError(f"aten::{name} is refused by CUDA autocast (unsafe in low precision)")
        if rule == "unknown":
            raise NotImplementedError(f"memory plan: aten::{name} has a CUDA autocast rule that "
                                      "memory.CUDA_RULES lacks (a newer torch?); add it there")
        with torch._C._ExcludeDispatchKeyGuard(_NO_AUTOCAST_CPU):   # as CUDA's: no autocast below
            cast_to = {"fp32": torch.float32, "lower": torch.get_autocast_dtype("cpu")}.get(rule)
            if rule == "promote":
                cast_to = torch.get_autocast_dtype("cpu")
                for t in tree_flatten((args, kwargs))[0]:
                    cast_to = torch.promote_types(cast_to, t.dtype) if _eligible(t) else cast_to
            if cast_to is not None:
                args, kwargs = tree_map_only(Tensor, lambda t: t.to(cast_to) if _eligible(t) else t, (args, kwargs))
            if rule == "fp32_dtype" and _eligible(args[0]):
                if dtype_at < len(args) and args[dtype_at] is None:
                    args = (*args[:dtype_at], torch.float32, *args[dtype_at + 1:])
                elif dtype_at >= len(args) and kwargs.get("dtype") is None:
                    kwargs = {**kwargs, "dtype": torch.float32}
            return op(*args, **kwargs)
    return kernel


@contextlib.contextmanager
def cuda_autocast_rules():
    """While open, CPU autocast applies CUDA's rules: CUDA_RULES for the operations CUDA autocast
    handles, none for those only CPU autocast handles. An operation in CUDA's table but not in
    CUDA_RULES (a newer torch) raises when it runs, naming itself."""
    cuda, cpu = autocast_rule_ops()
    with torch.library._scoped_library("aten", "IMPL") as lib:
        for name in sorted(cuda - cpu | cpu - cuda | cuda & cpu & set(_RULE_OF)):
            rule = _RULE_OF.get(name, "as_is" if name not in cuda else "unknown")
            lib.impl(name, _rule_kernel(name, rule), "AutocastCPU", with_keyset=True)
        yield


# ---- counting allocations -----------------------------------------------------------------------

class Allocations(TorchDispatchMode):
    """Every storage an operation creates while this mode is on, from creation until freed: its
    index in `sizes` (raw bytes, in order of creation) and the `events` (k: storage k created,
    ~k: freed)."""

    def __init__(self):
        super().__init__()
        self.sizes: list[int] = []
        self.events: list[int] = []
        self.live: dict[int, int] = {}             # id(storage) -> index
        self._refs: dict[int, weakref.ref] = {}

    def index(self, t: Tensor) -> int:
        """The index of t's storage, counted from now if it was not yet."""
        storage = t.untyped_storage()
        key = id(storage)
        if key not in self.live:
            self.live[key] = len(self.sizes)
            self.events.append(len(self.sizes))
            self.sizes.append(storage.nbytes())
            self._refs[key] = weakref.ref(storage, lambda _, key=key: self._freed(key))
        return self.live[key]

    def _freed(self, key: int) -> None:
        self.events.append(~self.live.pop(key))
        del self._refs[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, Tensor):
                self.index(t)
        return out


# ---- the planned step ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Trace:
    """One traced step, in raw bytes: the storages alive at its start (`baseline`) and those it
    created, in order; `events` over both, numbered baseline first (k: storage k created, ~k:
    freed); the storages its graph saved for the backward (parameters left out), in order of first
    saving; and the fixed parts: weights, the stage's gradients, the optimizer state."""
    micro_batch: int
    baseline: tuple[int, ...]
    created: tuple[int, ...]
    events: tuple[int, ...]
    saved: tuple[int, ...]
    weights: tuple[int, ...]
    gradients: tuple[int, ...]
    optimizer: tuple[int, ...]


def _sizes(tensors) -> tuple[int, ...]:
    return tuple(t.untyped_storage().nbytes() for t in tensors)


class _Session:
    """A fake copy of the model with the stage's AdamW state, and the allocations it makes."""

    def __init__(self, config: UNetConfig, stage: str, gradient_checkpointing: bool, loss: LossConfig,
                 device: str):
        if device not in ("cuda", "cpu"):
            raise ValueError(f"device must be 'cuda' or 'cpu', got {device!r}")
        self.fake, self.allocations, self.loss, self.device = FakeTensorMode(), Allocations(), loss, device
        with self.fake, self.allocations:
            with torch.device("meta"):                      # the module tree without initialising weights
                self.model = UNet(config)
            for module in self.model.modules():
                for name, p in module._parameters.items():  # fake CPU parameters in place of meta ones
                    module._parameters[name] = nn.Parameter(torch.empty(p.shape, dtype=p.dtype))
            self.model.set_gradient_checkpointing(gradient_checkpointing)
            self.model.requires_grad_(False)
            self.trainable = [p.requires_grad_() for _, p in stage_parameters(self.model, stage)]
            # run.make_optimizer's AdamW (its parameter groups change nothing here), fused as on CUDA;
            # one step on zero gradients creates its state
            self.optimizer = torch.optim.AdamW(self.trainable, lr=1e-4, fused=True)
            for p in self.trainable:
                p.grad = torch.zeros_like(p)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

    def trace(self, micro_batch: int, image_size: int, precision: str) -> Trace:
        """The allocations of one training step as run.py takes it (train, accumulate_gradients)."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if micro_batch < 1:
            raise ValueError(f"micro_batch must be at least 1, got {micro_batch}")
        a = self.allocations
        rules = self.device == "cuda" and AUTOCAST_DTYPES[precision] is not None
        collecting = gc.isenabled()
        gc.collect()
        gc.disable()              # memory is freed when its last reference goes, as in a training loop
        try:
            with self.fake, a, cuda_autocast_rules() if rules else contextlib.nullcontext():
                baseline, first = sorted(a.live.values()), len(a.events)
                saved, fixed = self._step(micro_batch, image_size, precision)
                events = a.events[first:]
        finally:
            if collecting:
                gc.enable()
        created = [k for k in events if k >= 0]
        local = {k: i for i, k in enumerate(baseline + created)}
        return Trace(micro_batch, tuple(a.sizes[k] for k in baseline), tuple(a.sizes[k] for k in created),
                     tuple(local[k] if k >= 0 else ~local[~k] for k in events), tuple(local[k] for k in saved),
                     *fixed)

    def _step(self, micro_batch: int, size: int, precision: str) -> tuple[list[int], tuple]:
        """Run the step; returns the saved storages' indices and the fixed parts' sizes."""
        params = {id(p.untyped_storage()) for p in self.model.parameters()}
        saved: dict[int, None] = {}                          # storage indices, in order of first saving

        def pack(t: Tensor) -> Tensor:
            if id(t.untyped_storage()) not in params:
                saved.setdefault(self.allocations.index(t))
            return t

        dtype = AUTOCAST_DTYPES[precision]
        # prepare_batch's outputs: image (B, 3, S, S), mask (B, S, S) int64, boundary (B, S, S)
        image = torch.empty(micro_batch, 3, size, size)
        mask = torch.zeros(micro_batch, size, size, dtype=torch.long)
        boundary = torch.empty(micro_batch, size, size)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
                torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            out = self.model(image)
            loss, _ = segmentation_loss(out.mask_logits, out.boundary_logits, mask, boundary, self.loss)
        loss.backward()          # run.py holds `out` until the backward has run
        gradients = _sizes(p.grad for p in self.trainable)
        del image, mask, boundary, out, loss
        torch.nn.utils.clip_grad_norm_(self.trainable, CLIP_NORM)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        state = [t for s in self.optimizer.state.values() for t in s.values() if isinstance(t, Tensor)]
        return list(saved), (_sizes(self.model.parameters()), gradients, _sizes(state))

    def step_memory(self, image_size: int, precision: str) -> StepMemory:
        return StepMemory(*(self.trace(b, image_size, precision) for b in (1, 2, 4)),
                          block=BLOCK if self.device == "cuda" else 1)


@dataclass(frozen=True)
class StepMemory:
    """A step's memory at any micro-batch: traced at 1 (a batch of one reshapes without some copies),
    and from 2 on each size extrapolated from its sizes at 2 and 4 (affine in the micro-batch, the
    order of allocations the same). `block`: allocation granularity, 512 for CUDA, 1 to count bytes."""
    one: Trace
    two: Trace
    four: Trace
    block: int = BLOCK

    def __post_init__(self):
        two, four = self.two, self.four
        same = dataclasses.replace(two, micro_batch=0, created=()) == dataclasses.replace(
            four, micro_batch=0, created=()) and len(two.created) == len(four.created)
        slope = np.subtract(four.created, two.created, dtype=np.int64) // 2
        base = np.asarray(two.created, dtype=np.int64) - 2 * slope
        if not same or np.any(base < 0) or np.any(base + 4 * slope != four.created):
            raise RuntimeError("memory plan: the step's allocations at micro-batches 2 and 4 differ in more "
                               "than affine sizes; trace each micro-batch by itself (memory.step_figures)")
        object.__setattr__(self, "_base", base)
        object.__setattr__(self, "_slope", slope)

    def _at(self, micro_batch: int) -> tuple[Trace, np.ndarray]:
        if micro_batch == 1:
            return self.one, np.asarray(self.one.created, dtype=np.int64)
        return self.two, self._base + self._slope * micro_batch

    def figures(self, micro_batch: int) -> dict[str, int]:
        """Bytes: "peak", "weights", "gradients", "optimizer", "activations"."""
        return _figures(*self._at(micro_batch), self.block)

    def row(self, micro_batch: int) -> dict:
        """The plan's row: micro_batch and each figure in GiB (peak_gib, ...)."""
        return {"micro_batch": micro_batch, **{f"{k}_gib": round(v / GIB, 4)
                                               for k, v in self.figures(micro_batch).items()}}


def _figures(trace: Trace, created: np.ndarray, block: int) -> dict[str, int]:
    """Peak, fixed parts and activations of a trace with these sizes of its created storages, each
    storage in whole blocks."""
    def rounded(sizes) -> np.ndarray:
        return -(-np.asarray(sizes, dtype=np.int64) // block) * block

    sizes = rounded(np.concatenate([np.asarray(trace.baseline, dtype=np.int64), created]))
    events = np.asarray(trace.events, dtype=np.int64)
    change = np.where(events >= 0, 1, -1) * sizes[np.where(events >= 0, events, ~events)]
    peak = sizes[:len(trace.baseline)].sum() + max(0, np.cumsum(change).max(initial=0))
    return {"peak": int(peak), "weights": int(rounded(trace.weights).sum()),
            "gradients": int(rounded(trace.gradients).sum()), "optimizer": int(rounded(trace.optimizer).sum()),
            "activations": int(sizes[list(trace.saved)].sum())}


# ---- the plan -----------------------------------------------------------------------------------

MAX_MICRO_BATCH = 4096
POWERS_OF_TWO = tuple(2 ** i for i in range(MAX_MICRO_BATCH.bit_length()))


def step_memory(config: UNetConfig, stage: str = "all", image_size: int | None = None, precision: str = "bf16",
                gradient_checkpointing: bool = False, loss: LossConfig | None = None,
                device: str = "cuda") -> StepMemory:
    """The memory of a training step at every micro-batch. `config` is the model's after the stage's
    operations (run.build_model's model.config: the swapped bottleneck, the added local attention),
    `stage` one of unet.STAGES; image_size defaults to the config's. device "cuda" plans CUDA's
    step, "cpu" counts bytes as a CPU step makes them (CPU autocast, no blocks)."""
    session = _Session(config, stage, gradient_checkpointing, loss or LossConfig(), device)
    return session.step_memory(image_size or config.image_size, precision)


def step_figures(config: UNetConfig, stage: str = "all", image_size: int | None = None, micro_batch: int = 1,
                 precision: str = "bf16", gradient_checkpointing: bool = False, loss: LossConfig | None = None,
                 device: str = "cuda") -> dict[str, int]:
    """Bytes of one micro-batch's step, traced at that micro-batch: "peak", "weights", "gradients",
    "optimizer", "activations". Arguments as step_memory's."""
    session = _Session(config, stage, gradient_checkpointing, loss or LossConfig(), device)
    trace = session.trace(micro_batch, image_size or config.image_size, precision)
    return _figures(trace, np.asarray(trace.created, dtype=np.int64), BLOCK if device == "cuda" else 1)


def choose_micro_batch(free_bytes: int, step: StepMemory, candidates: tuple[int, ...] = POWERS_OF_TWO) -> int:
    """The largest candidate micro-batch whose planned peak `fits` in free_bytes (what
    torch.cuda.mem_get_info reports free); 0 where not even the smallest does."""
    return max((b for b in candidates if fits(step.figures(b)["peak"], free_bytes)), default=0)


def divisors(n: int) -> tuple[int, ...]:
    return tuple(b for b in range(1, n + 1) if n % b == 0)


# --batch_size auto on the CPU, where no plan applies (a CPU run takes what the process can get): the
# largest divisor of the images per process and step up to this, run.py's batch before `auto`
CPU_MICRO_BATCH = 8


class DoesNotFit(RuntimeError):
    """Not even a micro-batch of one image fits the GPU."""


def cuda_free_bytes(device: torch.device) -> int:
    """The memory a training step on this CUDA device may take: what the driver reports free plus what
    this process's caching allocator holds (the model already there: the plan's peak counts it)."""
    return torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_reserved(device)


def auto_micro_batch(per_process: int, device: torch.device, step: typing.Callable[[], StepMemory]
                     ) -> tuple[int, str]:
    """--batch_size auto: the largest divisor of `per_process` (images per process and step) whose
    planned peak (`step()`, the StepMemory of this run's step) `fits` the free memory on CUDA (0 where
    not even 1 does); CPU_MICRO_BATCH's rule elsewhere. Returns it and a line saying why."""
    if device.type != "cuda":
        micro = max(b for b in divisors(per_process) if b <= CPU_MICRO_BATCH)
        return micro, f"{device.type}: at most {CPU_MICRO_BATCH} images a forward pass"
    planned, free = step(), cuda_free_bytes(device)
    micro = choose_micro_batch(free, planned, divisors(per_process))
    return micro, (f"{free / GIB:.1f} GiB free on {torch.cuda.get_device_name(device)}, where a planned peak x "
                   f"{1 + MARGIN_FRACTION:.2f} + {MARGIN_BYTES / 2**20:.0f} MiB must fit; micro-batch "
                   f"{max(micro, 1)} plans {planned.figures(max(micro, 1))['peak'] / GIB:.2f} GiB")


def out_of_memory_help(config: UNetConfig, gradient_checkpointing: bool) -> str:
    """What would let a run that does not fit at micro-batch 1 fit."""
    ways = [] if gradient_checkpointing else ["--gradient_checkpointing (a 20-25% lower peak)"]
    if config.local_attention_levels:
        ways.append(f"fewer --local_attention_levels than {' '.join(map(str, config.local_attention_levels))}")
    ways += ["a smaller preset", f"a smaller --image_size than {config.image_size}", "a GPU with more memory"]
    return "what would help: " + "; ".join(ways) + " (python run.py --plan with the same flags shows each one's peak)"


def halve_micro_batch(size: int, what: str, config: UNetConfig, gradient_checkpointing: bool, device: torch.device,
                      checkpoints: Path) -> int:
    """After `what` (a training step, validation) ran out of memory at micro-batch `size`: memory
    released (what the error held collected, the cached blocks handed back) and half the micro-batch,
    rounded up, logged; DoesNotFit, saying what would help, where it was 1 already."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if size == 1:
        raise DoesNotFit(f"{what}: out of memory at micro-batch 1; {out_of_memory_help(config, gradient_checkpointing)}"
                         f". The last checkpoint stays in {checkpoints} (--resume latest continues from it)")
    log.warning("%s: out of memory at micro-batch %d; repeated at micro-batch %d", what, size, (size + 1) // 2)
    return (size + 1) // 2


def plan(config: UNetConfig, stage: str = "all", image_size: int | None = None,
         gradient_checkpointing: bool = False, loss: LossConfig | None = None,
         precisions: tuple[str, ...] = PRECISIONS) -> dict:
    """The memory plan of a run: for each precision the rows of micro-batches 1, 2, 4, ... up to the
    first that does not fit an 80 GB card (at most MAX_MICRO_BATCH), and the largest micro-batch (a
    power of two) that fits a card of each size in CARDS_GB. Arguments as step_memory's."""
    session = _Session(config, stage, gradient_checkpointing, loss or LossConfig(), "cuda")
    result, steps = {"precisions": {}, "largest_fitting": {}}, {}
    for precision in precisions:
        # fp16 allocates as bf16 does (2-byte types, the same autocast rules; its loss scaler adds
        # scalars): one trace serves both (tests/test_memory_plan.py checks that they agree)
        twin = {"fp16": "bf16", "bf16": "fp16"}.get(precision)
        steps[precision] = steps.get(twin) or session.step_memory(image_size or config.image_size, precision)
        rows = []
        for b in POWERS_OF_TWO:
            rows.append(steps[precision].row(b))
            if not fits(steps[precision].figures(b)["peak"], card_free_bytes(max(CARDS_GB))):
                break
        result["precisions"][precision] = rows
        result["largest_fitting"][precision] = {str(gb): choose_micro_batch(card_free_bytes(gb), steps[precision])
                                                for gb in CARDS_GB}
    return result


def format_plan(result: dict) -> str:
    """The plan as a table: peak (activations) in GiB per micro-batch and precision, the fixed parts,
    and the largest micro-batch per card."""
    rows = result["precisions"]
    precisions = list(rows)
    batches = sorted({r["micro_batch"] for p in precisions for r in rows[p]})
    by = {(p, r["micro_batch"]): r for p in precisions for r in rows[p]}
    first = rows[precisions[0]][0]
    lines = ["peak GPU memory of one training step in GiB, planned (activations in brackets)",
             f"{'micro-batch':>11}" + "".join(f"{p:>18}" for p in precisions)]
    for b in batches:
        cells = [f"{by[p, b]['peak_gib']:.2f} ({by[p, b]['activations_gib']:.2f})" if (p, b) in by else "-"
                 for p in precisions]
        lines.append(f"{b:>11}" + "".join(f"{c:>18}" for c in cells))
    lines.append(f"in every peak: weights {first['weights_gib']:.2f} + gradients {first['gradients_gib']:.2f} "
                 f"+ optimizer state {first['optimizer_gib']:.2f}")
    lines.append(f"largest micro-batch that fits (peak + {MARGIN_FRACTION:.0%} + {MARGIN_BYTES / 2**20:.0f} MiB; "
                 f"an N GB card taken as N x 1e9 bytes - {CARD_ALLOWANCE_BYTES / GIB:.0f} GiB free)")
    lines.append(f"{'':>11}" + "".join(f"{gb:>6} GB" for gb in CARDS_GB))
    for p in precisions:
        lines.append(f"{p:>11}" + "".join(f"{result['largest_fitting'][p][str(gb)]:>9}" for gb in CARDS_GB))
    return "\n".join(lines)


def write_plan(result: dict, path: Path) -> None:
    """The plan as JSON, written atomically (unet.write_atomic): never half a file."""
    write_atomic(Path(path), lambda f: f.write((json.dumps(result, indent=1) + "\n").encode()))


# ---- the published recipe's stages -------------------------------------------------------------

# (what, preset, changes to the preset's config, stage): the recipe of docs/training.md at 512x512
RECIPE_STAGES = (
    ("512_96 stage 1: simple bottleneck, whole net", "512_96", dict(bottleneck="simple"), "all"),
    ("512_96 stage 2: `--upgrade_bottleneck` (trains the bottleneck)", "512_96", {}, "bottleneck"),
    ("512_96 stage 3: attention bottleneck, whole net", "512_96", {}, "all"),
    ("512_96 stage 4: `--upgrade_local_attention`, levels 2 3 4 (trains local attention)", "512_96",
     dict(local_attention_levels=(2, 3, 4)), "local_attention"),
    ("512_96 stage 5: local attention on levels 2 3 4, whole net", "512_96",
     dict(local_attention_levels=(2, 3, 4)), "all"),
    ("512_64_xl: attention bottleneck of 6 blocks, whole net", "512_64_xl", {}, "all"),
)


def recipe_table(precisions: tuple[str, ...] = ("fp16", "bf16")) -> str:
    """A Markdown table: for each recipe stage the largest micro-batch that fits each card (one figure
    where the precisions agree, else one per precision) and the planned peak at micro-batch 1."""
    header = ("| run | " + " | ".join(f"{gb} GB" for gb in CARDS_GB)
              + f" | peak at micro-batch 1, {precisions[0]} |\n|---|" + "---|" * (len(CARDS_GB) + 1))
    rows = [header]
    for what, preset, changes, stage in RECIPE_STAGES:
        result = plan(dataclasses.replace(PRESETS[preset], **changes), stage, precisions=precisions)
        cells = []
        for gb in CARDS_GB:
            fitting = [result["largest_fitting"][p][str(gb)] for p in precisions]
            cells.append(str(fitting[0]) if len(set(fitting)) == 1 else " / ".join(map(str, fitting)))
        peak = result["precisions"][precisions[0]][0]["peak_gib"]
        rows.append(f"| {what} | " + " | ".join(cells) + f" | {peak:.1f} GiB |")
    return "\n".join(rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="The largest micro-batch of each stage of the published "
                                     "recipe (512x512) on 16, 24, 40 and 80 GB cards, planned without a GPU "
                                     "(about a minute). One run's plan: python run.py --plan [its flags].")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=["fp16", "bf16"])
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args(sys.argv[1:])
    start = time.perf_counter()
    print(recipe_table(tuple(args.precisions)))
    print(f"planned in {time.perf_counter() - start:.0f} s; a micro-batch fits when its peak x "
          f"{1 + MARGIN_FRACTION:.2f} + {MARGIN_BYTES // 2**20} MiB fits an N GB card's N x 1e9 bytes - "
          f"{CARD_ALLOWANCE_BYTES // GIB} GiB")
