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
    """

    block = 2                    # query block side
    window = 6                   # key window side: 3 blocks of 2
    span = window + block - 1    # relative offsets per axis: -3..3

    def __init__(self, channels: int, head_dim: int = 32):
        super().__init__()
        self.heads = num_heads(channels, head_dim)
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = zero_init(nn.Conv2d(channels, channels, 1))
        self.position_bias = nn.Parameter(torch.zeros(self.heads, self.span ** 2))
        self.register_buffer("bias_index", self._relative_index(), persistent=False)

    @classmethod
    def _relative_index(cls) -> Tensor:
        """(4, 36) index into the 7x7 offset table for query pixel i and window key j."""
        qy, qx = torch.meshgrid(torch.arange(cls.block), torch.arange(cls.block), indexing="ij")
        ky, kx = torch.meshgrid(torch.arange(cls.window), torch.arange(cls.window), indexing="ij")
        pad = (cls.window - cls.block) // 2                           # window starts 2 px before the block
        dy = (ky.reshape(1, -1) - pad) - qy.reshape(-1, 1)            # (4, 36) in [-3, 3]
        dx = (kx.reshape(1, -1) - pad) - qx.reshape(-1, 1)
        return (dy + cls.span // 2) * cls.span + (dx + cls.span // 2)

    def _windows(self, t: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, nH*nW, 36, C): each block's 6x6 key window, zero outside."""
        pad = (self.window - self.block) // 2
        t = F.pad(t, (pad, pad, pad, pad))
        t = t.unfold(2, self.window, self.block).unfold(3, self.window, self.block)
        b, c, nh, nw = t.shape[:4]                                    # (B, C, nH, nW, 6, 6)
        return t.permute(0, 2, 3, 4, 5, 1).reshape(b, nh * nw, self.window ** 2, c)

    def _key_bias(self, height: int, width: int, dtype: torch.dtype) -> Tensor:
        """(heads, nH*nW, 4, 36) relative-position bias, -inf on keys outside the image."""
        inside = torch.ones(1, 1, height, width, device=self.position_bias.device, dtype=dtype)
        inside = self._windows(inside)[0, :, :, 0] > 0                # (nH*nW, 36)
        bias = self.position_bias[:, self.bias_index].to(dtype)       # (heads, 4, 36)
        outside = torch.zeros(inside.shape, device=inside.device, dtype=dtype)
        outside.masked_fill_(~inside, float("-inf"))
        return bias[:, None] + outside[None, :, None, :]             # (heads, nH*nW, 4, 36)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        if h % self.block or w % self.block:
            raise ValueError(f"local attention needs even height and width, got {h}x{w}")
        nh, nw, d = h // self.block, w // self.block, c // self.heads
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=1)              # 3 x (B, C, H, W)
        q = q.reshape(b, self.heads, d, nh, self.block, nw, self.block)
        q = q.permute(0, 1, 3, 5, 4, 6, 2).reshape(b, self.heads, nh * nw, self.block ** 2, d)
        k, v = (self._windows(t).reshape(b, nh * nw, self.window ** 2, self.heads, d)
                .permute(0, 3, 1, 2, 4) for t in (k, v))              # (B, heads, nH*nW, 36, d)
        bias = self._key_bias(h, w, q.dtype)                          # (heads, nH*nW, 4, 36)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (B, heads, nH*nW, 4, d)
        y = y.reshape(b, self.heads, nh, nw, self.block, self.block, d)
        y = y.permute(0, 1, 6, 2, 4, 3, 5).reshape(b, c, h, w)
        return x + self.out(y)
