"""Train the UNet: the published staged recipe, gradient accumulation, resumable checkpoints.

    python run.py                      # demo: draws a synthetic data set, trains `tiny` on the CPU
    python run.py --data_dir DIR --preset 512_96 --bottleneck simple ...   # see README.md
    python run.py --plan --preset 512_96 [--plan_json plan.json]   # the GPU memory a step needs, then exit

Stages (each starts from --pretrained_model_path: weights only, fresh optimizer):
  1. from scratch, usually with --bottleneck simple     trains everything
  2. --upgrade_bottleneck                              fresh attention bottleneck, trains only it
  3. (no stage flag)                                   trains everything
  4. --upgrade_local_attention                         adds local attention, trains only it
  5. --model_use_local_attention                       trains everything, local attention on
--resume latest|PATH instead restores a whole run (optimizer, step, data position, RNG) and
continues it as if it had never stopped.

Each optimizer step takes --effective_batch_size images (over all processes), in forward passes of
--batch_size images per process (the micro-batch; `auto` picks the largest that memory.py plans to
fit the GPU). A step that runs out of memory is repeated on the same images at half the micro-batch,
which the run keeps from then on (its checkpoints too).

Every flag comes from a field of `TrainConfig` (or losses.LossConfig), where its default is
written once. Outputs in --output_dir: checkpoints/step-*.pt (the last --checkpoints_total_limit),
best.pt (best validation mIoU), the final weights --output_file_name, config.json and the
TensorBoard event files (in --output_dir itself, so `tensorboard --logdir` on the folder above shows
one run per stage, named by its folder). With --resume, a stage that has finished is left alone.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import shlex
import shutil
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

import memory
import postprocess
from config import (LOCAL_ATTENTION_MAX_SIDE, SYNTHETIC_DIR, TrainConfig, add_flags, check_config,
                    keeps_freed_memory)
from dataset import LAYOUTS, EmptySplitError, FashionDataset, get_layout
from device import (Dist, StopRequest, all_min, all_sum, on_rank0, pick_precision, setup, share_weights,
                    sum_gradients)
from evaluate import (BOUNDARY_THRESHOLD, boundary_counts, boundary_f_score, confusion_matrix, draw_panel,
                      iou_per_label, mean_iou, pixel_accuracy, subject_accuracy)
from images import prepare_batch
from labels import LabelSet, load_label_set
from losses import LossConfig, resolve_class_weights, segmentation_loss
from memory import DoesNotFit
from runstate import (FEEDING_STEPS, Progress, finished, log_step, log_validation, report_feeding, resume_path,
                      resume_progress, save_step_checkpoint, start_logging, training_state, weights_payload)
from synthetic import write_synthetic_dataset
from unet import (LEVELS, PRESETS, CheckpointError, UNet, UNetConfig, add_local_attention, model_from_checkpoint,
                  new_label_head, read_checkpoint, save_atomic, stage_parameters, swap_bottleneck, unwrap)

log = logging.getLogger("run")
# The post-processing in the validation panel: evaluate.py's default, the released algorithm.
VAL_POSTPROCESS = "published"


# ---- command line ------------------------------------------------------------------------------

def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """Flags -> TrainConfig. Only given flags are set, so dataclass defaults are the only ones."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], argument_default=argparse.SUPPRESS,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(parser, TrainConfig)
    add_flags(parser, LossConfig)
    argv = sys.argv[1:] if argv is None else argv
    if any(a.split("=")[0] == "--gradient_accumulation_steps" for a in argv):   # the flag of earlier versions
        parser.error("--gradient_accumulation_steps is gone: give the images per optimizer step, "
                     "--effective_batch_size (batch x accumulation x processes, 64 in the recipe); the "
                     "forward passes follow from --batch_size")
    given = vars(parser.parse_args(argv))
    loss_names = {f.name for f in dataclasses.fields(LossConfig)}
    try:
        loss = LossConfig(**{k: v for k, v in given.items() if k in loss_names})
        cfg = TrainConfig(**{k: v for k, v in given.items() if k not in loss_names}, loss=loss)
        check_config(cfg, given)
    except ValueError as e:
        parser.error(str(e))
    return cfg


# ---- model, stage and optimizer ----------------------------------------------------------------

def build_model(cfg: TrainConfig) -> tuple[UNet, str]:
    """The model this run starts from and the stage ("all", "bottleneck", "local_attention"). Its
    label set is the data's (`run_label_set`); a checkpoint of another label set keeps every weight
    but the label head, which starts fresh."""
    layout = get_layout(cfg.data_layout, cfg.mask_pattern)
    if not cfg.pretrained_model_path:
        config, labels = PRESETS[cfg.preset], run_label_set(cfg)
        config = dataclasses.replace(config, bottleneck=cfg.bottleneck or config.bottleneck,
                                     image_size=cfg.image_size or config.image_size, num_labels=len(labels),
                                     fit=layout.fit)
        return UNet(config, labels), "all"
    model = model_from_checkpoint(read_checkpoint(cfg.pretrained_model_path), cfg.pretrained_model_path)
    model.config = dataclasses.replace(model.config, image_size=cfg.image_size or model.config.image_size,
                                       fit=layout.fit)
    config, labels = model.config, run_label_set(cfg, model.label_set)
    if labels.labels != model.label_set.labels:
        if cfg.upgrade_bottleneck or cfg.upgrade_local_attention:
            raise ValueError(f"label set {labels.name} is not the checkpoint's ({model.label_set.name}): its fresh "
                             "label head must train, so fine-tune without --upgrade_bottleneck or "
                             "--upgrade_local_attention first")
        log.info("fine-tuning %s onto label set %s (%d labels): the label head starts fresh in place of the "
                 "checkpoint's for %s (%d labels); every other weight is loaded", cfg.pretrained_model_path,
                 labels.name, len(labels), model.label_set.name, len(model.label_set))
        new_label_head(model, labels)
    model.label_set = labels   # the same names; this run's palette
    levels = cfg.local_attention_levels or default_local_attention_levels(config)
    if cfg.upgrade_bottleneck:
        return swap_bottleneck(model), "bottleneck"
    if cfg.upgrade_local_attention:
        return add_local_attention(model, levels), "local_attention"
    if cfg.model_use_local_attention:
        return add_local_attention(model, levels), "all"
    return model, "all"


def run_label_set(cfg: TrainConfig, checkpoint: LabelSet | None = None) -> LabelSet:
    """The label set of the masks this run trains on: --labels; else that of a layout with its own (lip,
    cihp, atr); else the checkpoint's; else DeepFashion-MultiModal's."""
    layout = get_layout(cfg.data_layout, cfg.mask_pattern)
    if cfg.labels or layout.labels or checkpoint is None:
        return load_label_set(cfg.labels or layout.labels)
    return checkpoint


def default_local_attention_levels(config: UNetConfig) -> tuple[int, ...]:
    """The decoder levels (0 = full resolution) whose maps are at most LOCAL_ATTENTION_MAX_SIDE pixels
    wide at the model's training size: (2, 3, 4) for the 512 presets, every level at 128."""
    return tuple(level for level in range(LEVELS) if config.image_size >> level <= LOCAL_ATTENTION_MAX_SIDE)


def make_optimizer(model: UNet, stage: str, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over the stage's parameters; the rest are frozen. No decay on norms, biases, gains
    and relative-position biases."""
    for p in model.parameters():
        p.requires_grad_(False)
    named = stage_parameters(model, stage)
    for _, p in named:
        p.requires_grad_(True)
    decay = [p.ndim >= 2 and not n.endswith("position_bias") for n, p in named]
    groups = [{"params": [p for (_, p), d in zip(named, decay) if d], "weight_decay": cfg.weight_decay},
              {"params": [p for (_, p), d in zip(named, decay) if not d], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(0.9, 0.999),
                             fused=device.type == "cuda")


def lr_at(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then constant, linear or cosine decay to min_lr_ratio x peak."""
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    if cfg.lr_scheduler == "constant":
        return cfg.learning_rate
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    decay = 1 - progress if cfg.lr_scheduler == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.learning_rate * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * decay)


def epoch_windows(num_images: int, cfg: TrainConfig, epoch: int) -> list[list[int]]:
    """An epoch as optimizer steps, each a list of --effective_batch_size image indices (over all
    processes; `my_micro_batches` splits a step into this process's forward passes).

    The order depends only on (seed, epoch), so a resumed run sees the same steps, whatever its
    micro-batch. The last step of an epoch may hold fewer images: it is kept.
    """
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
    order = torch.randperm(num_images, generator=g).tolist()
    size = cfg.effective_batch_size
    return [order[i:i + size] for i in range(0, num_images, size)]


def my_micro_batches(step: list[int], d: Dist, size: int) -> tuple[list[list[int]], list[float]]:
    """This process's part of a step (step[rank::world]) in micro-batches of `size`, and each one's
    share of the step's images over all processes: weighting each loss by it makes the summed gradient
    the mean over the step's images however they were split (an uneven last step included).

    A process left with nothing (a step of fewer images than processes) runs one image with share 0,
    so that its loss parts and gradients exist for the exchange.
    """
    mine = step[d.rank::d.world]
    if not mine:
        return [step[:1]], [0.0]
    batches = [mine[i:i + size] for i in range(0, len(mine), size)]
    return batches, [len(b) / len(step) for b in batches]


# ---- starting or resuming ----------------------------------------------------------------------

def restore(cfg: TrainConfig, device: torch.device):
    """The model, its stage and the checkpoint to resume (None when starting a stage)."""
    resume = resume_path(cfg)
    if not resume:
        model, stage = build_model(cfg)
        return model.to(device), stage, None
    ckpt = read_checkpoint(resume)
    if "optimizer" not in ckpt:
        raise CheckpointError(f"{resume}: holds weights only, not a training state to resume; "
                              "start a new stage from it with --pretrained_model_path")
    model = model_from_checkpoint(ckpt, str(resume))
    if run_label_set(cfg, model.label_set).labels != model.label_set.labels:
        raise CheckpointError(f"{resume}: a run of label set {model.label_set.name}; this one's is "
                              f"{run_label_set(cfg, model.label_set).name} (--labels / --data_layout)")
    log.info("resuming %s at step %d (epoch %d)", resume, ckpt["step"], ckpt["epoch"])
    return model.to(device), ckpt["stage"], ckpt


def pick_micro_batch(cfg: TrainConfig, model: UNet, stage: str, dtype, device: torch.device, d: Dist,
                     progress: Progress) -> int:
    """The micro-batch the run starts with, the same on every process (the smallest choice): --batch_size,
    or for auto memory.auto_micro_batch; no larger than where running out of memory left a resumed run.
    Logged with the reason; DoesNotFit (saying what would help) when not even 1 fits."""
    if cfg.effective_batch_size % d.world:
        raise ValueError(f"--effective_batch_size {cfg.effective_batch_size} does not split evenly over "
                         f"{d.world} processes")
    per_process = cfg.effective_batch_size // d.world
    if cfg.batch_size == "auto":
        precision = {v: k for k, v in memory.AUTOCAST_DTYPES.items()}[dtype]
        micro, why = memory.auto_micro_batch(per_process, device, lambda: memory.step_memory(
            model.config, stage, model.config.image_size, precision, cfg.gradient_checkpointing, cfg.loss))
    else:
        micro, why = int(cfg.batch_size), "--batch_size"
    if micro > per_process:
        raise ValueError(f"--batch_size {micro} is more than the {per_process} images each of {d.world} "
                         f"process(es) takes a step (--effective_batch_size {cfg.effective_batch_size})")
    if progress.out_of_memory and progress.out_of_memory[-1][1] < micro:
        at, micro = progress.out_of_memory[-1]
        why = f"the checkpoint's, since running out of memory at step {at}"
    micro = all_min(micro, d, device)
    if not micro:
        raise DoesNotFit(f"not even micro-batch 1 fits ({why}); "
                         + memory.out_of_memory_help(model.config, cfg.gradient_checkpointing))
    log.info("micro-batch %d (%s): %d forward passes of up to %d images on each of %d process(es) make a step of "
             "%d images", micro, why, -(-per_process // micro), micro, d.world, cfg.effective_batch_size)
    return micro


# ---- data --------------------------------------------------------------------------------------

def make_datasets(cfg: TrainConfig, model: UNet, d: Dist) -> tuple[FashionDataset, FashionDataset | None]:
    data_dir = Path(cfg.data_dir)
    layout = get_layout(cfg.data_layout, cfg.mask_pattern)
    if cfg.data_dir == SYNTHETIC_DIR and layout == LAYOUTS["deepfashion-mm"] and d.main and not data_dir.exists():
        log.info("drawing a synthetic data set of %d images in %s (first use)", cfg.synthetic_images, data_dir)
        partial = data_dir.with_name(data_dir.name + ".partial")   # renamed when complete: never half a set
        shutil.rmtree(partial, ignore_errors=True)
        write_synthetic_dataset(partial, cfg.synthetic_images, seed=0)
        partial.rename(data_dir)
    if d.world > 1:
        dist.barrier()                                  # the others wait for rank 0's data set
    mc = model.config
    common = dict(image_size=mc.image_size, size_multiple=mc.size_multiple, seed=cfg.seed,
                  test_split=cfg.test_split or None, val_fraction=cfg.val_fraction, skip_bad=cfg.skip_bad_samples,
                  layout=layout, labels=model.label_set, test_fraction=cfg.test_fraction)
    train = FashionDataset(data_dir, "train", mode=layout.train_mode, color_jitter=cfg.color_jitter, **common)
    val = None
    if cfg.val_fraction > 0:
        try:
            val = FashionDataset(data_dir, "val", mode=layout.eval_mode, **common)
        except EmptySplitError as e:   # a set too small to hold out an outfit: train on, unvalidated
            if d.main:
                log.warning("no validation, training goes on without it (no best.pt, no val metrics): %s", e)
    return train, val


def make_loader(dataset: FashionDataset, cfg: TrainConfig, batch_sampler, device: torch.device) -> DataLoader:
    return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=cfg.num_workers,
                      pin_memory=device.type == "cuda")


def to_device(batch: dict, model, device: torch.device) -> tuple[torch.Tensor, ...]:
    """(image, mask, boundary target) on the device, prepared there from the uint8 samples; the image
    in the model's memory layout (channels-last or not, as --channels_last chose)."""
    plain = unwrap(model)
    image, mask, boundary = prepare_batch(batch, plain.config.mean, plain.config.std, device)
    nhwc = plain.encoder[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    image = image.contiguous(memory_format=torch.channels_last if nhwc else torch.contiguous_format)
    if isinstance(model, torch._dynamo.eval_frame.OptimizedModule):
        # one compiled graph for every batch size: a short last micro-batch or a process's filler image
        # would otherwise each compile the whole model again (sizes 0 and 1 are specialised unless unbacked)
        torch._dynamo.decorators.mark_unbacked(image, 0)
    return image, mask, boundary


# ---- validation --------------------------------------------------------------------------------

@torch.no_grad()
def validate(model, dataset: FashionDataset, cfg: TrainConfig, device: torch.device, autocast, d: Dist,
             batch_size: int) -> tuple[dict, np.ndarray | None]:
    """Validation figures over the whole set, each process scoring its share and the sums added up:
    the loss and its parts (per image), and from the summed counts pixel and subject accuracy,
    per-label IoU, mIoU and the boundary F-score (as evaluate.py computes them). On rank 0 also an
    (H, W, 3) uint8 panel of the first --val_panels images (evaluate.draw_panel). Batches of
    `batch_size` (the run's micro-batch), halved where one runs out of memory."""
    model.eval()
    mine = list(range(d.rank, len(dataset), d.world))
    loads = [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]
    label_set = unwrap(model).label_set
    num_labels = len(label_set)
    cm = torch.zeros(num_labels, num_labels, dtype=torch.int64, device=device)
    # segmentation_loss's parts; a fixed list, as a process without images adds its zeros too
    names = ["ce", "boundary", *(["dice"] if cfg.loss.dice_weight > 0 else []), "total"]
    losses = torch.zeros(len(names), device=device, dtype=torch.float64)
    edges = np.zeros(4, dtype=np.int64)   # evaluate.boundary_counts, summed
    rows = []
    for loaded in make_loader(dataset, cfg, loads, device):
        done = 0
        while done < len(loaded["index"]):
            batch = {k: v[done:done + batch_size] for k, v in loaded.items()}
            result = validation_forward(model, batch, cfg, device, autocast)
            if result is None:
                batch_size = memory.halve_micro_batch(batch_size, "validation", unwrap(model).config,
                                                      cfg.gradient_checkpointing, device,
                                                      Path(cfg.output_dir) / "checkpoints")
                continue
            mask, boundary, out, parts = result
            done += len(mask)
            losses += torch.stack([parts[k].double() for k in names]) * len(mask)
            cm += confusion_matrix(out.mask_logits.argmax(1), mask, num_labels)       # argmax: (B, H, W)
            edge_probs = out.boundary_logits.float().sigmoid().cpu()                   # (B, H, W)
            for predicted, true in zip((edge_probs >= BOUNDARY_THRESHOLD).numpy(), (boundary.cpu() > 0).numpy()):
                edges += boundary_counts(predicted, true)
            if d.main and len(rows) < cfg.val_panels:
                rows += panel_rows(batch["image"], mask, out, cfg.val_panels - len(rows))
    model.train()
    cm = all_sum(cm, d).cpu()
    losses = all_sum(losses, d).cpu() / len(dataset)
    edges = all_sum(torch.from_numpy(edges).to(device), d).cpu().numpy()
    metrics = {("loss" if k == "total" else f"loss_{k}"): v for k, v in zip(names, losses.tolist())}
    metrics |= {"pixel_accuracy": pixel_accuracy(cm), "subject_accuracy": subject_accuracy(cm), "mIoU": mean_iou(cm),
                "boundary_f_score": boundary_f_score(edges), "IoU": dict(zip(label_set.labels, iou_per_label(cm).tolist()))}
    return metrics, np.asarray(draw_panel(rows, label_set)) if rows else None


def validation_forward(model, batch: dict, cfg: TrainConfig, device: torch.device, autocast):
    """(mask, boundary target, model output, loss parts) of a validation batch; None where it runs out
    of memory (its tensors freed as this returns)."""
    try:
        image, mask, boundary = to_device(batch, model, device)
        with autocast:
            out = model(image)
            _, parts = segmentation_loss(out.mask_logits, out.boundary_logits, mask, boundary, cfg.loss)
        return mask, boundary, out, parts
    except torch.OutOfMemoryError:
        return None


def panel_rows(image: torch.Tensor, mask: torch.Tensor, out, count: int) -> list[tuple]:
    """evaluate.draw_panel rows for the first `count` images of a batch: the uint8 sample, and as
    columns the truth, the argmax, the VAL_POSTPROCESS post-processing and the boundary probability."""
    rows = []
    for i in range(min(count, len(image))):
        probs = out.mask_logits[i].float().softmax(0).cpu().numpy()       # (L, H, W)
        edge = out.boundary_logits[i].float().sigmoid().cpu().numpy()     # (H, W)
        maps = {"truth": mask[i].cpu().numpy(), "prediction": probs.argmax(0),
                "post-processed": postprocess.run(VAL_POSTPROCESS, probs, edge)}
        rows.append((image[i].permute(1, 2, 0).numpy(), maps, edge))
    return rows


# ---- the training step -------------------------------------------------------------------------

class StepImages:
    """This process's images of one optimizer step, drawn from the epoch's loader as the forward passes
    need them (the loader works ahead meanwhile) and kept for the step: repeated at a smaller
    micro-batch after running out of memory, the step reads the same images again. `wait`: the seconds
    spent waiting for the loader."""

    def __init__(self, loader: Iterator[dict], shares: list[float]):
        self.loader, self.shares, self.loaded, self.wait = loader, shares, [], 0.0

    def micro_batches(self, size: int) -> Iterator[tuple[dict, float]]:
        """(batch, its share of the step's images over all processes), `size` images at a time; the
        loader's batches split where they hold more."""
        for i, share in enumerate(self.shares):
            if i == len(self.loaded):
                start = time.perf_counter()
                self.loaded.append(next(self.loader))
                self.wait += time.perf_counter() - start
            loaded, n = self.loaded[i], len(self.loaded[i]["index"])
            for a in range(0, n, size):
                yield {k: v[a:a + size] for k, v in loaded.items()}, share * min(size, n - a) / n


def accumulate_gradients(net, micro_batches: Iterable[tuple[dict, float]], loss_config: LossConfig,
                         device: torch.device, autocast, scaler: torch.amp.GradScaler) -> dict[str, torch.Tensor]:
    """Forward and backward over the (batch, share) micro-batches of one optimizer step.

    A share is the micro-batch's share of the step's images over all processes: weighting each loss by
    it makes the gradient, summed over micro-batches and processes, the mean over all images however
    they were split, so batch 4 gives the gradient of 2 micro-batches of 2. Returns this process's
    loss parts, weighted alike.
    """
    parts = {}
    for batch, share in micro_batches:
        image, mask, boundary = to_device(batch, net, device)
        with autocast:
            out = net(image)
            loss, loss_parts = segmentation_loss(out.mask_logits, out.boundary_logits, mask, boundary, loss_config)
        scaler.scale(loss * share).backward()
        for k, v in loss_parts.items():
            parts[k] = parts.get(k, 0.0) + v * share
    return parts


def step_gradients(net, images: StepImages, trained: list, progress: Progress, cfg: TrainConfig,
                   device: torch.device, autocast, scaler: torch.amp.GradScaler, d: Dist) -> dict[str, torch.Tensor]:
    """The step's gradients (in `trained`) and loss parts, summed over the processes, at the run's
    micro-batch. Where any process runs out of memory, every process drops the step's gradients, and
    halves the micro-batch (progress keeps it) and repeats the step on the same images."""
    while True:
        parts = None
        try:
            parts = accumulate_gradients(net, images.micro_batches(progress.micro_batch), cfg.loss, device,
                                         autocast, scaler)
        except torch.OutOfMemoryError:
            pass   # handled below, once the error and the step's tensors it holds are gone
        if not all_sum(torch.tensor([parts is None], device=device, dtype=torch.int32), d).item():
            sum_gradients(trained, d)
            return {k: all_sum(v.detach().clone(), d) for k, v in parts.items()}
        parts = None
        for p in trained:
            p.grad = None
        progress.micro_batch = memory.halve_micro_batch(progress.micro_batch, f"step {progress.step + 1}",
                                                        unwrap(net).config, cfg.gradient_checkpointing, device,
                                                        Path(cfg.output_dir) / "checkpoints")
        progress.out_of_memory.append([progress.step + 1, progress.micro_batch])


def optimizer_step(optimizer, scaler: torch.amp.GradScaler, trained: list, parts: dict, cfg: TrainConfig,
                   step: int, bad_steps: int) -> tuple[float, int]:
    """Unscale, clip and step, skipping a step whose loss or gradient is not finite (an fp16 overflow
    included: the scaler then halves its scale); the gradient norm and the bad steps in a row, stopping
    at --max_bad_steps. `step` counts this one."""
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(trained, cfg.max_grad_norm or math.inf).item()
    finite = bool(torch.isfinite(parts["total"])) and math.isfinite(grad_norm)
    if finite:
        scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    if finite:
        return grad_norm, 0
    report = ", ".join(f"{k} {v.item():.4g}" for k, v in parts.items())
    log.warning("step %d: non-finite loss or gradient (%s, grad norm %.4g): step skipped", step, report, grad_norm)
    if bad_steps + 1 >= cfg.max_bad_steps:
        raise FloatingPointError(f"step {step}: {bad_steps + 1} steps in a row with a non-finite loss or gradient "
                                 f"({report}); stopping. The last good checkpoint is in "
                                 f"{Path(cfg.output_dir) / 'checkpoints'}")
    return grad_norm, bad_steps + 1


# ---- a stage -----------------------------------------------------------------------------------

def train(cfg: TrainConfig) -> Path:
    """Run (or resume) one training stage; returns the path of the final weights. The training loop is
    kept whole (over 60 lines) so that one step reads top to bottom in one place."""
    d, device = setup(cfg.device, keeps_freed_memory(cfg))
    torch.manual_seed(cfg.seed)
    dtype = pick_precision(cfg.mixed_precision, device)
    model, stage, ckpt = restore(cfg, device)
    cfg = dataclasses.replace(cfg, loss=resolve_class_weights(cfg.loss, model.label_set.labels, model.label_set.name))
    optimizer, scaler = prepare(model, stage, cfg, device, dtype, d)
    progress = resume_progress(ckpt, cfg, optimizer, scaler, device) if ckpt else Progress()

    train_set, val_set = make_datasets(cfg, model, d)
    total_steps = cfg.max_steps or math.ceil(cfg.epochs * math.ceil(len(train_set) / cfg.effective_batch_size))
    final = Path(cfg.output_dir) / cfg.output_file_name
    if finished(cfg, ckpt, total_steps, final):
        if d.world > 1:
            dist.destroy_process_group()
        return final
    progress.micro_batch = pick_micro_batch(cfg, model, stage, dtype, device, d, progress)
    net = torch.compile(model) if cfg.compile else model
    autocast = torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()
    trained = [p for p in model.parameters() if p.requires_grad]
    writer = start_logging(cfg, model, stage, progress.step) if d.main else None
    log.info("%s: %d training / %d validation images, stage %r (%.2f M trained parameters), "
             "%d steps of %d images on %s x %d", cfg.data_dir, len(train_set), len(val_set or []), stage,
             sum(p.numel() for p in trained) / 1e6, total_steps, cfg.effective_batch_size, device, d.world)

    stop, bad_steps, timings = StopRequest(), 0, []
    bar = tqdm(total=total_steps, initial=progress.step, unit="step", dynamic_ncols=True, disable=not d.main)
    while progress.step < total_steps:
        train_set.set_epoch(progress.epoch)
        done = -(-progress.epoch_images // cfg.effective_batch_size)   # steps of this epoch already taken
        steps = epoch_windows(len(train_set), cfg, progress.epoch)[done:]
        splits = [my_micro_batches(step, d, progress.micro_batch) for step in steps]
        loader = iter(make_loader(train_set, cfg, [b for batches, _ in splits for b in batches], device))
        for step, (_, shares) in zip(steps, splits):
            if progress.step >= total_steps:
                break
            start = time.perf_counter()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            lr = lr_at(progress.step, total_steps, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            images = StepImages(loader, shares)
            parts = step_gradients(net, images, trained, progress, cfg, device, autocast, scaler, d)
            grad_norm, bad_steps = optimizer_step(optimizer, scaler, trained, parts, cfg, progress.step + 1, bad_steps)
            progress.step, progress.epoch_images = progress.step + 1, progress.epoch_images + len(step)
            timing = (len(step), time.perf_counter() - start, images.wait,
                      torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None)
            if d.main:
                log_step(writer, bar, progress.step, parts, lr, grad_norm, timing)
            if len(timings) < FEEDING_STEPS:      # this process's first steps say whether the data keeps up
                timings.append(timing)
                if len(timings) == FEEDING_STEPS and d.main:
                    report_feeding(timings, cfg.num_workers, device)

            stopping = bool(all_sum(torch.tensor([stop.signal], device=device), d).item())
            if progress.step % cfg.checkpointing_steps == 0 or progress.step == total_steps or stopping:
                validate_and_save(model, optimizer, scaler, cfg, stage, progress, val_set, writer, autocast, device, d)
            if stopping:
                raise SystemExit(f"stopped by a signal at step {progress.step}; continue with --resume latest")
        else:
            progress.epoch, progress.epoch_images = progress.epoch + 1, 0
    bar.close()
    finish(model, cfg, stage, progress, final, writer, val_set is not None, device, d)
    return final


def prepare(model: UNet, stage: str, cfg: TrainConfig, device: torch.device, dtype: torch.dtype | None,
            d: Dist) -> tuple[torch.optim.AdamW, torch.amp.GradScaler]:
    """The model set to train as the flags say (memory layout, gradient checkpointing; rank 0's weights
    on every process), AdamW over the stage's parameters and the loss scaler (fp16 only)."""
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    model.set_gradient_checkpointing(cfg.gradient_checkpointing)
    share_weights(model, d)
    # fp16 loss scale: from torch's 2^16 the published model's first 5 steps overflowed (measured on the
    # tiny preset's first steps), each a bad step; 2^11 was the first to fit
    return make_optimizer(model, stage, cfg, device), torch.amp.GradScaler(
        device.type, init_scale=2.0 ** 11, enabled=dtype == torch.float16)


def finish(model: UNet, cfg: TrainConfig, stage: str, progress: Progress, final: Path, writer: SummaryWriter | None,
           validated: bool, device: torch.device, d: Dist) -> None:
    """The final weights (from rank 0), TensorBoard's file closed, a word where nothing was validated,
    the process group left."""
    on_rank0(lambda: save_atomic(weights_payload(model, cfg, stage, progress.step, progress.metrics), final), d, device)
    if d.main:
        writer.close()
        if not validated:   # a warning where validation was asked for
            why = "--val_fraction 0" if cfg.val_fraction == 0 else "the validation split is empty, see above"
            log.log(logging.INFO if cfg.val_fraction == 0 else logging.WARNING,
                    "not validated (%s): no best.pt; %s holds the last step's weights", why, final)
    if d.world > 1:
        dist.destroy_process_group()


def validate_and_save(model: UNet, optimizer, scaler, cfg: TrainConfig, stage: str, progress: Progress,
                      val_set: FashionDataset | None, writer: SummaryWriter | None, autocast, device: torch.device,
                      d: Dist) -> None:
    """A checkpoint: validation (TensorBoard, best.pt when mIoU improved), then the step checkpoint."""
    output_dir = Path(cfg.output_dir)
    if val_set is not None:   # eager: no graph for evaluation
        progress.metrics, panel = validate(model, val_set, cfg, device, autocast, d, progress.micro_batch)
        progress.best = on_rank0(lambda: log_validation(writer, progress.metrics, panel, progress.step, progress.best,
                                                        model, cfg, stage), d, device)
    if d.main:
        writer.flush()   # what a resume would not write again is on disk before the checkpoint
    on_rank0(lambda: save_step_checkpoint(training_state(model, optimizer, scaler, cfg, stage, progress), output_dir,
                                          cfg.checkpoints_total_limit), d, device)


def print_plan(cfg: TrainConfig) -> None:
    """--plan: the memory plan of the run these flags describe (its model built on the meta device, no
    weights allocated), printed and with --plan_json written."""
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")   # a checkpoint's weights copied into meta tensors: nothing to do
        model, stage = build_model(cfg)
    loss = resolve_class_weights(cfg.loss, model.label_set.labels, model.label_set.name)
    mc = model.config
    result = memory.plan(mc, stage, mc.image_size, cfg.gradient_checkpointing, loss)
    levels = f"local attention on levels {' '.join(map(str, mc.local_attention_levels))}" \
        if mc.local_attention_levels else "no local attention"
    print(f"{cfg.pretrained_model_path or 'preset ' + cfg.preset}: {mc.bottleneck} bottleneck, {levels}, "
          f"stage {stage!r} at {mc.image_size}x{mc.image_size}, gradient checkpointing "
          f"{'on' if cfg.gradient_checkpointing else 'off'}\n{memory.format_plan(result)}\n"
          "not planned: torch.compile (usually less); --batch_size auto fits the memory CUDA reports free")
    if cfg.plan_json:
        memory.write_plan(result, Path(cfg.plan_json))
        print(f"written: {cfg.plan_json}")


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = parse_config(argv)
    try:
        if cfg.plan:
            return print_plan(cfg)
        final = train(cfg)
    except (ValueError, FloatingPointError, OSError, DoesNotFit) as e:   # DataError, CheckpointError included
        sys.exit(f"error: {e}")
    if int(os.environ.get("RANK", "0")) == 0:
        q = shlex.quote   # paths with spaces (a Drive folder) copy into a shell as they are
        output_dir = Path(cfg.output_dir).absolute()
        print(f"\nfinal weights: {q(str(final))}\ncheckpoints:   {q(str(Path(cfg.output_dir) / 'checkpoints'))}"
              f"\nTensorBoard:   tensorboard --logdir {q(str(output_dir.parent))}   (every run in the folder above)"
              f"\nevaluate:      python evaluate.py --checkpoint {q(str(final))} --data_dir {q(cfg.data_dir)}")


if __name__ == "__main__":
    main()
