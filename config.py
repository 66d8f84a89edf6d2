"""A training run's settings: `TrainConfig`, whose fields are run.py's flags (each default written
once; losses.LossConfig adds the loss's), how a field becomes a flag (`add_flags`), and the
combinations of flags refused before anything runs (`check_config`). run.parse_config reads them."""
from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field

from dataset import LAYOUTS, get_layout
from device import PRECISIONS
from labels import DEFAULT_LABELS, load_label_set, shipped_names
from losses import LossConfig, resolve_class_weights
from memory import CPU_MICRO_BATCH, MARGIN_BYTES, MARGIN_FRACTION
from unet import PRESETS

SYNTHETIC_DIR = "data/synthetic"
# Local attention costs most in the shallow, high-resolution levels; the paper keeps it to the three
# deepest at 512x512, the levels whose maps are at most this wide.
LOCAL_ATTENTION_MAX_SIDE = 128

def arg(default, help: str, **kwargs):
    """A dataclass field that also describes its command-line flag."""
    return field(default=default, metadata={"help": help, **kwargs})


@dataclass
class TrainConfig:
    # data
    data_dir: str = arg(SYNTHETIC_DIR, "data set root (DeepFashion-MultiModal: images/, segm/); the default "
                        "synthetic folder is drawn on first use")
    data_layout: str = arg("deepfashion-mm", "how --data_dir keeps photos and masks: deepfashion-mm, lip, cihp, "
                           "atr, or folders (images/ + masks/ named by --mask_pattern); README 'Label sets'",
                           choices=list(LAYOUTS))
    mask_pattern: str = arg("", "a photo's mask file name in masks/, {stem} the photo's name without its "
                            "suffix (--data_layout folders; default: {stem}.png)")
    labels: str = arg("", "label set of the masks and the model: a shipped name (" + ", ".join(shipped_names())
                      + ") or a JSON file (default: lip, cihp and atr layouts their own; else the "
                      "--pretrained_model_path checkpoint's, else deepfashion-mm); a checkpoint of another "
                      "label set fine-tunes with a fresh label head")
    synthetic_images: int = arg(240, "images to draw when the synthetic data set is made")
    test_split: str = arg("", "file naming the test images (default: the layout's: the published 1,270 for "
                          "deepfashion-mm, the data set's own test part for lip and cihp, else a hash)")
    test_fraction: float = arg(0.1, "share of the images in the hashed test split of a data set without "
                               "its own (atr, folders)")
    val_fraction: float = arg(0.05, "share of the non-test images held out for validation (whole outfits, "
                                      "by a hash of the name)")
    color_jitter: float = arg(0.1, "colour jitter strength for training samples (0 = off)")
    skip_bad_samples: bool = arg(False, "skip and report unreadable or invalid samples instead of stopping")
    num_workers: int = arg(2, "data-loading processes")
    # model and stage
    preset: str = arg("tiny", "architecture when training from scratch", choices=sorted(PRESETS))
    image_size: int = arg(0, "training resolution (0 = the preset's)")
    bottleneck: str = arg("", "bottleneck when training from scratch (default: the preset's)",
                          choices=["", "simple", "attention"])
    pretrained_model_path: str = arg("", "start from these weights (fresh optimizer)")
    upgrade_bottleneck: bool = arg(False, "swap in a fresh attention bottleneck and train only it")
    upgrade_local_attention: bool = arg(False, "add local attention and train only it")
    model_use_local_attention: bool = arg(False, "train everything with local attention on "
                                                 "(added where the model lacks it)")
    local_attention_levels: tuple[int, ...] = arg((), "decoder levels for local attention, 0 = full "
                                                      "resolution, 4 the deepest (default: the levels at most "
                                                      f"{LOCAL_ATTENTION_MAX_SIDE} px wide at the model's size: "
                                                      "2 3 4 at 512, as the paper suggests; all at 128)")
    # optimisation
    # epochs, effective batch and learning rate: the CPU demo's (the recipe gives its own, docs/training.md)
    epochs: float = arg(33.0, "passes over the training images (fractions allowed)")
    max_steps: int = arg(0, "stop after this many optimizer steps (0 = run --epochs)")
    batch_size: str = arg("auto", "images per forward pass on each process (the micro-batch), or auto: the largest "
                          "divisor of the images each process takes a step that fits; on CUDA, one whose planned "
                          f"peak memory x {1 + MARGIN_FRACTION:.1f} + {MARGIN_BYTES // 2**20} MiB fits the GPU's free "
                          f"memory (--plan shows the plan), on the CPU at most {CPU_MICRO_BATCH}. Out of memory "
                          "halves it and repeats the step")
    effective_batch_size: int = arg(4, "images per optimizer step, over all processes (the published recipe: 64); "
                                    "the forward passes a step takes (gradient accumulation) follow from --batch_size")
    learning_rate: float = arg(3e-3, "peak learning rate (published: 1e-3 stage 1, 1e-4 later)")
    lr_scheduler: str = arg("cosine", "decay after warm-up", choices=["constant", "linear", "cosine"])
    warmup_steps: int = arg(20, "optimizer steps of linear warm-up")
    min_lr_ratio: float = arg(0.1, "final learning rate as a fraction of the peak (linear/cosine)")
    weight_decay: float = arg(0.0, "AdamW weight decay on conv weights (published: Adam, none)")
    max_grad_norm: float = arg(1.0, "gradient clipping norm (0 = off)")
    max_bad_steps: int = arg(10, "stop after this many steps in a row with a non-finite loss or gradient")
    mixed_precision: str = arg("auto", "autocast dtype: auto = bf16 on GPUs that run it natively (Ampere and "
                               "newer), fp16 with a loss scaler on older ones (T4, V100), fp32 on the CPU",
                               choices=list(PRECISIONS))
    channels_last: bool = arg(False, "train channels-last (measured no faster on the CPU, bench.py; on CUDA "
                              "GroupNorm has no channels-last kernel)")
    keep_freed_memory: str = arg("auto", "on the CPU (glibc), keep memory a step frees for the next instead of "
                                 "returning it to the system: steps measured 1.3-2.1x as fast for 7-20%% more "
                                 "peak memory; auto = on unless --gradient_checkpointing",
                                 choices=["auto", "on", "off"])
    gradient_checkpointing: bool = arg(False, "recompute activations: less memory, more time")
    compile: bool = arg(False, "torch.compile the model")
    seed: int = arg(0, "seed for initialisation and data order")
    device: str = arg("auto", "cpu, cuda, cuda:N or auto")
    # outputs
    output_dir: str = arg("checkpoints/tiny", "folder for checkpoints, logs and the final weights")
    output_file_name: str = arg("model.pt", "final weights, inside --output_dir")
    resume: str = arg("", "'latest' (newest checkpoint in --output_dir, if any) or a checkpoint path")
    checkpointing_steps: int = arg(100, "validate and save a checkpoint every N optimizer steps")
    checkpoints_total_limit: int = arg(2, "step checkpoints kept (best.pt and the final weights aside)")
    val_panels: int = arg(4, "validation images shown in TensorBoard")
    plan: bool = arg(False, "print the plan of the GPU memory one training step of this run needs, for each "
                     "micro-batch and precision (memory.py; no GPU needed), and exit without training")
    plan_json: str = arg("", "with --plan: also write the plan to this JSON file")
    loss: LossConfig = field(default_factory=LossConfig)


def add_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """A flag for each field of the dataclass `cls` that has a help text (`arg`)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata:
            continue
        kind, extra = hints[f.name], {}
        if typing.get_origin(kind) is tuple:
            extra = dict(nargs="*", type=typing.get_args(kind)[0])
        elif kind is bool:
            extra = dict(action=argparse.BooleanOptionalAction)
        else:
            extra = dict(type=kind)
        default = f.default if f.default != "" else "none"
        parser.add_argument(f"--{f.name}", help=f"{f.metadata['help']} (default: {default})",
                            choices=f.metadata.get("choices"), **extra)


def check_config(cfg: TrainConfig, given: dict) -> None:
    """Reject flag combinations that cannot mean what the user wants."""
    stages = [s for s in ("upgrade_bottleneck", "upgrade_local_attention", "model_use_local_attention")
              if getattr(cfg, s)]
    if len(stages) > 1:
        raise ValueError(f"choose one stage: --{' and --'.join(stages)} conflict")
    if stages and not cfg.pretrained_model_path:
        raise ValueError(f"--{stages[0]} upgrades a trained model: give --pretrained_model_path")
    if cfg.pretrained_model_path and {"preset", "bottleneck"} & set(given):
        raise ValueError("--preset/--bottleneck build a model from scratch; with --pretrained_model_path "
                         "the architecture comes from the checkpoint")
    if cfg.local_attention_levels and not (cfg.upgrade_local_attention or cfg.model_use_local_attention):
        raise ValueError("--local_attention_levels goes with --upgrade_local_attention or "
                         "--model_use_local_attention")
    if cfg.batch_size != "auto" and not (str(cfg.batch_size).isdigit() and int(cfg.batch_size) >= 1):
        raise ValueError(f"--batch_size must be at least 1, or auto (got {cfg.batch_size!r})")
    for name in ("effective_batch_size", "checkpointing_steps", "checkpoints_total_limit"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name} must be at least 1")
    if cfg.batch_size != "auto" and int(cfg.batch_size) > cfg.effective_batch_size:
        raise ValueError(f"--batch_size {cfg.batch_size} is more than the --effective_batch_size of "
                         f"{cfg.effective_batch_size} images a step")
    if cfg.plan_json and not cfg.plan:
        raise ValueError("--plan_json goes with --plan")
    layout = get_layout(cfg.data_layout, cfg.mask_pattern)
    if cfg.mask_pattern and cfg.data_layout != "folders":
        raise ValueError("--mask_pattern names the masks of --data_layout folders")
    # the class weights' count, wherever the label set is known without reading a file
    known = cfg.labels or layout.labels or ("" if cfg.pretrained_model_path else DEFAULT_LABELS)
    if known in shipped_names():
        label_set = load_label_set(known)
        resolve_class_weights(cfg.loss, label_set.labels, label_set.name)
    if cfg.max_steps < 0 or cfg.epochs <= 0 and not cfg.max_steps:
        raise ValueError("give a positive --epochs or --max_steps")


def keeps_freed_memory(cfg: TrainConfig) -> bool:
    """--keep_freed_memory: auto = on unless --gradient_checkpointing asks for less memory."""
    return cfg.keep_freed_memory == "on" or cfg.keep_freed_memory == "auto" and not cfg.gradient_checkpointing
