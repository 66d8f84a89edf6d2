"""A training run's state and what it writes: where it stands (`Progress`), the step checkpoints that
hold it (written atomically, the oldest pruned, the newest found again) and a resume from one, best.pt
and the final weights, config.json, TensorBoard's record of each step and validation, and whether the
data loading keeps up (`report_feeding`). The training loop is run.py's."""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summary
from tqdm import tqdm

from config import TrainConfig
from memory import GIB
from unet import UNet, model_checkpoint, read_checkpoint, save_atomic

log = logging.getLogger("run")
# The first steps a process times to say whether the data loading keeps up, and the share of the time
# spent waiting for data above which it warns.
FEEDING_STEPS, FEEDING_WARNING = 20, 0.10


@dataclass
class Progress:
    """Where a run stands, as its checkpoints keep it: step, epoch and images of the epoch done, best
    validation mIoU and the last validation figures, the micro-batch, and where running out of memory
    halved it ([step, micro-batch after it], oldest first)."""
    step: int = 0
    epoch: int = 0
    epoch_images: int = 0
    best: float = -1.0
    metrics: dict = field(default_factory=dict)
    micro_batch: int = 0
    out_of_memory: list = field(default_factory=list)


def step_checkpoints(output_dir: Path) -> list[Path]:
    """step-*.pt files, oldest first."""
    found = [(int(m.group(1)), p) for p in (output_dir / "checkpoints").glob("step-*.pt")
             if (m := re.fullmatch(r"step-(\d+)\.pt", p.name))]
    return [p for _, p in sorted(found)]


def resume_path(cfg: TrainConfig) -> Path | None:
    if cfg.resume != "latest":
        return Path(cfg.resume) if cfg.resume else None
    found = step_checkpoints(Path(cfg.output_dir))
    if not found:
        log.info("--resume latest: no checkpoint in %s/checkpoints yet, starting fresh", cfg.output_dir)
    return found[-1] if found else None


def weights_payload(model, cfg: TrainConfig, stage: str, step: int, metrics: dict) -> dict:
    """best.pt and the final weights: the model, how it was trained, and its validation figures."""
    return {**model_checkpoint(model), "train_config": dataclasses.asdict(cfg), "stage": stage,
            "step": step, "val": metrics}


def training_state(model, optimizer, scaler, cfg: TrainConfig, stage: str, progress: Progress) -> dict:
    """Everything needed to continue the run exactly, and the last validation figures (which a resumed
    run hands on to its final weights); plain data for weights_only loading."""
    return {**weights_payload(model, cfg, stage, progress.step, progress.metrics),
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "epoch": progress.epoch,
            "epoch_images": progress.epoch_images, "step_images": cfg.effective_batch_size,
            "best_miou": progress.best, "micro_batch": progress.micro_batch,
            "out_of_memory": progress.out_of_memory, "rng": {"torch": torch.get_rng_state()}}


def save_step_checkpoint(state: dict, output_dir: Path, limit: int) -> Path:
    path = output_dir / "checkpoints" / f"step-{state['step']:07d}.pt"
    save_atomic(state, path)
    for old in step_checkpoints(output_dir)[:-limit]:   # only after the new one is safely written
        old.write_bytes(b"")    # cut first: Google Drive keeps deleted files in its trash at full size
        # (best.pt and the final weights are replaced by a rename, without the cut)
        old.unlink()
    return path


def resume_progress(ckpt: dict, cfg: TrainConfig, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                    device: torch.device) -> Progress:
    """A resumed run's position, optimizer and loss-scaler state (fitted to this run's device and
    precision) and random state; a warning where a flag changes what the steps would be."""
    optimizer.load_state_dict(ckpt["optimizer"])
    for group in optimizer.param_groups:          # a run moved from the CPU to CUDA gets the fused step
        group["fused"] = device.type == "cuda"
    if scaler.is_enabled() and ckpt["scaler"]:
        scaler.load_state_dict(ckpt["scaler"])
    elif scaler.is_enabled() or ckpt["scaler"]:
        log.info("the checkpoint was trained %s fp16: the loss scale %s", "without" if scaler.is_enabled() else "with",
                 "starts fresh" if scaler.is_enabled() else "is not needed now")
    torch.set_rng_state(ckpt["rng"]["torch"])
    changed = [k for k in ("seed", "test_split", "val_fraction") if ckpt["train_config"].get(k) != getattr(cfg, k)]
    if ckpt["step_images"] != cfg.effective_batch_size:
        changed.append(f"images per step ({ckpt['step_images']} -> {cfg.effective_batch_size})")
    if changed:   # a resumed run equals one never interrupted only with the same data, order and steps
        log.warning("resuming with changed %s: the run will not match one never interrupted", ", ".join(changed))
    return Progress(ckpt["step"], ckpt["epoch"], ckpt["epoch_images"], ckpt["best_miou"], ckpt["val"],
                    out_of_memory=ckpt.get("out_of_memory", []))


def finished(cfg: TrainConfig, ckpt: dict | None, total_steps: int, final: Path) -> bool:
    """With --resume: True (and says so) when the stage has finished, its final weights in place and its
    newest checkpoint (or, none left, the final weights) at the last step; nothing is then written."""
    if not cfg.resume or not final.is_file():
        return False
    step = ckpt["step"] if ckpt else read_checkpoint(final)["step"]
    if step < total_steps:
        return False
    log.info("%s: this stage has finished (step %d of %d); %s and its validation figures stay as they are. "
             "Nothing to do (to train it again, give a new --output_dir)", cfg.output_dir, step, total_steps, final)
    return True


def start_logging(cfg: TrainConfig, model: UNet, stage: str, step: int) -> SummaryWriter:
    """config.json and the TensorBoard writer (fails early when the folder is not writable). Events are
    written from step + 1 on: readers drop whatever an earlier, interrupted run logged from there, so a
    resumed run shows each step once. A fresh run (step 0) logs its configuration, as a text panel and
    as hparams, and drops everything earlier in the folder."""
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    config = {"train": dataclasses.asdict(cfg), "model": dataclasses.asdict(model.config), "stage": stage}
    (output_dir / "config.json").write_text(json.dumps(config, indent=2))
    writer = SummaryWriter(str(output_dir), purge_step=step + 1 if step else 0)
    if not step:
        text = json.dumps(config, indent=2)
        writer.add_text("config", "    " + text.replace("\n", "\n    "), 0)   # indented: Markdown code
        flat = {"stage": stage, **{f"model.{k}": v for k, v in config["model"].items()},
                **{k: v for k, v in config["train"].items() if k != "loss"},
                **{f"loss.{k}": v for k, v in config["train"]["loss"].items()}}
        hparams = {k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v) for k, v in flat.items()}
        metrics = dict.fromkeys(f"val/{k}" for k in ("mIoU", "pixel_accuracy", "subject_accuracy",
                                                     "boundary_f_score", "loss"))
        for summary in hparams_summary(hparams, metrics):   # in this run, not add_hparams' own sub-run
            writer.file_writer.add_summary(summary, 0)
    return writer


def log_validation(writer: SummaryWriter, metrics: dict, panel, step: int, best: float, model: UNet,
                   cfg: TrainConfig, stage: str) -> float:
    """TensorBoard scalars (val/..., per-label IoU as val_iou/<label>) and panel, a console line, and
    best.pt when mIoU improved."""
    for k, v in metrics.items():
        if k != "IoU":
            writer.add_scalar(f"val/{k}", v, step)
    for label, iou in metrics["IoU"].items():
        if not math.isnan(iou):   # NaN: neither in the truth nor predicted
            writer.add_scalar(f"val_iou/{label.replace(' ', '_')}", iou, step)
    if panel is not None:
        writer.add_image("val/panel", panel, step, dataformats="HWC")
    shown = ("loss", "pixel_accuracy", "subject_accuracy", "mIoU", "boundary_f_score")
    tqdm.write(f"step {step}: " + ", ".join(f"val {k} {metrics[k]:.4f}" for k in shown))
    if metrics["mIoU"] <= best:
        return best
    save_atomic(weights_payload(model, cfg, stage, step, metrics), Path(cfg.output_dir) / "best.pt")
    return metrics["mIoU"]


def log_step(writer: SummaryWriter, bar: tqdm, step: int, parts: dict, lr: float, grad_norm: float,
             timing: tuple[int, float, float, int | None]) -> None:
    """A step's TensorBoard scalars (train/...) and the progress bar. timing: (images, seconds, seconds
    spent waiting for data, peak CUDA memory in bytes or None)."""
    images, seconds, wait, peak = timing
    scalars = {**{k: v.item() for k, v in parts.items()}, "lr": lr, "grad_norm": grad_norm,
               "img_per_s": images / seconds, "data_wait_share": wait / seconds}
    if peak is not None:
        scalars["peak_memory_gib"] = peak / GIB
    for k, v in scalars.items():
        writer.add_scalar(f"train/{k}", v, step)
    bar.update(1)
    bar.set_postfix(loss=f"{scalars['total']:.3f}", lr=f"{lr:.1e}", img_s=f"{scalars['img_per_s']:.1f}")


def report_feeding(timings: list[tuple[int, float, float, int | None]], num_workers: int, device: torch.device) -> None:
    """Whether the data loading keeps up, over this process's first FEEDING_STEPS steps but the first
    (which sets up): images/s, the share of the time spent waiting for data and the peak memory
    (CUDA), and a warning naming a --num_workers to try when the wait is over FEEDING_WARNING."""
    images, seconds, wait = (sum(t[i] for t in timings[1:]) for i in range(3))
    share = wait / seconds
    peak = f", peak memory {max(t[3] for t in timings) / GIB:.2f} GiB" if device.type == "cuda" else ""
    tqdm.write(f"steps 2-{len(timings)} of this run: {images / seconds:.1f} images/s, "
               f"{share:.0%} of the time waiting for data{peak}")
    if share > FEEDING_WARNING:
        # loading a step takes num_workers x the step time in one worker (the main process: the wait);
        # workers enough to load it in the time the step computes, with a quarter to spare
        needed = (num_workers or share) / (1 - share)
        suggestion = max(num_workers + 1, math.ceil(1.25 * needed))
        log.warning("the %s waits for data %.0f%% of the time: try --num_workers %d (now %d; this machine has "
                    "%d CPU cores)", "GPU" if device.type == "cuda" else "training", 100 * share, suggestion,
                    num_workers, os.cpu_count() or 1)
