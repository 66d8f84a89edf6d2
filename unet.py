"""The published attention-bottleneck UNet with a boundary head (paper sections 1.3-1.7), as its
released code computes it; b = `base_features`, GN = GroupNorm(32, C) without affine:

    encoder    5 blocks, 3 -> 2b, 2b, 4b, 8b, 16b: [conv3x3, SiLU, GN] x2, 2x2 max-pool; the skip is
               both GN outputs concatenated (2 x the block's width)
    bottleneck 16b -> 32b at 1/32 resolution: `simple` (conv1x1, SiLU, conv1x1, SiLU, GN with affine)
               or `attention` (conv3x3 x2, a fixed position encoding, then blocks of two global
               attention layers between 1x1 convolutions; 3 blocks, 6 in the released `attentionXL`)
    decoder    5 blocks, deepest first, widths 16b, 8b, 4b, 4b, 4b: a transposed 2x2 convolution plus
               a parameter-free upsampling, then three residual 3x3 stages; optional local attention
               beside the first stage, on cat(x, skip)
    heads      conv1x1 to the label logits, LayerNorm over each pixel's labels (paper 1.5); conv1x1
               to the boundary logit (the released code applies the sigmoid inside the model)

`UNetConfig` describes a model completely and travels inside every checkpoint with the model's label
set (labels.LabelSet, the names of its label ids), so `load_model(path)` rebuilds it with no flags. The
staged recipe's operations live here too: `swap_bottleneck`, `add_local_attention`, `new_label_head`
(fine-tuning onto another label set) and `stage_parameters`; and `convert_released`, which reads a state
dict saved by the released code.

    python unet.py --preset 512_96                                    # parameters, size and GFLOPs of a preset
    python unet.py convert RELEASED.pt checkpoints/released/model.pt  # the released code's weights -> a checkpoint
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from attention import GlobalAttention, LocalAttention, position_encoding
from labels import DEEPFASHION_MM, NUM_LABELS, DataError, LabelSet

# 2: the published architecture. 1 was this project's earlier redesign, whose weights fit no model here.
CHECKPOINT_VERSION = 2
STAGES = ("all", "bottleneck", "local_attention")
LEVELS = 5          # poolings; level 0 is full resolution, level 4 the deepest decoder block
INIT_STD = 0.1      # the published initialisation of every convolution, weights and biases


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class UNetConfig:
    base_features: int = 48                             # b: the released `base_features`
    bottleneck: str = "attention"                       # "simple" (released `default`) or "attention"
    attention_blocks: int = 3                           # 3: released `attention`, 6: `attentionXL`
    local_attention_levels: tuple[int, ...] = ()        # decoder levels with local attention, 0 = full resolution
    num_labels: int = NUM_LABELS
    image_size: int = 512                               # training resolution (side of the square strip)
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)  # input (x / 255 - mean) / std: published x / 255
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    fit: str = "short_side"    # which side of a photo image_size measured in training (images.FITS, checked
    #                            where photos are scaled): the short side of DF-MM's strips, the long side of a letterbox

    def __post_init__(self):
        if self.bottleneck not in ("simple", "attention"):
            raise ValueError(f"bottleneck must be 'simple' or 'attention', got {self.bottleneck!r}")
        if self.base_features < 2 or self.base_features % 2:
            raise ValueError(f"base_features must be even and at least 2, got {self.base_features}")
        if self.attention_blocks < 1:
            raise ValueError(f"attention_blocks must be at least 1, got {self.attention_blocks}")
        bad = [lvl for lvl in self.local_attention_levels if not 0 <= lvl < LEVELS]
        if bad:
            raise ValueError(f"local_attention_levels {bad} outside 0..{LEVELS - 1}")

    @property
    def encoder_widths(self) -> tuple[int, ...]:
        b = self.base_features
        return (2 * b, 2 * b, 4 * b, 8 * b, 16 * b)

    @property
    def decoder_widths(self) -> tuple[int, ...]:
        """Output channels of the decoder block at each level, full resolution first."""
        b = self.base_features
        return (4 * b, 4 * b, 4 * b, 8 * b, 16 * b)

    @property
    def bottleneck_width(self) -> int:
        return 32 * self.base_features

    @property
    def size_multiple(self) -> int:
        """Height and width must be multiples of this (one halving per level)."""
        return 2 ** LEVELS

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        """Inverse of dataclasses.asdict, tolerant of lists where tuples are expected."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown UNetConfig fields {sorted(unknown)} (checkpoint from a newer version?)")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


# The paper's models (section 1.3). Where its text and the released code disagree, the code wins;
# README.md "Architecture" lists each choice.
PRESETS: dict[str, UNetConfig] = {
    "512_96": UNetConfig(base_features=48),
    "512_64_xl": UNetConfig(base_features=64, attention_blocks=6),
    "256_64_la": UNetConfig(base_features=32, local_attention_levels=(0, 1, 2, 3, 4), image_size=256),
    # the CPU demo and the tests (GroupNorm of 16 groups at 16 channels); 64 px: on the demo task the model
    # learns per step as fast as at 128 px, for a third of the time a step (docs/training.md, "The demo")
    "tiny": UNetConfig(base_features=8, image_size=64),
}


class UNetOutput(NamedTuple):
    mask_logits: Tensor      # (B, num_labels, H, W)
    boundary_logits: Tensor  # (B, H, W); the released model's output is its sigmoid


def group_norm(x: Tensor) -> Tensor:
    """GroupNorm(32) without affine, eps 1e-5; fewer groups below 32 channels (only tiny test models)."""
    return F.group_norm(x, math.gcd(32, x.shape[1]))


def conv(in_channels: int, out_channels: int, kernel: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2)


def published_init(module: nn.Module) -> None:
    """Convolutions N(0, 0.1), weights and biases; for `module.apply`. Attention layers, the label
    LayerNorm and the bottleneck's GroupNorm initialise themselves as published when built."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        with torch.no_grad():
            module.weight.normal_(0, INIT_STD)
            module.bias.normal_(0, INIT_STD)


class EncoderBlock(nn.Module):
    """[conv3x3, SiLU, GN] x2; returns (2x2 max-pooled output, skip = both GN outputs)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = conv(in_channels, out_channels, 3)
        self.conv2 = conv(out_channels, out_channels, 3)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        a = group_norm(F.silu(self.conv1(x)))                           # (B, C, H, W)
        b = group_norm(F.silu(self.conv2(a)))                           # (B, C, H, W)
        return F.max_pool2d(b, 2), torch.cat([a, b], dim=1)             # (B, C, H/2, W/2), (B, 2C, H, W)


class SimpleBottleneck(nn.Module):
    """The released `default` bottleneck: conv1x1, SiLU, conv1x1, SiLU, GroupNorm with affine."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = conv(in_channels, out_channels, 1)
        self.conv2 = conv(out_channels, out_channels, 1)
        self.norm = nn.GroupNorm(math.gcd(32, out_channels), out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(F.silu(self.conv2(F.silu(self.conv1(x)))))


class AttentionBlock(nn.Module):
    """conv1x1, SiLU, conv1x1, SiLU, GN, then two residual global attention layers (each followed
    by SiLU), GN, plus the block's input."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = conv(channels, channels, 1)
        self.conv2 = conv(channels, channels, 1)
        self.attention1 = GlobalAttention(channels)
        self.attention2 = GlobalAttention(channels)

    def forward(self, x: Tensor) -> Tensor:
        y = group_norm(F.silu(self.conv2(F.silu(self.conv1(x)))))
        y = F.silu(y + self.attention1(y))
        y = F.silu(y + self.attention2(y))
        return group_norm(y) + x


class AttentionBottleneck(nn.Module):
    """conv3x3, SiLU, conv3x3, SiLU, GN, the position encoding for the actual size, then the blocks."""

    def __init__(self, in_channels: int, out_channels: int, blocks: int):
        super().__init__()
        self.conv1 = conv(in_channels, out_channels, 3)
        self.conv2 = conv(out_channels, out_channels, 3)
        self.blocks = nn.ModuleList(AttentionBlock(out_channels) for _ in range(blocks))
        self.gradient_checkpointing = False

    def forward(self, x: Tensor) -> Tensor:
        x = group_norm(F.silu(self.conv2(F.silu(self.conv1(x)))))       # (B, C, h, w)
        x = x + position_encoding(x.shape[1], x.shape[2], x.shape[3], x.device, x.dtype)
        for block in self.blocks:
            recompute = self.gradient_checkpointing and self.training
            x = checkpoint(block, x, use_reentrant=False) if recompute else block(x)
        return x


def lossy_upsample(x: Tensor) -> Tensor:
    """(B, C, h, w) -> (B, C/2, 2h, 2w) with no parameters: the released decoder's shortcut, which
    spreads each channel pair over a 2x2 patch by two reshapes, then repeats the C/4 maps."""
    b, c, h, w = x.shape
    y = x.reshape(b, c // 2, 2 * h, w).transpose(-1, -2)                # (B, C/2, w, 2h)
    y = y.reshape(b, c // 4, 2 * w, 2 * h).transpose(-1, -2)            # (B, C/4, 2h, 2w)
    return torch.cat([y, y], dim=1)                                     # (B, C/2, 2h, 2w)


class DecoderBlock(nn.Module):
    """Upsample x (transposed conv + a parameter-free upsampling), concatenate the skip, three
    residual 3x3 stages; local attention on cat(x, skip) joins the first stage."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, local_attention: bool):
        super().__init__()
        if in_channels not in (out_channels, 2 * out_channels):
            raise ValueError(f"decoder block {in_channels} -> {out_channels} channels: the upsampling "
                             "shortcut needs the same or twice the output width")
        self.lossy = in_channels == 2 * out_channels    # else nearest-neighbour x2
        self.up = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        self.conv1 = conv(out_channels + skip_channels, out_channels, 3)
        self.conv2 = conv(out_channels, out_channels, 3)
        self.conv3 = conv(out_channels, out_channels, 3)
        self.local_attention = (new_local_attention(out_channels, skip_channels) if local_attention
                                else None)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        shortcut = lossy_upsample(x) if self.lossy else F.interpolate(x, scale_factor=2.0, mode="nearest")
        x = group_norm(F.silu(self.up(x) + shortcut))                   # (B, C_out, H, W)
        u = torch.cat([x, skip], dim=1)                                 # (B, C_out + C_skip, H, W)
        y = x + self.conv1(u)
        if self.local_attention is not None:
            y = y + self.local_attention(u)
        x = group_norm(F.silu(y))
        x = group_norm(F.silu(x + self.conv2(x)))
        return group_norm(F.silu(x + self.conv3(x)))                    # (B, C_out, H, W)


def new_local_attention(out_channels: int, skip_channels: int) -> LocalAttention:
    """The released decoder's local attention: 4 heads of skip/8 channels (b/2 at full resolution)."""
    return LocalAttention(out_channels + skip_channels, out_channels, head_dim=skip_channels // 8)


def at_least_fp32(x: Tensor) -> Tensor:
    """Logits leave the model in fp32 (or fp64) even under bf16/fp16 autocast."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class LabelHead(nn.Module):
    """conv1x1 to label logits, then LayerNorm over each pixel's labels (paper 1.5), weight 3 at start."""

    def __init__(self, in_channels: int, num_labels: int):
        super().__init__()
        self.conv = conv(in_channels, num_labels, 1)
        self.norm = nn.LayerNorm(num_labels)
        with torch.no_grad():
            self.norm.weight.fill_(3.0)

    def forward(self, x: Tensor) -> Tensor:
        z = at_least_fp32(self.conv(x)).permute(0, 2, 3, 1)            # (B, H, W, L)
        return F.layer_norm(z, z.shape[-1:], self.norm.weight.to(z.dtype), self.norm.bias.to(z.dtype),
                            self.norm.eps).permute(0, 3, 1, 2)          # (B, L, H, W)


def default_label_set(num_labels: int) -> LabelSet:
    """The label set of a model that names none (checkpoints from before label sets, converted released
    weights): DeepFashion-MultiModal's for 24 labels, else numbered names."""
    if num_labels == len(DEEPFASHION_MM):
        return DEEPFASHION_MM
    return LabelSet(f"{num_labels} labels", tuple(f"label {i}" for i in range(num_labels)))


class UNet(nn.Module):
    def __init__(self, config: UNetConfig, label_set: LabelSet | None = None):
        super().__init__()
        self.config = config
        self.label_set = label_set or default_label_set(config.num_labels)   # what the label ids mean
        if len(self.label_set) != config.num_labels:
            raise ValueError(f"label set {self.label_set.name} has {len(self.label_set)} labels, the model "
                             f"{config.num_labels}")
        enc, dec = config.encoder_widths, config.decoder_widths
        self.encoder = nn.ModuleList(EncoderBlock(c_in, c_out) for c_in, c_out in zip((3,) + enc[:-1], enc))
        self.bottleneck = make_bottleneck(config)
        self.decoder = nn.ModuleList(   # decoder[i] works at level i; run deepest first
            DecoderBlock(c_in, 2 * enc[i], dec[i], i in config.local_attention_levels)
            for i, c_in in enumerate(dec[1:] + (config.bottleneck_width,)))
        self.label_head = LabelHead(dec[0], config.num_labels)
        self.boundary_head = conv(dec[0], 1, 1)
        self.apply(published_init)
        self.gradient_checkpointing = False

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute activations in the backward pass: less memory, ~30% more compute."""
        self.gradient_checkpointing = enabled
        if isinstance(self.bottleneck, AttentionBottleneck):
            self.bottleneck.gradient_checkpointing = enabled

    def _run(self, module: nn.Module, *args: Tensor):
        if self.gradient_checkpointing and self.training:
            return checkpoint(module, *args, use_reentrant=False)
        return module(*args)

    def forward(self, x: Tensor) -> UNetOutput:
        check_input_shape(self.config, x.shape[-2], x.shape[-1])
        skips = []
        for block in self.encoder:
            x, skip = self._run(block, x)                               # (B, w_i, H/2^(i+1), ...), (B, 2w_i, H/2^i, ...)
            skips.append(skip)
        x = self.bottleneck(x)                                          # (B, 32b, H/32, W/32)
        for block in reversed(self.decoder):
            x = self._run(block, x, skips.pop())                        # (B, d_i, H/2^i, W/2^i)
        return UNetOutput(self.label_head(x), at_least_fp32(self.boundary_head(x)).squeeze(1))


def make_bottleneck(config: UNetConfig) -> nn.Module:
    """A bottleneck of the config's kind with the published initialisation."""
    if config.bottleneck == "simple":
        module = SimpleBottleneck(config.encoder_widths[-1], config.bottleneck_width)
    else:
        module = AttentionBottleneck(config.encoder_widths[-1], config.bottleneck_width, config.attention_blocks)
    module.apply(published_init)
    return module


def check_input_shape(config: UNetConfig, height: int, width: int) -> None:
    m = config.size_multiple
    if height % m or width % m:
        near_h, near_w = (max(m, round(s / m) * m) for s in (height, width))
        raise ValueError(f"input size {height}x{width} (HxW) is not a multiple of {m} "
                         f"({LEVELS} poolings); the nearest valid size is {near_h}x{near_w}")


# ---- operations of the staged recipe ----------------------------------------------------------

def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def swap_bottleneck(model: UNet) -> UNet:
    """Replace a (trained) simple bottleneck by a fresh attention bottleneck, in place."""
    if model.config.bottleneck == "attention":
        raise ValueError("the model already has an attention bottleneck")
    model.config = dataclasses.replace(model.config, bottleneck="attention")
    model.bottleneck = make_bottleneck(model.config).to(_model_device(model))
    model.set_gradient_checkpointing(model.gradient_checkpointing)
    return model


def add_local_attention(model: UNet, levels: tuple[int, ...]) -> UNet:
    """Add fresh local attention to decoder `levels` (0 = full resolution), in place.

    The new blocks' output projections start at 1/100 of their Xavier scale (the published
    initialisation), so the output barely changes.
    """
    levels = tuple(sorted(set(model.config.local_attention_levels) | set(levels)))
    model.config = dataclasses.replace(model.config, local_attention_levels=levels)
    for i in levels:
        block = model.decoder[i]
        if block.local_attention is None:
            out, skip = model.config.decoder_widths[i], 2 * model.config.encoder_widths[i]
            block.local_attention = new_local_attention(out, skip).to(_model_device(model))
    return model


def new_label_head(model: UNet, label_set: LabelSet) -> UNet:
    """Replace the label head (conv1x1 + LayerNorm) by a fresh one for `label_set`, in place, with the
    published initialisation: fine-tuning onto another label set keeps every other weight."""
    model.config = dataclasses.replace(model.config, num_labels=len(label_set))
    head = LabelHead(model.config.decoder_widths[0], len(label_set))
    head.conv.apply(published_init)
    model.label_head = head.to(_model_device(model))
    model.label_set = label_set
    return model


def stage_parameters(model: UNet, stage: str) -> list[tuple[str, nn.Parameter]]:
    """The (name, parameter) pairs a training stage updates: "all", "bottleneck" or "local_attention"."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    named = list(model.named_parameters())
    if stage == "bottleneck":
        named = [(n, p) for n, p in named if n.startswith("bottleneck.")]
    elif stage == "local_attention":
        named = [(n, p) for n, p in named if ".local_attention." in n]
    if not named:
        raise ValueError(f"the model has no parameters for stage {stage!r}")
    return named


# ---- checkpoints --------------------------------------------------------------------------------

def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel and/or torch.compile wrappers."""
    while True:
        if hasattr(model, "module"):            # DistributedDataParallel
            model = model.module
        elif hasattr(model, "_orig_mod"):       # torch.compile
            model = model._orig_mod
        else:
            return model


def model_checkpoint(model: nn.Module) -> dict:
    """The part of a checkpoint that rebuilds the model: plain data only."""
    model = unwrap(model)
    return {"format_version": CHECKPOINT_VERSION,
            "model_config": dataclasses.asdict(model.config),
            "labels": model.label_set.to_dict(),
            "model": model.state_dict()}


def write_atomic(path: Path, write: Callable[[BinaryIO], None], kept: str = "the file there before is untouched"
                 ) -> None:
    """`write` into a temporary file, flushed to disk, then renamed: a kill or a full disk never leaves
    half a file in place of a good one. An OSError names the file and says `kept`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OSError(f"could not write {path} ({e.strerror or e}); {kept}") from e


def save_atomic(payload: dict, path: Path) -> None:
    """A checkpoint written by write_atomic."""
    write_atomic(path, lambda f: torch.save(payload, f), "earlier checkpoints are untouched")


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """torch.load with weights_only=True and errors that name the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or not written by "
                              f"torch.save?): {type(e).__name__}: {str(e).splitlines()[0][:200]}") from e
    if isinstance(ckpt, dict) and "model_config" not in ckpt and any(k in ckpt for k in RELEASED_MARKERS):
        raise CheckpointError(f"{path}: a state dict of the released code, not a checkpoint of this "
                              f"project; convert it first: python unet.py convert {path} checkpoints/released/model.pt")
    if not isinstance(ckpt, dict) or "model_config" not in ckpt or "model" not in ckpt:
        raise CheckpointError(f"{path}: not a checkpoint of this project (no model_config/model entries)")
    version = ckpt.get("format_version", 0)
    if version > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {version} is newer than this code "
                              f"understands ({CHECKPOINT_VERSION}); update the code")
    if version < CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {version} holds this project's earlier "
                              "architecture, which is not the published one and no longer exists here; "
                              "train again")
    return ckpt


def clean_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Strip the `module.` and `_orig_mod.` prefixes that DDP and torch.compile add."""
    out = {}
    for k, v in state.items():
        for prefix in ("module.", "_orig_mod."):
            while k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def load_state(model: UNet, state: dict[str, Tensor], source: str, names: dict[str, str] | None = None) -> None:
    """load_state_dict(strict) with an error listing missing, unexpected and mis-shaped keys; `names`
    gives a key's name in the source file where it differs (converted weights)."""
    state = clean_state_dict(state)
    names = names or {}
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{names.get(k, k)}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        lines = ([f"missing: {', '.join(missing[:10])}" + (" ..." if len(missing) > 10 else "")] if missing else [])
        lines += ([f"unexpected: {', '.join(unexpected[:10])}" + (" ..." if len(unexpected) > 10 else "")]
                  if unexpected else [])
        lines += [f"shape mismatch: {s}" for s in shapes[:10]]
        raise CheckpointError(f"{source}: weights do not fit the model\n  " + "\n  ".join(lines))
    model.load_state_dict(state)


def checkpoint_label_set(ckpt: dict, source: str = "checkpoint") -> LabelSet:
    """The label set a checkpoint carries; one written before label sets is DeepFashion-MultiModal's
    (or numbered names, for a label count other than 24)."""
    count = ckpt["model_config"].get("num_labels", NUM_LABELS)
    if "labels" not in ckpt:
        return default_label_set(count)
    try:
        label_set = LabelSet.from_dict(ckpt["labels"], source)
    except DataError as e:
        raise CheckpointError(f"{source}: its label set is unusable: {e}") from e
    if len(label_set) != count:
        raise CheckpointError(f"{source}: its label set {label_set.name} has {len(label_set)} labels, "
                              f"the model {count}")
    return label_set


def model_from_checkpoint(ckpt: dict, source: str) -> UNet:
    """The model of a read checkpoint: its config, label set and weights."""
    model = UNet(UNetConfig.from_dict(ckpt["model_config"]), checkpoint_label_set(ckpt, source))
    load_state(model, ckpt["model"], source)
    return model


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> UNet:
    """Rebuild a model from a checkpoint file alone, on `map_location`. The file is read on the CPU:
    a training state's optimizer moments never reach the GPU."""
    return model_from_checkpoint(read_checkpoint(path), str(path)).to(map_location)


# ---- the released code's weights ---------------------------------------------------------------

# Released key prefix -> ours, tried in order; {i} is a released decoder index (0 = deepest), which
# becomes our level 4 - i. Every released parameter matches one rule.
RELEASED_KEYS = (
    (r"downBlocks\.(\d+)\.layers\.0\.", r"encoder.\1.conv1."),
    (r"downBlocks\.(\d+)\.layers\.3\.", r"encoder.\1.conv2."),
    (r"bottleneck\.0\.", "bottleneck.conv1."),      # the `default` bottleneck
    (r"bottleneck\.2\.", "bottleneck.conv2."),
    (r"bottleneck\.4\.", "bottleneck.norm."),
    (r"bottleneck\.(conv1|conv2|blocks)\.", r"bottleneck.\1."),
    (r"upBlocks\.(\d+)\.convTranspose\.", "decoder.{level}.up."),
    (r"upBlocks\.(\d+)\.(conv1|conv2|conv3)\.", r"decoder.{level}.\2."),
    (r"upBlocks\.(\d+)\.attention\.(in_proj|out_proj)\.", r"decoder.{level}.local_attention.\2."),
    (r"upBlocks\.(\d+)\.attention\.positional_cross_embedding$", "decoder.{level}.local_attention.position_bias"),
    (r"output\.", "label_head.conv."),
    (r"normalization\.normalization\.", "label_head.norm."),
    (r"boundary\.", "boundary_head."),
)
# Buffers the released code registers: functions of the input size, computed here instead.
RELEASED_BUFFERS = re.compile(r"bottleneck\.positional\.positional_embedding|upBlocks\.\d+\.attention\.(masks|cutoff)")
RELEASED_MARKERS = ("downBlocks.0.layers.0.weight", "module.downBlocks.0.layers.0.weight")


def _released_config(state: dict[str, Tensor], source: str) -> UNetConfig:
    """b, the bottleneck, the local-attention levels and the training size, read off the tensors."""
    first = state.get("downBlocks.0.layers.0.weight")
    if first is None or first.ndim != 4 or first.shape[1:] != (3, 3, 3):
        raise CheckpointError(f"{source}: not a state dict of the released attention-UNet: no "
                              "downBlocks.0.layers.0.weight of shape (2b, 3, 3, 3)")
    if "bottleneck.0.weight" in state:
        bottleneck, blocks = "simple", 3
    else:
        found = {int(m.group(1)) for k in state if (m := re.match(r"bottleneck\.blocks\.(\d+)\.", k))}
        if not found:
            raise CheckpointError(f"{source}: no bottleneck found (neither bottleneck.0.weight of the "
                                  "default bottleneck nor bottleneck.blocks.* of the attention one)")
        bottleneck, blocks = "attention", max(found) + 1
    levels = tuple(sorted(LEVELS - 1 - int(m.group(1)) for k in state
                          if (m := re.fullmatch(r"upBlocks\.(\d+)\.attention\.in_proj\.weight", k))))
    size = 512                                     # the released code's fixed size, unless a buffer says
    if "bottleneck.positional.positional_embedding" in state:
        size = state["bottleneck.positional.positional_embedding"].shape[-1] * 2 ** LEVELS
    return UNetConfig(base_features=first.shape[0] // 2, bottleneck=bottleneck, attention_blocks=blocks,
                      local_attention_levels=levels, num_labels=state["output.weight"].shape[0]
                      if "output.weight" in state else NUM_LABELS, image_size=size)


def convert_released(state: dict[str, Tensor], source: str = "state dict") -> UNet:
    """A model of this project holding the weights of a state dict saved by the released code."""
    state = clean_state_dict(state)
    config = _released_config(state, source)
    ours, names, unknown = {}, {}, []
    for key, value in state.items():
        if RELEASED_BUFFERS.fullmatch(key):
            continue
        for pattern, target in RELEASED_KEYS:
            if m := re.match(pattern, key):
                level = LEVELS - 1 - int(m.group(1)) if key.startswith("upBlocks.") else None
                name = m.expand(target).format(level=level) + key[m.end():]
                ours[name], names[name] = value, key
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"{source}: keys the released attention-UNet does not have: "
                              f"{', '.join(unknown[:10])}" + (" ..." if len(unknown) > 10 else ""))
    model = UNet(config)
    load_state(model, ours, f"{source} (read as {config}; missing keys in this project's names)", names)
    return model


def convert_file(released: str | Path, out: str | Path) -> UNet:
    """Read a released-code state dict file, write a checkpoint of this project."""
    released = Path(released)
    if not released.is_file():
        raise CheckpointError(f"{released}: no such file")
    try:
        state = torch.load(released, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{released}: not readable by torch.load: {type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200]}") from e
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{released}: not a state dict (a dict of tensors, as "
                              "torch.save(model.state_dict()) writes)")
    model = convert_released(state, str(released))
    save_atomic({**model_checkpoint(model), "converted_from": str(released)}, Path(out))
    return model


# ---- command line -------------------------------------------------------------------------------

def count_flops(model: UNet, height: int, width: int) -> int:
    """Forward FLOPs for one image, counted on the meta device (nothing is computed)."""
    from torch.utils.flop_counter import FlopCounterMode
    meta = UNet(model.config).to("meta") if _model_device(model).type != "meta" else model
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta(torch.empty(1, 3, height, width, device="meta"))
    return counter.get_total_flops()


def describe(name: str, config: UNetConfig, size: int) -> str:
    with torch.device("meta"):
        model = UNet(config)
    params = sum(p.numel() for p in model.parameters())
    return (f"preset {name}: {config}\n"
            f"parameters: {params / 1e6:.1f} M ({params * 4 / 1e6:.0f} MB = {params * 4 / 2**20:.0f} MiB in fp32)\n"
            f"forward at {size}x{size}: {count_flops(model, size, size) / 1e9:.1f} GFLOPs per image "
            "(a training step is about 3x that)")


def parse_args(argv: list[str]) -> argparse.Namespace:
    """`convert RELEASED OUT` (args.released and args.out) or a preset to describe (args.preset)."""
    if argv[:1] == ["convert"]:
        parser = argparse.ArgumentParser(prog="unet.py convert", description="Convert a state dict saved by "
                                         "the released code (torch.save(model.state_dict())) to a checkpoint.")
        parser.add_argument("released", help="the released code's .pt state dict")
        parser.add_argument("out", help="the checkpoint to write, e.g. checkpoints/released/model.pt")
        return parser.parse_args(argv[1:])
    parser = argparse.ArgumentParser(description="Describe a UNet preset: parameters, size, GFLOPs "
                                     "(or `unet.py convert RELEASED.pt checkpoints/released/model.pt`).")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="512_96")
    parser.add_argument("--image_size", type=int, default=None, help="default: the preset's own")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if argv[:1] == ["convert"]:
        try:
            model = convert_file(args.released, args.out)
        except CheckpointError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"{args.out}: {model.config}")
        return 0
    config = PRESETS[args.preset]
    paper = PAPER_SIZES_MB.get(args.preset)
    print(describe(args.preset, config, args.image_size or config.image_size))
    if paper:
        print(f"paper: {paper} MB")
    return 0


PAPER_SIZES_MB = {"512_96": 560, "512_64_xl": 1800, "256_64_la": 300}   # paper section 1.3


if __name__ == "__main__":
    sys.exit(main())
