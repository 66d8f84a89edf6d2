"""Painting a photo and its label mask together, for synthetic.py: shapes (polygons, ellipses, rings,
lines, chords, and tapered limbs built of them) are drawn once into a coverage layer, through which
`Canvas.paint` composites a textured `Fill` into the photo and writes a label into the mask, so photo and
mask always agree. The canvas starts from a studio `backdrop`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

Chain = tuple[list[tuple[float, float]], list[float]]  # joint points and the limb width at each
Shape = tuple  # ("polygon", points) | ("ellipse", box) | ("ring", box, width) | ("line", points, width)
#                | ("chord", box, start_degrees, end_degrees)


@dataclass
class Fill:
    """A garment surface: a colour, an optional pattern in a second colour, and grain."""
    colour: np.ndarray                 # (3,) RGB 0-255
    kind: str = "solid"                # solid, stripes, checks, dots, knit or denim
    second: np.ndarray | None = None   # (3,) pattern colour
    period: float = 10.0               # pattern period in pixels
    angle: float = 0.0                 # pattern direction in radians
    grain: float = 2.0                 # per-pixel noise, grey levels

    def render(self, ys: np.ndarray, xs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Global pixel coordinates ys (h, 1), xs (1, w) -> (h, w, 3) float32, so one garment's pattern
        runs on across its separately drawn parts."""
        shape = (ys.shape[0], xs.shape[1])
        u = (xs * math.cos(self.angle) + ys * math.sin(self.angle)) / self.period  # (h, w)
        v = (ys * math.cos(self.angle) - xs * math.sin(self.angle)) / self.period
        mix = {"stripes": lambda: (u % 1) < 0.5,
               "checks": lambda: 0.5 * ((u % 1) < 0.35) + 0.5 * ((v % 1) < 0.35),  # plaid bands
               "dots": lambda: (u % 1 - 0.5) ** 2 + (v % 1 - 0.5) ** 2 < 0.06,
               "knit": lambda: 0.5 + 0.5 * np.sin(2 * np.pi * u),  # ribs
               "denim": lambda: 0.4 * (((u + v) * 3) % 1 < 0.5),  # twill
               }.get(self.kind, lambda: np.zeros(shape))()
        second = self.colour if self.second is None else self.second
        out = self.colour + (second - self.colour) * np.asarray(mix, np.float32)[..., None]
        out = out + rng.standard_normal((*shape, 1), dtype=np.float32) * self.grain
        if self.kind == "denim":
            out = out + rng.standard_normal((1, shape[1], 1), dtype=np.float32) * 6  # vertical streaks
        return out


def sub_chain(chain: Chain, t0: float, t1: float, widen: float = 1.0) -> Chain:
    """The part of a limb between fractions t0 and t1 of its length, widths scaled by widen."""
    points, widths = np.asarray(chain[0], np.float64), np.asarray(chain[1], np.float64)
    along = np.concatenate([[0], np.cumsum(np.hypot(*np.diff(points, axis=0).T))])
    along /= along[-1]
    ts = np.concatenate([[t0], along[(along > t0) & (along < t1)], [t1]])
    xs, ys = np.interp(ts, along, points[:, 0]), np.interp(ts, along, points[:, 1])
    return list(zip(xs.tolist(), ys.tolist())), (np.interp(ts, along, widths) * widen).tolist()


def limb(chain: Chain, round_end: bool = False) -> list[Shape]:
    """A tapered limb: one quad per segment, discs at the joints so bends have no notches."""
    points, widths = chain
    shapes: list[Shape] = []
    for (px, py), (qx, qy), wp, wq in zip(points, points[1:], widths, widths[1:]):
        length = math.hypot(qx - px, qy - py) or 1.0
        nx, ny = (py - qy) / length / 2, (qx - px) / length / 2  # half a unit normal
        shapes.append(("polygon", [(px + nx * wp, py + ny * wp), (qx + nx * wq, qy + ny * wq),
                                   (qx - nx * wq, qy - ny * wq), (px - nx * wp, py - ny * wp)]))
    joints = list(zip(points, widths))[1:] if round_end else list(zip(points, widths))[1:-1]
    shapes += [ellipse(x, y, w / 2, w / 2) for (x, y), w in joints]
    return shapes


def ellipse(x: float, y: float, rx: float, ry: float) -> Shape:
    return ("ellipse", (x - rx, y - ry, x + rx, y + ry))


def draw_shapes(draw: ImageDraw.ImageDraw, shapes: list[Shape]) -> None:
    for kind, *geometry in shapes:
        if kind == "polygon":
            draw.polygon(geometry[0], fill=255)
        elif kind == "ellipse":
            draw.ellipse(geometry[0], fill=255)
        elif kind == "ring":
            draw.ellipse(geometry[0], outline=255, width=max(1, round(geometry[1])))
        elif kind == "line":
            draw.line(geometry[0], fill=255, width=max(1, round(geometry[1])), joint="curve")
        elif kind == "chord":
            draw.chord(geometry[0], geometry[1], geometry[2], fill=255)
        else:
            raise ValueError(f"unknown shape {kind!r}")


class Canvas:
    """The photo (H, W, 3) float32 and its mask (H, W) uint8, painted part by part, back to front."""

    def __init__(self, photo: np.ndarray, light: tuple[float, float]) -> None:
        self.photo = photo
        self.mask = np.zeros(photo.shape[:2], np.uint8)
        self.light = light  # key-light gradient across the frame (x, y)

    def paint(self, label: int | None, shapes: list[Shape], fill: Fill, rng: np.random.Generator,
              relief: float = 0.3) -> None:
        """Composite fill through the shapes' coverage and write label (None: photo only) under it."""
        height, width = self.mask.shape
        layer = Image.new("L", (width, height))
        draw_shapes(ImageDraw.Draw(layer), shapes)
        box = layer.getbbox()
        if box is None:
            return
        x0, y0, x1, y1 = box
        cover = np.asarray(layer.crop(box)) > 0  # (h, w)
        ys = np.arange(y0, y1, dtype=np.float32)[:, None]
        xs = np.arange(x0, x1, dtype=np.float32)[None, :]
        # relief: darken towards the outline, so parts look round rather than flat cut-outs
        r = max(1, round(0.2 * min(x1 - x0, y1 - y0)))
        soft = layer.crop((x0 - r, y0 - r, x1 + r, y1 + r)).filter(ImageFilter.GaussianBlur(r / 2))
        soft = np.asarray(soft, np.float32)[r:-r, r:-r] / 255  # (h, w): 1 inside, ~0.5 at the outline
        light = 1 + self.light[0] * (xs / width - 0.5) + self.light[1] * (ys / height - 0.5)
        shade = ((1 - relief + relief * soft) * light)[..., None]  # (h, w, 1)
        self.photo[y0:y1, x0:x1][cover] = (fill.render(ys, xs, rng) * shade)[cover]
        if label is not None:
            self.mask[y0:y1, x0:x1][cover] = label

    def shadow(self, x: float, y: float, rx: float, ry: float, strength: float) -> None:
        """A soft floor shadow (photo only) centred at (x, y)."""
        height, width = self.mask.shape
        y0, y1 = max(0, int(y - 3 * ry)), min(height, int(y + 3 * ry))
        x0, x1 = max(0, int(x - 2 * rx)), min(width, int(x + 2 * rx))
        ys = np.arange(y0, y1, dtype=np.float32)[:, None]
        xs = np.arange(x0, x1, dtype=np.float32)[None, :]
        soft = np.exp(-((xs - x) / rx) ** 2 - ((ys - y) / ry) ** 2)  # (h, w)
        self.photo[y0:y1, x0:x1] *= (1 - strength * soft)[..., None]


def backdrop(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A diffusely lit light studio wall: (H, W, 3) float32."""
    base = rng.uniform(212, 246) + rng.uniform(-5, 5, 3).astype(np.float32)  # slightly warm or cool
    ys = np.linspace(-1, 1, height, dtype=np.float32)[:, None]
    xs = np.linspace(-1, 1, width, dtype=np.float32)[None, :]
    cx, cy = rng.uniform(-0.4, 0.4, 2)
    falloff = -rng.uniform(6, 22) * (0.6 * (xs - cx) ** 2 + 0.4 * (ys - cy) ** 2) + rng.uniform(-8, 8) * ys
    grain = rng.standard_normal((height, width), dtype=np.float32) * 1.5
    return (base + (falloff + grain)[..., None]).astype(np.float32)
