"""Speed and memory, measured side by side in one run, against this machine's own yardstick.

    python bench.py                    # everything, about 5-10 minutes on a 2-core CPU
    python bench.py --out bench.json   # also write the figures as JSON
    python bench.py --compile          # also the CPU training steps under torch.compile (+3-4 minutes)
    python bench.py --gpu-check        # on a GPU: tests/test_cuda.py, the memory plan's check, the CUDA figures
    python bench.py --memory-plan      # the memory plan's CPU check: planned against real saved bytes

Figures: the fp32 matrix-multiply rate (the yardstick); a training step (forward, loss,
backward, AdamW) of the published architecture with widths 32..512 (b = 16) at 256x256, batch 2,
with FLOPs counted by torch.utils.flop_counter, NCHW against channels-last, its attention kernel
and profile; the same widths at 512x512 without local attention, with it on every decoder level
and on run.py's default levels, each level's local attention alone, and the profile of the step
with it everywhere; that plain 512 step with glibc's default allocator against the freed memory
run.py keeps (device.keep_freed_memory), each in a fresh process; inference per image at 512x512
(512_96) on PyTorch and on onnxruntime, beside each boundary post-processing method on one core;
data loading per worker (one thread) beside merely decoding the JPEGs into arrays, and the
device-side batch preparation after it; peak memory of a 512_96 training step at 512x512 with
and without the freed memory kept and with gradient checkpointing; on CUDA, the 512_96 bf16 step
with and without torch.compile and the attention kernels it runs on, and its peak memory at
micro-batches 1, 2 and 4 against memory.py's plan.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import multiprocessing
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

import memory
import postprocess
from dataset import FashionDataset
from device import keep_freed_memory, native_bf16, pick_precision
from images import boundary_target, prepare_batch
from losses import LossConfig, segmentation_loss
from synthetic import write_synthetic_dataset
from unet import PRESETS, UNet, UNetConfig, stage_parameters

WIDE32 = dataclasses.replace(PRESETS["tiny"], base_features=16, image_size=256)   # widths 32..512
# Dense bf16 (fp16 where the card has no bf16) tensor-core peaks, per card, by the exact name
# torch.cuda.get_device_name() gives: "H100" alone would also match the slower PCIe and NVL cards,
# "L4" the L40 and L40S.
PEAK_FLOPS = {
    "NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H100 PCIe": 756e12, "NVIDIA H100 NVL": 835e12,
    "NVIDIA H200": 989e12, "NVIDIA H200 NVL": 835e12,
    "NVIDIA A100-SXM4-80GB": 312e12, "NVIDIA A100-SXM4-40GB": 312e12, "NVIDIA A100-PCIE-40GB": 312e12,
    "NVIDIA A100 80GB PCIe": 312e12,
    "NVIDIA L4": 121e12, "NVIDIA L40": 181e12, "NVIDIA L40S": 362e12,
    "Tesla T4": 65e12, "Tesla V100-SXM2-16GB": 125e12, "Tesla V100-SXM2-32GB": 125e12, "Tesla V100-PCIE-16GB": 112e12,
}
SDPA_KERNELS = {"aten::_scaled_dot_product_flash_attention": "flash",
                "aten::_scaled_dot_product_efficient_attention": "efficient",
                "aten::_scaled_dot_product_cudnn_attention": "cudnn",
                "aten::_scaled_dot_product_attention_math": "math",
                "aten::_scaled_dot_product_flash_attention_for_cpu": "flash (CPU)"}


def peak_flops(name: str) -> float | None:
    """The card's dense half-precision peak, None for a card not in the table."""
    return PEAK_FLOPS.get(name)


def timed(fn, repeats: int, warmup: int = 1) -> float:
    """Median wall time of fn() in seconds."""
    return timed_in_turns({"fn": fn}, repeats, warmup)["fn"]


def timed_in_turns(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median wall time of each function in seconds, timed in turns (A, B, A, B, ...) so that a busy
    moment on a shared machine slows all of them alike and their ratios hold."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def matmul_rate(n: int = 2048, repeats: int = 20) -> float:
    """fp32 GFLOP/s of one n x n matrix multiply, the median of `repeats` like every timing here: the
    yardstick."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n ** 3 / timed(lambda: a @ b, repeats) / 1e9


def fake_batch(batch: int, size: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Random images with blocky label maps, so the boundary term sees real edges."""
    g = torch.Generator().manual_seed(0)
    image = torch.randn(batch, 3, size, size, generator=g)
    coarse = torch.randint(0, 24, (batch, 1, size // 16, size // 16), generator=g).float()
    mask = torch.nn.functional.interpolate(coarse, size=(size, size), mode="nearest")[:, 0].long()
    return image.to(device), mask.to(device), boundary_target(mask).to(device)


def make_train_step(config: UNetConfig, size: int, batch: int, device=torch.device("cpu"),
                    autocast_dtype=None, compile: bool = False, checkpointing: bool = False,
                    channels_last: bool = False, count_flops: bool = True) -> tuple[Callable[[], None], int]:
    """A training step (forward, loss, backward, AdamW) as run.py takes it, and its FLOPs (0 unless
    count_flops)."""
    torch.manual_seed(0)
    model = UNet(config).to(device)
    model.set_gradient_checkpointing(checkpointing)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    net = torch.compile(model) if compile else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    scaler = torch.amp.GradScaler(device.type, init_scale=2.0 ** 11, enabled=autocast_dtype == torch.float16)
    image, mask, boundary = fake_batch(batch, size, device)
    image = image.contiguous(memory_format=layout)
    loss_config = LossConfig()

    def step():
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out = net(image)
            loss, _ = segmentation_loss(out.mask_logits, out.boundary_logits, mask, boundary, loss_config)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    if not count_flops:
        return step, 0
    with FlopCounterMode(display=False) as counter:
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out = model(image)
            loss, _ = segmentation_loss(out.mask_logits, out.boundary_logits, mask, boundary, loss_config)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return step, counter.get_total_flops()


def train_steps(steps: dict[str, tuple[Callable[[], None], int]], batch: int, repeats: int) -> dict[str, dict]:
    """Seconds per step of each, with their FLOPs and images per second. Each is timed in a block of
    its own, as training repeats one step: taken in turns, two models evict each other's memory and
    the larger one pays page faults a training run never sees (the local-attention ratio rose from
    1.4x to 1.8x that way)."""
    result = {}
    for name, (step, flops) in steps.items():
        seconds = timed(step, repeats, warmup=3)   # the first steps fill allocator and kernel caches
        result[name] = {"seconds": seconds, "flops": flops, "images_per_s": batch / seconds}
    return result


def train_step(config: UNetConfig, size: int, batch: int, repeats: int, device=torch.device("cpu"),
               autocast_dtype=None, compile: bool = False, checkpointing: bool = False,
               channels_last: bool = False) -> dict:
    """Seconds per training step and the FLOPs of its forward + backward, for one configuration."""
    step = make_train_step(config, size, batch, device, autocast_dtype, compile, checkpointing, channels_last)
    return train_steps({"step": step}, batch, repeats)["step"]


def local_attention_level_times(config: UNetConfig, size: int, repeats: int) -> dict[int, float]:
    """Seconds of each decoder level's local attention alone (forward, then backward of the sum) on
    inputs of the size and width it meets in the model."""
    model = UNet(config)
    times = {}
    for level in config.local_attention_levels:
        module = model.decoder[level].local_attention
        side = size >> level
        x = torch.randn(1, module.in_proj.in_features, side, side, requires_grad=True)
        times[level] = timed(lambda: module(x).sum().backward(), repeats, warmup=2)
    return times


def step_profile(step: Callable[[], None], top: int = 8) -> list[tuple[str, float]]:
    """The operators taking the most of one run of `step` (self time, CPU), as shares of the whole."""
    from torch.profiler import ProfilerActivity, profile
    step()
    with profile(activities=[ProfilerActivity.CPU]) as trace:
        step()
    events = trace.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return [(e.key.removeprefix("aten::"), e.self_cpu_time_total / total) for e in ranked]


def attention_kernels(step: Callable[[], None]) -> list[str]:
    """The scaled-dot-product-attention kernels one run of `step` calls, read from a profiler trace."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as trace:
        step()
    return sorted({SDPA_KERNELS[e.key] for e in trace.key_averages() if e.key in SDPA_KERNELS})


def onnx_inference_times(config: UNetConfig, size: int, repeats: int) -> dict[str, float]:
    """Seconds per image of the same model on PyTorch and on onnxruntime (exported by predict.py's
    exporter), each timed in a block of its own, the export's own seconds, and a profile of each."""
    import onnxruntime
    import predict
    import unet
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint, onnx_file = Path(tmp) / "model.pt", Path(tmp) / "model.onnx"
        torch.manual_seed(0)
        torch.save(unet.model_checkpoint(UNet(config)), checkpoint)
        t0 = time.perf_counter()
        predict.export_onnx(checkpoint, onnx_file)
        export_s = time.perf_counter() - t0
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()   # the same cores as PyTorch
        session = onnxruntime.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
        model = unet.load_model(checkpoint).eval()
        image = torch.randn(1, 3, size, size)
        with torch.inference_mode():   # each in a block of its own: in turns, each evicted the other's
            # memory and PyTorch measured 6.3 s a run instead of 3.6 s
            times = {"pytorch": timed(lambda: model(image), repeats, warmup=2),
                     "onnxruntime": timed(lambda: session.run(None, {"image": image.numpy()}), repeats, warmup=2)}
            times["pytorch_profile"] = step_profile(lambda: model(image))
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session = onnxruntime.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
        session.run(None, {"image": image.numpy()})
        session.run(None, {"image": image.numpy()})
        times["onnxruntime_profile"] = onnx_op_shares(Path(session.end_profiling()))
    return {**times, "export_s": export_s}


def onnx_op_shares(trace: Path, top: int = 8) -> list[tuple[str, float]]:
    """The operator types taking the most of an onnxruntime profile's node time, as shares of it."""
    per_op: dict[str, float] = {}
    for event in json.loads(trace.read_text()):
        if event.get("cat") == "Node" and "op_name" in event.get("args", {}):
            per_op[event["args"]["op_name"]] = per_op.get(event["args"]["op_name"], 0) + event["dur"]
    total = sum(per_op.values())
    return [(op, us / total) for op, us in sorted(per_op.items(), key=lambda kv: -kv[1])[:top]]


def realistic_outputs(size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and boundary like a decent model's: smooth label regions, blurred, noisy."""
    from scipy import ndimage
    rng = np.random.default_rng(seed)
    labels = ndimage.zoom(rng.integers(0, 24, (size // 32, size // 32)), 32, order=0)
    logits = np.eye(24, dtype=np.float32)[labels].transpose(2, 0, 1) * 4
    logits = ndimage.gaussian_filter(logits, (0, 2, 2)) + rng.normal(0, 1, logits.shape).astype(np.float32)
    probs = np.exp(logits - logits.max(0))
    probs /= probs.sum(0)
    edges = boundary_target(torch.from_numpy(labels)).numpy()
    boundary = np.clip(ndimage.gaussian_filter(edges, 1) * 2 + rng.normal(0, 0.1, edges.shape), 0, 1)
    return probs.astype(np.float32), boundary.astype(np.float32)


def postprocess_times(size: int, repeats: int) -> dict[str, float]:
    """Seconds per image of each post-processing method (postprocess.METHODS), timed in turns on the
    same map; numpy and scipy.ndimage run these operations on one core."""
    probs, boundary = realistic_outputs(size)
    return timed_in_turns({name: (lambda method=method: method(probs, boundary))
                           for name, method in postprocess.METHODS.items()}, repeats)


def loading_rates(folder: Path, count: int) -> dict:
    """Samples per second on one thread (= one DataLoader worker) beside decoding the same JPEGs at
    full size into an RGB array (np.asarray(Image.open(path)), the least any loader does) and beside
    PIL's bare decode into its own buffer; then the device-side batch preparation per sample."""
    write_synthetic_dataset(folder, count, seed=0)
    paths = sorted((folder / "images").glob("*.jpg"))

    def decode_all(to_array: bool):
        for p in paths:
            with Image.open(p) as im:
                np.asarray(im) if to_array else im.load()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # as in a DataLoader worker
    datasets = {size: FashionDataset(folder, "all", image_size=size, mode="random_strip", color_jitter=0.1)
                for size in (512, 256)}
    seconds = timed_in_turns({"decode_full": lambda: decode_all(True), "decode_bare": lambda: decode_all(False),
                              **{f"samples_{size}": lambda ds=ds: [ds[i] for i in range(len(ds))]
                                 for size, ds in datasets.items()}}, 5)
    result = {f"{name}_per_s": len(paths) / s for name, s in seconds.items()}
    torch.set_num_threads(threads)
    batch = torch.utils.data.default_collate([datasets[256][i] for i in range(min(8, count))])
    seconds = timed(lambda: prepare_batch(batch, PRESETS["tiny"].mean, PRESETS["tiny"].std, torch.device("cpu")), 5)
    result["prepare_256_per_sample_s"] = seconds / len(batch["index"])
    return result


def peak_rss() -> int:
    """This process's peak resident bytes. Linux's VmHWM, as getrusage's ru_maxrss in a spawned child
    starts from the parent's peak at the fork (it made every child here report the bench's own 10 GiB)."""
    status = Path("/proc/self/status")
    if status.exists():
        line = next(line for line in status.read_text().splitlines() if line.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if platform.system() == "Darwin" else 1024)


def _allocator_child(queue, keep: bool, repeats: int) -> None:
    if keep:
        keep_freed_memory(torch.device("cpu"))
    step, _ = make_train_step(WIDE32, 512, 1, count_flops=False)
    seconds = timed(step, repeats, warmup=3)
    queue.put({"seconds": seconds, "kernel_s": resource.getrusage(resource.RUSAGE_SELF).ru_stime,
               "peak_rss": peak_rss()})


def in_fresh_process(target: Callable[..., None], *args):
    """What target(queue, *args) puts on its queue, run in a freshly spawned process: the allocator
    setting is the whole process's, and a process's RSS peak never goes down."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=target, args=(queue, *args))
    child.start()
    result = queue.get()
    child.join()
    return result


def allocator_comparison(repeats: int) -> dict[str, dict]:
    """The 512x512 training step (widths 32..512, batch 1) in two fresh processes, one with glibc's
    default malloc and one with device.keep_freed_memory as run.py sets it: seconds per step, the
    process's kernel time and peak RSS."""
    return {name: in_fresh_process(_allocator_child, keep, repeats)
            for name, keep in (("glibc_default", False), ("kept", True))}


def _peak_rss_child(queue, checkpointing: bool, keep: bool) -> None:
    if keep:
        keep_freed_memory(torch.device("cpu"))
    # the step alone: make_train_step's FLOP-counting pass holds more memory than a step, and its
    # peak hid what gradient checkpointing saves
    step, _ = make_train_step(PRESETS["512_96"], 512, 1, checkpointing=checkpointing, count_flops=False)
    for _ in range(2):
        step()
    queue.put(peak_rss())


def peak_memory(checkpointing: bool, keep: bool = True) -> float:
    """Peak bytes of a 512_96 training step at 512x512, batch 1: CUDA allocator or process RSS (with
    the CPU's freed memory kept or not, device.keep_freed_memory)."""
    if torch.cuda.is_available():
        return cuda_step_peak(1, pick_precision("auto", torch.device("cuda")), checkpointing)
    return in_fresh_process(_peak_rss_child, checkpointing, keep)


def cuda_step_peak(batch: int, dtype: torch.dtype | None, checkpointing: bool = False) -> int:
    """torch.cuda.max_memory_allocated of the second training step of 512_96 at 512x512 (AdamW's
    moments exist from the first on); what the step held is handed back afterwards."""
    step, _ = make_train_step(PRESETS["512_96"], 512, batch, torch.device("cuda"), dtype,
                              checkpointing=checkpointing, count_flops=False)
    step()
    torch.cuda.reset_peak_memory_stats()
    step()
    peak = torch.cuda.max_memory_allocated()
    del step
    gc.collect()
    torch.cuda.empty_cache()
    return peak


def cuda_dtypes() -> dict[str, torch.dtype]:
    """The half precisions this GPU trains in: bf16 where native (device.native_bf16), and fp16."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16} if native_bf16(torch.device("cuda")) \
        else {"fp16": torch.float16}


def cuda_figures(repeats: int) -> dict:
    """512_96 at 512x512, batch 8: images/s and model FLOP utilisation in bf16 (where native) and
    fp16, eager and compiled, NCHW and channels-last; the attention kernels the timed step ran; local
    attention on the three deepest levels."""
    device = torch.device("cuda")
    name = torch.cuda.get_device_name()
    peak = peak_flops(name)
    result = {"device": name, "peak_flops": peak}
    batch = 8
    dtypes = cuda_dtypes()
    runs = [(p, False, False) for p in dtypes] + [(next(iter(dtypes)), True, False), (next(iter(dtypes)), False, True)]
    for precision, compiled, nhwc in runs:
        step, flops = make_train_step(PRESETS["512_96"], 512, batch, device, dtypes[precision], compiled,
                                      channels_last=nhwc)
        timing = train_steps({"s": (step, flops)}, batch, repeats)["s"]
        key = f"{precision}{', compiled' if compiled else ''}{', channels-last' if nhwc else ''}"
        result[key] = {**timing, "mfu": timing["flops"] / timing["seconds"] / peak if peak else None,
                       "attention_kernels": attention_kernels(step)}
    la = dataclasses.replace(PRESETS["512_96"], local_attention_levels=(2, 3, 4))
    precision = next(iter(dtypes))
    timing = train_step(la, 512, batch, repeats, device, dtypes[precision])
    result["local_attention_deepest_3_ratio"] = timing["seconds"] / result[precision]["seconds"]
    return result


# ---- the memory plan (memory.py) against measured steps ---------------------------------------------

MEMORY_PLAN_TOLERANCE = 0.15     # the plan's bar on a GPU: within 15% of torch.cuda.max_memory_allocated
MEMORY_PLAN_CPU_CASES = (("tiny", 128, 8), ("256_64_la", 256, 1), ("512_96", 384, 1))   # up to ~4.5 GiB


def real_saved_bytes(config: UNetConfig, size: int, batch: int, precision: str, stage: str = "all",
                     checkpointing: bool = False) -> int:
    """Bytes the graph of a real CPU forward and loss saves for the backward (CPU autocast for
    bf16/fp16), each storage once, parameters left out: counted with saved_tensors_hooks."""
    with torch.device("meta"):
        model = UNet(config)
    model = model.to_empty(device="cpu").requires_grad_(False)
    with torch.no_grad():                # the values do not change which tensors autograd saves
        for p in model.parameters():
            p.fill_(0.01)
    model.set_gradient_checkpointing(checkpointing)
    for _, p in stage_parameters(model, stage):
        p.requires_grad_(True)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    image, mask, boundary = fake_batch(batch, size, torch.device("cpu"))
    dtype = memory.AUTOCAST_DTYPES[precision]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        out = model(image)
        segmentation_loss(out.mask_logits, out.boundary_logits, mask, boundary, LossConfig())
    return sum(saved.values())


def compare_with_plan(cases: list[dict], tolerance: float = MEMORY_PLAN_TOLERANCE) -> dict:
    """cases: {"case": label, "planned": bytes, "measured": bytes}; adds each ratio (measured /
    planned), their spread, and the verdict: every ratio within `tolerance` of 1."""
    ratios = [c["measured"] / c["planned"] for c in cases]
    return {"cases": [{**c, "ratio": r} for c, r in zip(cases, ratios)], "ratio_min": min(ratios),
            "ratio_max": max(ratios), "tolerance": tolerance, "within": all(abs(r - 1) <= tolerance for r in ratios)}


def format_comparison(result: dict, what: str) -> list[str]:
    """A comparison's table: planned and measured GiB, their ratio, and the verdict."""
    width = max(len(c["case"]) for c in result["cases"])
    lines = [f"{what}: planned against measured (GiB)", f"{'':<{width}}  planned  measured  measured/planned"]
    lines += [f"{c['case']:<{width}}  {c['planned'] / 2**30:7.3f}  {c['measured'] / 2**30:8.3f}  {c['ratio']:.3f}"
              for c in result["cases"]]
    verdict = "within" if result["within"] else "NOT within"
    lines.append(f"ratios {result['ratio_min']:.3f}-{result['ratio_max']:.3f} over {len(result['cases'])} cases: "
                 f"{verdict} {result['tolerance']:.0%} of the plan")
    return lines


def gpu_memory_check() -> dict:
    """Peak CUDA memory of the second real training step (AdamW's moments exist; cuDNN benchmarking on, as
    in run.py) against the plan: 512_96 at 512x512, micro-batches 1, 2, 4, bf16 (where native), fp16."""
    benchmark, torch.backends.cudnn.benchmark = torch.backends.cudnn.benchmark, True
    cases = []
    for precision, dtype in cuda_dtypes().items():
        planned = memory.step_memory(PRESETS["512_96"], image_size=512, precision=precision, loss=LossConfig())
        cases += [{"case": f"{precision} micro-batch {batch}", "planned": planned.figures(batch)["peak"],
                   "measured": cuda_step_peak(batch, dtype)} for batch in (1, 2, 4)]
    torch.backends.cudnn.benchmark = benchmark
    return compare_with_plan(cases)


def _saved_bytes_child(queue, name: str, size: int, batch: int, precision: str) -> None:
    queue.put(real_saved_bytes(PRESETS[name], size, batch, precision))


def cpu_memory_check() -> dict:
    """Planned activations (counted as the CPU allocates) against real_saved_bytes, each in a fresh process
    (one held 9 GiB after all), MEMORY_PLAN_CPU_CASES in fp32 and bf16; the whole 512_96 plan's seconds."""
    cases = []
    for name, size, batch in MEMORY_PLAN_CPU_CASES:
        for precision in ("fp32", "bf16"):
            planned = memory.step_figures(PRESETS[name], image_size=size, micro_batch=batch, precision=precision,
                                          device="cpu")["activations"]
            cases.append({"case": f"{name} {size}x{size} micro-batch {batch} {precision}", "planned": planned,
                          "measured": in_fresh_process(_saved_bytes_child, name, size, batch, precision)})
    t0 = time.perf_counter()
    memory.plan(PRESETS["512_96"])
    return {**compare_with_plan(cases, 0.10), "plan_512_96_s": time.perf_counter() - t0}


def add_step_row(rows: list, r: dict, key: str, label: str) -> None:
    """A training step's row, with its rate against the matmul yardstick (added to r[key])."""
    s = r[key]
    s["gflops_per_s"] = s["flops"] / s["seconds"] / 1e9
    s["fraction_of_matmul"] = s["gflops_per_s"] / r["matmul_gflops"]
    rows.append((label, f"{s['seconds'] * 1000:.0f} ms/step, {s['flops'] / 1e9:.1f} GFLOP, "
                        f"{s['gflops_per_s']:.1f} GFLOP/s = {s['fraction_of_matmul']:.0%} of matmul"))


def gpu_check(args: argparse.Namespace) -> None:
    """The CUDA tests, the memory plan against measured peaks, then the CUDA section of the bench,
    printed and (with --out) saved."""
    import subprocess
    import sys
    if not torch.cuda.is_available():
        raise SystemExit("--gpu-check needs a CUDA GPU; torch sees none")
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "tests/test_cuda.py"], cwd=Path(__file__).parent)
    memory_plan = gpu_memory_check()
    figures = {"tests_passed": tests.returncode == 0, "memory_plan": memory_plan, **cuda_figures(args.repeats)}
    print(json.dumps(figures, indent=2))
    print("\n".join(format_comparison(memory_plan, f"peak CUDA memory of a 512_96 training step at 512x512 on "
                                                    f"{torch.cuda.get_device_name()}")))
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2))
    if tests.returncode:
        raise SystemExit("tests/test_cuda.py failed (see above)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, parsed; tests/test_readme.py checks the documented commands against it."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions (median reported)")
    parser.add_argument("--out", default="", help="also write the figures to this JSON file")
    parser.add_argument("--compile", action="store_true",
                        help="also time both CPU training steps under torch.compile (3-4 more minutes)")
    parser.add_argument("--gpu-check", action="store_true",
                        help="on a CUDA machine: tests/test_cuda.py, the memory plan against measured peaks, then "
                             "the CUDA figures only (under 10 minutes)")
    parser.add_argument("--memory-plan", action="store_true",
                        help="only the memory plan's CPU check: planned activations against real CPU steps, and "
                             "the time of the 512_96 plan (5-10 minutes, about 5 GiB)")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args.gpu_check:
        gpu_check(args)
        return
    if args.memory_plan:
        check = cpu_memory_check()
        print("\n".join(format_comparison(check, "activations a CPU step saves for the backward")))
        print(f"the whole 512_96 plan (micro-batches 1-16+, bf16 fp16 fp32): {check['plan_512_96_s']:.1f} s")
        if args.out:
            Path(args.out).write_text(json.dumps(check, indent=2))
        return
    keep_freed_memory(torch.device("cpu"))      # as run.py, evaluate.py and predict.py run on the CPU
    r = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                    f"torch {torch.__version__}"}
    rows = []   # (figure, measured) lines of the printed table, in order
    for section in (training_figures, local_attention_figures, inference_figures, loading_and_memory_figures,
                    cuda_section):
        section(r, rows, args)
    width = max(len(k) for k, _ in rows)
    print(f"bench on {r['machine']}")
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    if args.out:
        Path(args.out).write_text(json.dumps(r, indent=2))


def training_figures(r: dict, rows: list, args: argparse.Namespace) -> None:
    """The matmul yardstick and the 256x256 training step: eager (and compiled), channels-last, its
    attention kernel and profile."""
    r["matmul_gflops"] = matmul_rate()
    rows.append(("fp32 matmul 2048x2048 (yardstick)", f"{r['matmul_gflops']:.1f} GFLOP/s"))

    for compiled in (False, True) if args.compile else (False,):
        tag = ", torch.compile" if compiled else ""
        key = "train_step_compiled" if compiled else "train_step"
        r.update(train_steps({key: make_train_step(WIDE32, 256, 2, compile=compiled)}, 2, args.repeats))
        add_step_row(rows, r, key, f"train step, widths 32..512, 256x256, batch 2{tag}")
    r.update(train_steps({"train_step_nhwc": make_train_step(WIDE32, 256, 2, channels_last=True)}, 2, args.repeats))
    r["channels_last_speedup_cpu"] = r["train_step"]["seconds"] / r["train_step_nhwc"]["seconds"]
    rows.append(("  the same step channels-last (--channels_last)",
                 f"{r['train_step_nhwc']['seconds'] * 1000:.0f} ms/step: {r['channels_last_speedup_cpu']:.2f}x as fast as NCHW"))
    step = make_train_step(WIDE32, 256, 2)[0]
    r["train_step"]["attention_kernels"] = attention_kernels(step)
    rows.append(("  its global attention runs on", ", ".join(r["train_step"]["attention_kernels"])))
    r["train_step"]["profile"] = step_profile(step)
    rows.append(("  where its time goes (self CPU time)", ", ".join(f"{op} {share:.0%}" for op, share in
                                                                  r["train_step"]["profile"])))


def local_attention_figures(r: dict, rows: list, args: argparse.Namespace) -> None:
    """The 512x512 step with local attention on every decoder level (the paper's untested bet) and on
    run.py's default levels at 512 (the three deepest, as the paper keeps it), each level alone, the
    profile, and the CPU allocator's effect on the plain step."""
    every, deepest = (dataclasses.replace(WIDE32, local_attention_levels=levels)
                      for levels in ((0, 1, 2, 3, 4), (2, 3, 4)))
    la_step = make_train_step(every, 512, 1)
    r.update(train_steps({"train_step_512": make_train_step(WIDE32, 512, 1),
                          "train_step_512_local_attention": la_step,
                          "train_step_512_local_attention_234": make_train_step(deepest, 512, 1)},
                         1, max(2, args.repeats // 2)))
    add_step_row(rows, r, "train_step_512", "train step, widths 32..512, 512x512, batch 1")
    plain = r["train_step_512"]
    r["local_attention_ratios"] = {}
    for key, label in (("train_step_512_local_attention", "every decoder level"),
                       ("train_step_512_local_attention_234", "levels 2 3 4 (run.py's default at 512)")):
        add_step_row(rows, r, key, f"  same, local attention on {label}")
        ratios = {"time": r[key]["seconds"] / plain["seconds"], "flops": r[key]["flops"] / plain["flops"]}
        r["local_attention_ratios"][key.removeprefix("train_step_512_")] = ratios
        rows.append(("    time ratio / FLOP ratio", f"{ratios['time']:.2f}x / {ratios['flops']:.2f}x"))
    r["local_attention_levels_s"] = local_attention_level_times(every, 512, max(2, args.repeats // 2))
    rows.append(("  local attention alone per level, forward + backward",
                 ", ".join(f"level {lvl} {s * 1000:.0f} ms" for lvl, s in r["local_attention_levels_s"].items())))
    r["train_step_512_local_attention"]["profile"] = step_profile(la_step[0])
    rows.append(("  where the step with it on every level spends its time", ", ".join(
        f"{op} {share:.0%}" for op, share in r["train_step_512_local_attention"]["profile"])))

    r["cpu_allocator"] = a = allocator_comparison(max(2, args.repeats // 2))
    a["speedup"] = a["glibc_default"]["seconds"] / a["kept"]["seconds"]
    rows.append(("  CPU allocator: the plain 512 step with freed memory kept",
                 f"{a['speedup']:.2f}x as fast as glibc's default ({a['kept']['seconds']:.2f} s against "
                 f"{a['glibc_default']['seconds']:.2f} s; kernel time {a['kept']['kernel_s']:.0f} s against "
                 f"{a['glibc_default']['kernel_s']:.0f} s; peak RSS {a['kept']['peak_rss'] / 2**30:.2f} GiB "
                 f"against {a['glibc_default']['peak_rss'] / 2**30:.2f} GiB)"))


def inference_figures(r: dict, rows: list, args: argparse.Namespace) -> None:
    """512_96 inference on PyTorch and onnxruntime with their profiles, and both post-processings."""
    onnx_times = onnx_inference_times(PRESETS["512_96"], 512, max(2, args.repeats // 2))
    r["inference_512_96_s"], r["inference_512_96_onnx"] = onnx_times["pytorch"], onnx_times
    rows.append(("inference 512_96, 512x512, per image, onnxruntime",
                 f"{onnx_times['onnxruntime']:.2f} s = {onnx_times['onnxruntime'] / onnx_times['pytorch']:.2f}x "
                 f"PyTorch (export {onnx_times['export_s']:.0f} s)"))
    for runtime in ("pytorch", "onnxruntime"):
        rows.append((f"  where {runtime} spends it", ", ".join(f"{op} {share:.0%}" for op, share in
                                                              onnx_times[f"{runtime}_profile"])))
    r["postprocess_512_s"] = postprocess_times(512, args.repeats)
    rows.append(("inference 512_96, 512x512, per image", f"{r['inference_512_96_s']:.2f} s"))
    for name, seconds in r["postprocess_512_s"].items():
        rows.append((f"post-processing {name}, 512x512, one core", f"{seconds:.3f} s = "
                     f"{seconds / r['inference_512_96_s']:.1%} of inference"))


def loading_and_memory_figures(r: dict, rows: list, args: argparse.Namespace) -> None:
    """Data loading per worker, and the 512_96 training step's peak memory (CUDA allocator or process RSS)."""
    with tempfile.TemporaryDirectory() as tmp:
        r["loading"] = loading_rates(Path(tmp), 24)
    d = r["loading"]
    rows.append(("decode 750x1101 JPEG to an RGB array", f"{d['decode_full_per_s']:.1f} images/s "
                 f"(PIL's bare decode: {d['decode_bare_per_s']:.1f}/s)"))
    for size in (512, 256):
        rate = d[f"samples_{size}_per_s"]
        rows.append((f"  training sample at {size}, one worker",
                     f"{rate:.1f} samples/s = {d['decode_full_per_s'] / rate:.2f}x the decode time"))
    rows.append(("  then on the device (here the CPU): jitter, normalise, boundary",
                 f"{d['prepare_256_per_sample_s'] * 1000:.2f} ms per 256 px sample"))

    if torch.cuda.is_available():
        r["peak_memory"] = {"plain": peak_memory(False), "checkpointing": peak_memory(True)}
        rows.append(("512_96 train step 512x512 batch 1, peak (CUDA allocator)",
                     f"{r['peak_memory']['plain'] / 2**30:.2f} GiB, with checkpointing "
                     f"{r['peak_memory']['checkpointing'] / 2**30:.2f} GiB"))
    else:   # as run.py's --keep_freed_memory auto: kept, except under gradient checkpointing
        r["peak_memory"] = {f"{'checkpointing' if ckpt else 'plain'}, {'kept' if keep else 'glibc_default'}":
                            peak_memory(ckpt, keep) for ckpt in (False, True) for keep in (True, False)}
        gib = {name: f"{peak / 2**30:.2f} GiB" for name, peak in r["peak_memory"].items()}
        rows.append(("512_96 train step 512x512 batch 1, peak process RSS",
                     f"freed memory kept {gib['plain, kept']} (glibc's default {gib['plain, glibc_default']}); "
                     f"with checkpointing {gib['checkpointing, kept']} ({gib['checkpointing, glibc_default']})"))


def cuda_section(r: dict, rows: list, args: argparse.Namespace) -> None:
    """On a CUDA machine, its training figures (bench.cuda_figures); nothing elsewhere."""
    if torch.cuda.is_available():
        r["cuda"] = cuda_figures(args.repeats)
        for key, c in r["cuda"].items():
            if isinstance(c, dict):
                mfu = f"MFU {c['mfu']:.0%}" if c["mfu"] else "MFU unknown (card not in bench.PEAK_FLOPS)"
                rows.append((f"CUDA 512_96 512x512 batch 8, {key}", f"{c['images_per_s']:.1f} images/s, {mfu}, "
                             f"attention on {', '.join(c['attention_kernels']) or 'no SDPA call'}"))
        rows.append(("CUDA local attention on the 3 deepest levels", f"{r['cuda']['local_attention_deepest_3_ratio']:.2f}x"))


if __name__ == "__main__":
    main()
