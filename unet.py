"""The attention-bottleneck UNet with a boundary head (paper sections 1.3-1.7).

    encoder   [conv3x3, SiLU, GroupNorm] x2, then 2x2 max-pool, once per level
    bottleneck `simple` (two convolutions) or `attention` (a stack of global attention blocks)
    decoder   upsample, concatenate the skip, N residual conv stages, optional local attention
    heads     24 label logits standardised per pixel (paper 1.5) and 1 boundary logit

`UNetConfig` describes a model completely and travels inside every checkpoint, so
`load_model(path)` rebuilds it with no flags. The staged recipe's operations live here too:
`swap_bottleneck`, `add_local_attention` and `stage_parameters`.

    python unet.py --preset 512_96     # parameters, size and GFLOPs of a preset
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from attention import AttentionBlock, LocalAttention, group_norm, sinusoidal_position_encoding
from dataset import NUM_LABELS

CHECKPOINT_VERSION = 1
STAGES = ("all", "bottleneck", "local_attention")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class UNetConfig:
    features: tuple[int, ...] = (96, 96, 192, 384, 768)  # channels per level, full resolution first
    bottleneck_features: int = 1536
    bottleneck: str = "attention"                       # "simple" or "attention"
    attention_blocks: int = 6                           # blocks in the attention bottleneck
    attention_head_dim: int = 64
    up_convs: int = 4                                   # residual conv stages per decoder block
    local_attention_levels: tuple[int, ...] = ()        # decoder levels with local attention, 0 = full resolution
    local_attention_head_dim: int = 32
    num_labels: int = NUM_LABELS
    image_size: int = 512                               # training resolution (side of the square strip)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # input normalisation, used by all data code
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __post_init__(self):
        if self.bottleneck not in ("simple", "attention"):
            raise ValueError(f"bottleneck must be 'simple' or 'attention', got {self.bottleneck!r}")
        bad = [lvl for lvl in self.local_attention_levels if not 0 <= lvl < len(self.features)]
        if bad:
            raise ValueError(f"local_attention_levels {bad} outside 0..{len(self.features) - 1}")

    @property
    def size_multiple(self) -> int:
        """Height and width must be multiples of this (one halving per level)."""
        return 2 ** len(self.features)

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        """Inverse of dataclasses.asdict, tolerant of lists where tuples are expected."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown UNetConfig fields {sorted(unknown)} (checkpoint from a newer version?)")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


PRESETS: dict[str, UNetConfig] = {
    "512_96": UNetConfig(),
    "512_64_xl": UNetConfig(features=(64, 128, 256, 512, 1024), bottleneck_features=2048,
                            attention_blocks=12, up_convs=3),
    "256_64_la": UNetConfig(features=(64, 128, 256, 512), bottleneck_features=1024,
                            attention_blocks=6, up_convs=3, local_attention_levels=(0, 1, 2, 3),
                            image_size=256),
    "tiny": UNetConfig(features=(16, 32, 64, 128), bottleneck_features=256, attention_blocks=2,
                       up_convs=2, image_size=128),
}


class UNetOutput(NamedTuple):
    mask_logits: Tensor      # (B, num_labels, H, W)
    boundary_logits: Tensor  # (B, H, W)


class ConvNormAct(nn.Sequential):
    """conv3x3, SiLU, GroupNorm: the paper's order."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.SiLU(),
                         group_norm(out_channels))


class ResidualConv(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.body = ConvNormAct(in_channels, out_channels)
        self.shortcut = (nn.Identity() if in_channels == out_channels
                         else nn.Conv2d(in_channels, out_channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x) + self.shortcut(x)


class EncoderBlock(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(ConvNormAct(in_channels, out_channels), ConvNormAct(out_channels, out_channels))


class SimpleBottleneck(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(ConvNormAct(in_channels, out_channels), ConvNormAct(out_channels, out_channels))


class AttentionBottleneck(nn.Module):
    """Project in, add a 2-D position encoding for the actual size, then global attention blocks."""

    def __init__(self, in_channels: int, out_channels: int, blocks: int, head_dim: int):
        super().__init__()
        self.proj_in = ConvNormAct(in_channels, out_channels)
        self.blocks = nn.ModuleList(AttentionBlock(out_channels, head_dim) for _ in range(blocks))
        self.gradient_checkpointing = False

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj_in(x)
        x = x + sinusoidal_position_encoding(x.shape[1], x.shape[2], x.shape[3], x.device, x.dtype)
        for block in self.blocks:
            recompute = self.gradient_checkpointing and self.training
            x = checkpoint(block, x, use_reentrant=False) if recompute else block(x)
        return x


class UpBlock(nn.Module):
    """Upsample, concatenate the skip, residual conv stages, then optional local attention."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, convs: int,
                 local_attention: bool, head_dim: int):
        super().__init__()
        self.stages = nn.Sequential(ResidualConv(in_channels + skip_channels, out_channels),
                                    *(ResidualConv(out_channels, out_channels) for _ in range(convs - 1)))
        self.local_attention = LocalAttention(out_channels, head_dim) if local_attention else None

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")          # (B, C_in, H, W)
        x = self.stages(torch.cat([x, skip], dim=1))                    # (B, C_out, H, W)
        if self.local_attention is not None:
            x = self.local_attention(x)
        return x


def at_least_fp32(x: Tensor) -> Tensor:
    """Logits leave the model in fp32 (or fp64) even under bf16/fp16 autocast."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class NormalizedLogits(nn.Module):
    """1x1 conv to label logits, each pixel's vector standardised before the softmax (paper 1.5).

    A learnable gain lets the network sharpen the softmax past what unit variance allows.
    """

    def __init__(self, in_channels: int, num_labels: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, num_labels, 1)
        self.gain = nn.Parameter(torch.tensor(1.0))

    def forward(self, x: Tensor) -> Tensor:
        z = at_least_fp32(self.proj(x))                                 # (B, L, H, W)
        var, mean = torch.var_mean(z, dim=1, keepdim=True, correction=0)
        return (z - mean) * torch.rsqrt(var + 1e-5) * self.gain


class UNet(nn.Module):
    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        f = config.features
        self.encoder = nn.ModuleList(EncoderBlock(c_in, c_out) for c_in, c_out in zip((3,) + f[:-1], f))
        self.bottleneck = make_bottleneck(config)
        self.decoder = nn.ModuleList(   # decoder[i] works at level i; run deepest first
            UpBlock(c_in, c, c, config.up_convs, i in config.local_attention_levels,
                    config.local_attention_head_dim)
            for i, (c, c_in) in enumerate(zip(f, f[1:] + (config.bottleneck_features,))))
        self.mask_head = NormalizedLogits(f[0], config.num_labels)
        self.boundary_head = nn.Conv2d(f[0], 1, 1)
        self.gradient_checkpointing = False

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute activations in the backward pass: less memory, ~30% more compute."""
        self.gradient_checkpointing = enabled
        if isinstance(self.bottleneck, AttentionBottleneck):
            self.bottleneck.gradient_checkpointing = enabled

    def _run(self, module: nn.Module, *args: Tensor) -> Tensor:
        if self.gradient_checkpointing and self.training:
            return checkpoint(module, *args, use_reentrant=False)
        return module(*args)

    def forward(self, x: Tensor) -> UNetOutput:
        check_input_shape(self.config, x.shape[-2], x.shape[-1])
        skips = []
        for block in self.encoder:
            x = self._run(block, x)                                     # (B, f[i], H/2^i, W/2^i)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottleneck(x)                                          # (B, bottleneck, H/2^D, W/2^D)
        for block in reversed(self.decoder):
            x = self._run(block, x, skips.pop())
        return UNetOutput(self.mask_head(x), at_least_fp32(self.boundary_head(x)).squeeze(1))


def make_bottleneck(config: UNetConfig) -> nn.Module:
    if config.bottleneck == "simple":
        return SimpleBottleneck(config.features[-1], config.bottleneck_features)
    return AttentionBottleneck(config.features[-1], config.bottleneck_features,
                               config.attention_blocks, config.attention_head_dim)


def check_input_shape(config: UNetConfig, height: int, width: int) -> None:
    m = config.size_multiple
    if height % m or width % m:
        near_h, near_w = (max(m, round(s / m) * m) for s in (height, width))
        raise ValueError(f"input size {height}x{width} (HxW) is not a multiple of {m} "
                         f"({len(config.features)} poolings); the nearest valid size is {near_h}x{near_w}")


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

    The new blocks' output projections start near zero, so the output barely changes.
    """
    levels = tuple(sorted(set(model.config.local_attention_levels) | set(levels)))
    model.config = dataclasses.replace(model.config, local_attention_levels=levels)
    for i in levels:
        block = model.decoder[i]
        if block.local_attention is None:
            channels = model.config.features[i]
            block.local_attention = LocalAttention(channels, model.config.local_attention_head_dim)
            block.local_attention.to(_model_device(model))
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


def pick_device(name: str) -> torch.device:
    """"auto" = CUDA when present, else the CPU; asking for CUDA without it is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is available (use --device cpu)")
    return device


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
            "model": model.state_dict()}


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
    if not isinstance(ckpt, dict) or "model_config" not in ckpt or "model" not in ckpt:
        raise CheckpointError(f"{path}: not a checkpoint of this project (no model_config/model entries)")
    version = ckpt.get("format_version", 0)
    if version > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {version} is newer than this code "
                         f"understands ({CHECKPOINT_VERSION}); update the code")
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


def load_state(model: UNet, state: dict[str, Tensor], source: str) -> None:
    """load_state_dict(strict) with an error listing missing, unexpected and mis-shaped keys."""
    state = clean_state_dict(state)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        lines = ([f"missing: {', '.join(missing[:10])}" + (" ..." if len(missing) > 10 else "")] if missing else [])
        lines += ([f"unexpected: {', '.join(unexpected[:10])}" + (" ..." if len(unexpected) > 10 else "")]
                  if unexpected else [])
        lines += [f"shape mismatch: {s}" for s in shapes[:10]]
        raise CheckpointError(f"{source}: weights do not fit the model\n  " + "\n  ".join(lines))
    model.load_state_dict(state)


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> UNet:
    """Rebuild a model from a checkpoint file alone."""
    ckpt = read_checkpoint(path, map_location)
    model = UNet(UNetConfig.from_dict(ckpt["model_config"]))
    load_state(model, ckpt["model"], str(path))
    return model.to(map_location)


# ---- command line -------------------------------------------------------------------------------

def count_flops(model: UNet, height: int, width: int) -> int:
    """Forward FLOPs for one image, counted on the meta device (nothing is computed)."""
    from torch.utils.flop_counter import FlopCounterMode
    meta = UNet(model.config).to("meta") if _model_device(model).type != "meta" else model
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta(torch.empty(1, 3, height, width, device="meta"))
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description="Describe a UNet preset: parameters, size, GFLOPs.")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="512_96")
    parser.add_argument("--image_size", type=int, default=None, help="default: the preset's own")
    args = parser.parse_args()
    config = PRESETS[args.preset]
    size = args.image_size or config.image_size
    with torch.device("meta"):
        model = UNet(config)
    params = sum(p.numel() for p in model.parameters())
    flops = count_flops(model, size, size)
    print(f"preset {args.preset}: {config}")
    print(f"parameters: {params / 1e6:.1f} M ({params * 4 / 2**20:.0f} MB in fp32)")
    print(f"forward at {size}x{size}: {flops / 1e9:.1f} GFLOPs per image "
          f"(a training step is about 3x that)")


if __name__ == "__main__":
    main()
