"""Attention blocks of the UNet: global self-attention for the bottleneck and block-local
attention for the decoder (paper sections 1.3, 1.4 and 1.9).

- `AttentionBlock`: multi-head global self-attention plus a 1x1-convolution MLP, both residual,
  on `F.scaled_dot_product_attention` (flash / memory-efficient kernels on CUDA).
- `LocalAttention`: each 2x2 block of query pixels attends to the 6x6 pixels of the 3x3
  neighbourhood of blocks around it, with a learnable relative-position bias per head. Keys
  outside the image are masked out, never zero-padded in. Cost grows linearly with the pixels:
  no (HW x HW) mask is ever built.
- `sinusoidal_position_encoding`: a 2-D encoding computed for whatever size comes in.

Residual branches end in `zero_init`-ed projections, so a freshly added block starts as (very
nearly) the identity and an upgraded model gives almost the same output as before.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups (batches of 1-4 rule out BatchNorm, paper 1.6)."""
    return nn.GroupNorm(math.gcd(32, channels), channels)


def zero_init(module: nn.Conv2d, scale: float = 1e-3) -> nn.Conv2d:
    """Shrink a projection's default init so its residual branch starts near zero.

    Not exactly zero: the layers before it would then get no gradient on the first step.
    """
    with torch.no_grad():
        module.weight.mul_(scale)
        if module.bias is not None:
            module.bias.zero_()
    return module


def num_heads(channels: int, head_dim: int) -> int:
    if channels % head_dim and head_dim % channels:
        raise ValueError(f"{channels} channels do not split into heads of {head_dim}")
    return max(1, channels // head_dim)


def sinusoidal_position_encoding(channels: int, height: int, width: int,
                                 device: torch.device | None = None,
                                 dtype: torch.dtype = torch.float32) -> Tensor:
    """(channels, height, width) encoding: half the channels encode y, half encode x."""
    if channels % 4:
        raise ValueError(f"position encoding needs channels divisible by 4, got {channels}")
    quarter = channels // 4
    freq = torch.exp(torch.arange(quarter, device=device, dtype=torch.float32)
                     * (-math.log(10000.0) / quarter))                   # (C/4,)
    y = torch.arange(height, device=device, dtype=torch.float32)[:, None] * freq  # (H, C/4)
    x = torch.arange(width, device=device, dtype=torch.float32)[:, None] * freq   # (W, C/4)
    enc_y = torch.cat([y.sin(), y.cos()], dim=1).T[:, :, None].expand(-1, height, width)
    enc_x = torch.cat([x.sin(), x.cos()], dim=1).T[:, None, :].expand(-1, height, width)
    return torch.cat([enc_y, enc_x], dim=0).to(dtype)                    # (C, H, W)


class AttentionBlock(nn.Module):
    """Pre-norm multi-head global self-attention, then a 1x1-conv MLP; both residual."""

    def __init__(self, channels: int, head_dim: int = 64):
        super().__init__()
        self.heads = num_heads(channels, head_dim)
        self.attn_norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.attn_out = zero_init(nn.Conv2d(channels, channels, 1))
        self.mlp_norm = group_norm(channels)
        self.mlp = nn.Sequential(nn.Conv2d(channels, channels, 1), nn.SiLU(),
                                 zero_init(nn.Conv2d(channels, channels, 1)))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.attn_norm(x))                                # (B, 3C, H, W)
        qkv = qkv.reshape(b, 3, self.heads, c // self.heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(1)                        # 3 x (B, heads, HW, d)
        y = F.scaled_dot_product_attention(q, k, v)                      # (B, heads, HW, d)
        y = y.transpose(-1, -2).reshape(b, c, h, w)
        x = x + self.attn_out(y)
        return x + self.mlp(self.mlp_norm(x))


class LocalAttention(nn.Module):
    """Block-local attention added residually: x + out(attend(norm(x))).

    The feature map is cut into 2x2 query blocks; each attends to the 6x6 pixels of its 3x3
    block neighbourhood (36 keys), keys outside the image excluded. Each head has a learnable
    bias for the relative offset (dy, dx) in [-3, 3]^2 between query and key pixel.
    Height and width must be even.

    For speed the work is done per tile of TxT query pixels (T = 4 where the size allows) against
    the (T+4)x(T+4) keys around the tile, so each product covers 16 queries; a per-query mask keeps
    each 2x2 block to its own 36 keys, so the result is exactly the definition above. (Measured on
    the CPU: 8x8 tiles waste 4x the products on masked keys, 2x2 tiles gather every key 9 times.)
    Projections run as matrix products on channels-last pixels; q, k and v are projected
    separately, so no gradient has to be split or stacked.
    """

    block = 2                    # query block side
    halo = 2                     # key window reaches this far beyond the block on each side
    span = 2 * (block + halo) - 1  # relative offsets per axis: -3..3

    def __init__(self, channels: int, head_dim: int = 32):
        super().__init__()
        self.heads = num_heads(channels, head_dim)
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = zero_init(nn.Conv2d(channels, channels, 1))
        self.position_bias = nn.Parameter(torch.zeros(self.heads, self.span ** 2))
        self._plans: dict[tuple, tuple[Tensor, ...]] = {}

    def _plan(self, height: int, width: int, tile: int, device: torch.device) -> tuple[Tensor, ...]:
        """Index tensors for one input size (cached): where each tile's keys are in the image (keys
        outside it point at the nearest pixel: they are masked, so any finite value will do), which
        keys fall outside the image, which keys each query may see, and each query-key pair's
        relative-offset index."""
        key = (height, width, tile, device)
        if key not in self._plans:
            s, h = tile + 2 * self.halo, self.halo
            ty = torch.arange(0, height, tile).view(-1, 1, 1, 1)
            tx = torch.arange(0, width, tile).view(1, -1, 1, 1)
            sy, sx = torch.arange(s).view(1, 1, s, 1), torch.arange(s).view(1, 1, 1, s)
            y, x = ty + sy - h, tx + sx - h                                   # key pixel, may be outside
            gather = (y.clamp(0, height - 1) * width + x.clamp(0, width - 1)).reshape(-1)  # (tiles*s*s,)
            outside = ~((y >= 0) & (y < height) & (x >= 0) & (x < width)).reshape(-1, s * s)
            qy, qx = torch.arange(tile).view(-1, 1, 1, 1), torch.arange(tile).view(1, -1, 1, 1)
            ky, kx = sy - h, sx - h                                         # key position in tile coords
            by, bx = qy - qy % self.block, qx - qx % self.block             # the query's block corner
            window = ((ky >= by - h) & (ky < by + self.block + h)
                      & (kx >= bx - h) & (kx < bx + self.block + h)).reshape(tile * tile, s * s)
            r = self.span // 2
            offset = ((ky - qy).clamp(-r, r) + r) * self.span + (kx - qx).clamp(-r, r) + r
            self._plans[key] = tuple(t.to(device) for t in
                                     (gather, outside, window, offset.reshape(tile * tile, s * s)))
        return self._plans[key]

    def forward(self, x: Tensor) -> Tensor:
        b, c, height, width = x.shape
        if height % self.block or width % self.block:
            raise ValueError(f"local attention needs even height and width, got {height}x{width}")
        tile = 4 if height % 4 == 0 and width % 4 == 0 else 2
        s, heads, d = tile + 2 * self.halo, self.heads, c // self.heads
        nh, nw = height // tile, width // tile
        gather, outside, window, offset = self._plan(height, width, tile, x.device)

        pixels = self.norm(x).permute(0, 2, 3, 1)                              # (B, H, W, C)
        (wq, wk, wv), (bq, bk, bv) = self.qkv.weight.flatten(1).chunk(3), self.qkv.bias.chunk(3)
        q = (F.linear(pixels, wq, bq).reshape(b, nh, tile, nw, tile, heads, d)
             .permute(0, 5, 1, 3, 2, 4, 6).reshape(b, heads, nh * nw, tile * tile, d))  # (B, heads, tiles, T*T, d)
        k, v = (F.linear(pixels, w, bias).flatten(1, 2).index_select(1, gather)   # (B, tiles*s*s, C)
                .view(b, nh * nw, s * s, heads, d).permute(0, 3, 1, 2, 4)         # (B, heads, tiles, s*s, d)
                for w, bias in ((wk, bk), (wv, bv)))
        bias = self.position_bias[:, offset].masked_fill(~window, float("-inf"))  # (heads, T*T, s*s)
        bias = bias[:, None] + torch.zeros_like(outside, dtype=bias.dtype).masked_fill(
            outside, float("-inf"))[None, :, None]                          # (heads, tiles, T*T, s*s)
        scores = (q * d ** -0.5) @ k.transpose(-1, -2) + bias.to(q.dtype)   # (B, heads, tiles, T*T, s*s)
        y = scores.softmax(-1) @ v                                          # (B, heads, tiles, T*T, d)
        y = y.reshape(b, heads, nh, nw, tile, tile, d).permute(0, 2, 4, 3, 5, 1, 6).reshape(b, height, width, c)
        y = F.linear(y, self.out.weight.flatten(1), self.out.bias).permute(0, 3, 1, 2)  # (B, C, H, W)
        # keep the caller's memory format: a channels-last tensor here slows NCHW convs after it
        layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        return x + y.contiguous(memory_format=layout)
