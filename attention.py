"""Attention blocks of the published UNet (paper sections 1.4 and 1.9), as its released code
computes them.

- `GlobalAttention`: 4-head self-attention over every pixel of the bottleneck, queries and keys
  C/8 wide per head, values C/4, on `F.scaled_dot_product_attention` (a fused kernel in either
  memory layout).
- `LocalAttention`: the decoder's block-local attention. The map is cut into 2x2 query blocks;
  each attends to the 36 pixels of the 3x3 blocks around it, keys outside the image excluded,
  with a learned per-head bias *subtracted* from each logit by relative offset. Cost grows
  linearly with the pixels: no (HW x HW) mask is ever built.
- `position_encoding`: the fixed encoding the attention bottleneck adds, for any size.

Both attention modules take and give pixels as NCHW maps; their projections are `nn.Linear`
layers on channels-last pixels, so their state-dict tensors are the released code's, shape for
shape, and q/k/v reach the attention kernels with unit last stride.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

HEADS = 4   # every attention layer of the released model has 4 heads


def init_linear(layer: nn.Linear, scale: float = 1.0) -> nn.Linear:
    """The published initialisation of an attention projection: Xavier-normal weight, bias 0.01,
    both times `scale`."""
    with torch.no_grad():
        nn.init.xavier_normal_(layer.weight)
        layer.bias.fill_(0.01)
        layer.weight.mul_(scale)
        layer.bias.mul_(scale)
    return layer


def position_encoding(channels: int, height: int, width: int, device: torch.device | None = None,
                      dtype: torch.dtype = torch.float32) -> Tensor:
    """(channels, height, width): channels 0-3 hold P(x) of the column, channels 4-7 P(y) of the row,
    with P(k) = [sin k, cos k, sin(k/100), cos(k/100)]; every other channel is 0."""
    if channels < 8:
        raise ValueError(f"the position encoding needs at least 8 channels, got {channels}")

    def p(n: int) -> Tensor:                                           # (4, n)
        k = torch.arange(n, device=device, dtype=torch.float32)
        return torch.stack([k.sin(), k.cos(), (k / 100).sin(), (k / 100).cos()])

    enc = torch.zeros(channels, height, width, device=device)
    enc[0:4] = p(width)[:, None, :]
    enc[4:8] = p(height)[:, :, None]
    return enc.to(dtype)


class GlobalAttention(nn.Module):
    """softmax(q k^T / sqrt(C/8)) v over all pixels, 4 heads, heads concatenated, then `out_proj`.

    `kq_proj` gives q (first half of its outputs) and k; channel j of each belongs to head j // width.
    """

    def __init__(self, channels: int):
        super().__init__()
        if channels % (2 * HEADS):
            raise ValueError(f"global attention needs channels divisible by {2 * HEADS}, got {channels}")
        self.qk_dim, self.v_dim = channels // 8, channels // 4
        self.kq_proj = init_linear(nn.Linear(channels, 2 * HEADS * self.qk_dim))
        self.v_proj = init_linear(nn.Linear(channels, HEADS * self.v_dim))
        self.out_proj = init_linear(nn.Linear(HEADS * self.v_dim, channels))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)                                    # (B, HW, C)
        q, k = (self.kq_proj(tokens).view(b, h * w, 2, HEADS, self.qk_dim)
                .permute(2, 0, 3, 1, 4).unbind(0))                               # 2 x (B, heads, HW, C/8)
        v = self.v_proj(tokens).view(b, h * w, HEADS, self.v_dim).transpose(1, 2)  # (B, heads, HW, C/4)
        # The fused kernels (flash on the CPU and CUDA, cuDNN) need one width for q, k and v: zeros
        # appended to q and k leave every q.k as it is, and the scale stays 1/sqrt(C/8).
        q, k = (F.pad(t, (0, self.v_dim - self.qk_dim)) for t in (q, k))         # 2 x (B, heads, HW, C/4)
        y = F.scaled_dot_product_attention(q, k, v, scale=self.qk_dim ** -0.5)   # (B, heads, HW, C/4)
        y = self.out_proj(y.transpose(1, 2).reshape(b, h * w, HEADS * self.v_dim))  # (B, HW, C)
        return y.transpose(1, 2).reshape(b, c, h, w)


class LocalAttention(nn.Module):
    """Block-local attention from `in_channels` to `out_channels`, 4 heads of `head_dim`.

    `in_proj` gives q, k and v in that order, each split into heads by contiguous channels. The map
    is cut into 2x2 query blocks aligned at even coordinates; the 4 pixels of a block attend to
    the 36 pixels of the 3x3 blocks around it, keys outside the image excluded. The logit is
    q.k / sqrt(d) minus `position_bias[head, 8 * (dx + 4) + (dy + 4)]`, (dx, dy) in [-3, 3]^2 the
    key's position minus the query's. Height and width must be even.

    For speed the work is done per tile of TxT query pixels (T = 4 where the size allows) against
    the (T+4)x(T+4) keys around the tile, so each product covers 16 queries; a per-query mask keeps
    each 2x2 block to its own 36 keys, so the result is exactly the definition above. (Measured on
    the CPU: 8x8 tiles waste 4x the products on masked keys, 2x2 tiles gather every key 9 times.)
    """

    block = 2      # query block side
    halo = 2       # the key window reaches this far beyond the block on each side
    offsets = 8    # the bias table's side: dx + 4 and dy + 4 in 0..7

    def __init__(self, in_channels: int, out_channels: int, head_dim: int):
        super().__init__()
        self.head_dim = head_dim
        self.in_proj = init_linear(nn.Linear(in_channels, 3 * HEADS * head_dim))
        self.out_proj = init_linear(nn.Linear(HEADS * head_dim, out_channels), scale=0.01)
        # published start: a bias growing with the squared distance, so near keys count most
        d = torch.arange(self.offsets, dtype=torch.float32) - self.offsets // 2   # dx or dy, -4..3
        start = (d[:, None] ** 2 + d[None, :] ** 2) / 16                         # (dx, dy)
        self.position_bias = nn.Parameter(start.reshape(1, -1).repeat(HEADS, 1))  # (heads, 64)
        self._plans: dict[tuple, tuple[Tensor, ...]] = {}

    def _plan(self, height: int, width: int, tile: int, device: torch.device) -> tuple[Tensor, ...]:
        """Index tensors for one input size (cached): where each tile's keys are in the image (keys
        outside it point at the nearest pixel: they are masked, so any finite value will do), -inf
        for the keys outside the image and 0 elsewhere, which keys each query may see, and each
        query-key pair's index into the bias table."""
        key = (height, width, tile, device)
        if key not in self._plans:
            s, h = tile + 2 * self.halo, self.halo
            ty = torch.arange(0, height, tile).view(-1, 1, 1, 1)
            tx = torch.arange(0, width, tile).view(1, -1, 1, 1)
            sy, sx = torch.arange(s).view(1, 1, s, 1), torch.arange(s).view(1, 1, 1, s)
            y, x = ty + sy - h, tx + sx - h                                   # key pixel, may be outside
            gather = (y.clamp(0, height - 1) * width + x.clamp(0, width - 1)).reshape(-1)  # (tiles*s*s,)
            inside = ((y >= 0) & (y < height) & (x >= 0) & (x < width)).reshape(-1, 1, s * s)
            outside = torch.zeros(inside.shape).masked_fill(~inside, float("-inf"))     # (tiles, 1, s*s)
            qy, qx = torch.arange(tile).view(-1, 1, 1, 1), torch.arange(tile).view(1, -1, 1, 1)
            ky, kx = sy - h, sx - h                                         # key position in tile coords
            by, bx = qy - qy % self.block, qx - qx % self.block             # the query's block corner
            window = ((ky >= by - h) & (ky < by + self.block + h)
                      & (kx >= bx - h) & (kx < bx + self.block + h)).reshape(tile * tile, s * s)
            r = self.offsets // 2                                           # masked pairs: any entry
            dx, dy = (kx - qx).clamp(-r, r - 1) + r, (ky - qy).clamp(-r, r - 1) + r
            index = (self.offsets * dx + dy).reshape(tile * tile, s * s)
            self._plans[key] = tuple(t.to(device) for t in (gather, outside, window, index))
        return self._plans[key]

    def forward(self, x: Tensor) -> Tensor:
        b, c, height, width = x.shape
        if height % self.block or width % self.block:
            raise ValueError(f"local attention needs even height and width, got {height}x{width}")
        tile = 4 if height % 4 == 0 and width % 4 == 0 else 2
        s, d = tile + 2 * self.halo, self.head_dim
        nh, nw = height // tile, width // tile
        gather, outside, window, index = self._plan(height, width, tile, x.device)

        pixels = x.permute(0, 2, 3, 1)                                         # (B, H, W, C)
        (wq, wk, wv), (bq, bk, bv) = self.in_proj.weight.chunk(3), self.in_proj.bias.chunk(3)
        q = (F.linear(pixels, wq, bq).reshape(b, nh, tile, nw, tile, HEADS, d)
             .permute(0, 5, 1, 3, 2, 4, 6).reshape(b, HEADS, nh * nw, tile * tile, d))  # (B, heads, tiles, T*T, d)
        k, v = (F.linear(pixels, w, bias).flatten(1, 2).index_select(1, gather)   # (B, tiles*s*s, heads*d)
                .view(b, nh * nw, s * s, HEADS, d).permute(0, 3, 1, 2, 4)         # (B, heads, tiles, s*s, d)
                for w, bias in ((wk, bk), (wv, bv)))
        bias = (-self.position_bias[:, index]).masked_fill(~window, float("-inf"))  # (heads, T*T, s*s)
        scores = (q * d ** -0.5) @ k.transpose(-1, -2)                      # (B, heads, tiles, T*T, s*s)
        # two broadcast adds in place: the (heads, tiles, T*T, s*s) sum of both masks is never built
        scores += bias[:, None].to(q.dtype)
        scores += outside.to(q.dtype)
        y = scores.softmax(-1) @ v                                          # (B, heads, tiles, T*T, d)
        y = (y.reshape(b, HEADS, nh, nw, tile, tile, d).permute(0, 2, 4, 3, 5, 1, 6)
             .reshape(b, height, width, HEADS * d))                         # (B, H, W, heads*d)
        y = self.out_proj(y).permute(0, 3, 1, 2)                            # (B, C_out, H, W)
        # keep the caller's memory format: a channels-last tensor here slows NCHW convs after it
        layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        return y.contiguous(memory_format=layout)
