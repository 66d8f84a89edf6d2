"""The synthetic data set: studio-style photos of one drawn figure with label masks, in the real
DeepFashion-MultiModal layout and naming scheme (the demo's data and the tests').

Every part is painted on a canvas.py `Canvas`: its shapes are drawn once into a coverage layer, which
composites a textured fill into the photo and writes the label into the mask, so photo and mask always agree.

    python synthetic.py OUT_DIR --count 200 [--seed 0] [--width 750 --height 1101]
    python synthetic.py OUT_DIR --count 40 --layout lip --width 150 --height 220   # LIP's layout and labels
"""
from __future__ import annotations

import argparse
import colorsys
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from canvas import Canvas, Chain, Fill, Shape, backdrop, draw_shapes, ellipse, limb, sub_chain
from dataset import _IMAGE_SUFFIX, _MASK_SUFFIX, DEFAULT_TEST_SPLIT, Pair, outfit_key, read_split_file
from labels import LABELS, LabelSet, load_label_map, load_label_set

_ID = {name: i for i, name in enumerate(LABELS)}
_CATEGORIES = {  # (category, weight) per gender, roughly as in the real data but rare ones boosted
    "WOMEN": (("Dresses", 20), ("Tees_Tanks", 12), ("Blouses_Shirts", 9), ("Rompers_Jumpsuits", 12),
              ("Skirts", 8), ("Pants", 6), ("Shorts", 6), ("Jackets_Coats", 6), ("Cardigans", 5),
              ("Sweaters", 5), ("Leggings", 6), ("Denim", 4), ("Graphic_Tees", 4)),
    "MEN": (("Tees_Tanks", 6), ("Shirts_Polos", 4), ("Pants", 4), ("Shorts", 3), ("Jackets_Vests", 3),
            ("Denim", 2), ("Sweaters", 2), ("Suiting", 2), ("Sweatshirts_Hoodies", 2)),
}
_VIEWS = (("front", 30), ("full", 35), ("additional", 20), ("side", 8), ("back", 7))
_VIEW_NUMBERS = {"front": 1, "side": 2, "back": 3, "full": 4, "additional": 7}  # as in the real names
_BOTTOM_OF = {"Pants": "pants", "Shorts": "shorts", "Skirts": "skirt", "Leggings": "leggings", "Suiting": "pants"}
_BOTTOMS = {"WOMEN": (("pants", 40), ("shorts", 20), ("skirt", 28), ("leggings", 12)),
            "MEN": (("pants", 70), ("shorts", 30))}
_OUTER_CATEGORIES = ("Jackets_Coats", "Jackets_Vests", "Cardigans", "Suiting")
_HAIR = {"WOMEN": (("long", 45), ("ponytail", 15), ("bun", 15), ("short", 20), ("none", 5)),
         "MEN": (("short", 80), ("long", 10), ("none", 10))}
_EXTRAS = {  # accessory label: (probability for WOMEN, for MEN)
    "headwear": (0.2, 0.2), "eyeglass": (0.2, 0.25), "neckwear": (0.15, 0.1), "tie": (0.06, 0.25),
    "belt": (0.3, 0.35), "bag": (0.35, 0.15), "ring": (0.35, 0.15), "wrist wearing": (0.4, 0.35),
    "gloves": (0.12, 0.1), "necklace": (0.4, 0.1), "earrings": (0.45, 0.05),
}
_TEXTURES = (("solid", 30), ("stripes", 15), ("checks", 10), ("dots", 10), ("knit", 20), ("denim", 15))
_HAIR_COLOURS = ((30, 25, 22), (62, 42, 30), (105, 72, 45), (190, 160, 105), (140, 70, 35), (165, 160, 155))
_METALS = ((212, 175, 55), (196, 196, 204), (183, 110, 90))
# torso half width is interpolated between these levels (in head heights below the top of the head)
_TORSO_LEVELS = (1.25, 1.6, 2.2, 2.9, 3.5, 3.95)


def _weighted(rng: np.random.Generator, table: tuple[tuple[str, float], ...]) -> str:
    names, weights = zip(*table)
    return names[rng.choice(len(names), p=np.array(weights) / sum(weights))]


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    """One colour range shared by all garments, so that colour alone never gives the label."""
    saturation = rng.uniform(0, 0.15) if rng.random() < 0.3 else rng.uniform(0.25, 0.85)
    rgb = colorsys.hsv_to_rgb(rng.random(), saturation, rng.uniform(0.12, 0.95))
    return np.array(rgb, np.float32) * 255


def _garment_fill(rng: np.random.Generator, h: float, kind: str | None = None) -> Fill:
    kind = kind or _weighted(rng, _TEXTURES)
    if kind == "denim":
        colour = np.array(colorsys.hsv_to_rgb(rng.uniform(0.57, 0.64), rng.uniform(0.35, 0.7),
                                              rng.uniform(0.25, 0.75)), np.float32) * 255
        return Fill(colour, kind, np.minimum(colour * 1.4 + 25, 255), max(3.0, 0.08 * h), math.pi / 4, 4)
    colour = _random_colour(rng)
    second = colour * rng.uniform(0.6, 0.85) if kind == "knit" else _random_colour(rng)
    angle = rng.choice((0, math.pi / 2, math.pi / 4, -math.pi / 4)) + rng.uniform(-0.1, 0.1)
    return Fill(colour, kind, second, max(2.0, h * rng.uniform(0.06, 0.3)), angle, rng.uniform(1.5, 6))


def _skin_tone(rng: np.random.Generator) -> np.ndarray:
    light, dark = np.array((240, 208, 184), np.float32), np.array((92, 58, 40), np.float32)
    return light + (dark - light) * rng.random() + rng.uniform(-8, 8, 3).astype(np.float32)


@dataclass
class _Outfit:
    view: str
    garment: str            # what covers the torso: "top", "dress" or "rompers"
    bottom: str | None      # with a top: "pants", "shorts", "skirt" or "leggings"
    leg_cover: float        # fraction of the leg (hip to ankle) that pants, shorts or rompers cover
    sleeves: str            # "none", "short" or "long"
    outer: bool
    leggings: bool
    socks: bool
    shoes: str | None       # "shoes", "boots" or None (barefoot)
    hair: str               # "none", "short", "long", "bun" or "ponytail"
    denim: bool
    extras: set[str] = field(default_factory=set)  # accessory labels present


def _choose_outfit(rng: np.random.Generator, gender: str, category: str, view: str) -> _Outfit:
    """A plausible outfit for the name's category: a dress XOR top + bottom, rompers alone, ..."""
    women = gender == "WOMEN"
    garment = {"Dresses": "dress", "Rompers_Jumpsuits": "rompers"}.get(category, "top")
    bottom = None
    if garment == "top":
        bottom = _BOTTOM_OF.get(category) or _weighted(rng, _BOTTOMS[gender])
    long_legs = bottom in ("pants", "leggings") or (garment == "rompers" and rng.random() < 0.4)  # jumpsuit
    leg_cover = 0.0
    if long_legs:
        leg_cover = 0.97
    elif bottom == "shorts" or garment == "rompers":
        leg_cover = rng.uniform(0.18, 0.4)
    leggings = bottom == "leggings" or (not long_legs and women and rng.random() < 0.2)
    shoes = None if rng.random() < 0.08 else "boots" if rng.random() < 0.2 else "shoes"
    socks = shoes is not None and not long_legs and not leggings and rng.random() < 0.4
    hair = _weighted(rng, _HAIR[gender])
    extras = {name for name, (p_women, p_men) in _EXTRAS.items() if rng.random() < (p_women if women else p_men)}
    if category == "Suiting":
        extras.add("tie")
    if garment != "top" or view == "back":
        extras.discard("tie")
    if view == "back":
        extras -= {"eyeglass", "earrings", "necklace"}
        hair = "short" if hair == "none" else hair
    if "gloves" in extras:
        extras.discard("ring")
    sleeves = _weighted(rng, (("none", 3), ("short", 4), ("long", 3)))
    outer = category in _OUTER_CATEGORIES or rng.random() < 0.2
    return _Outfit(view=view, garment=garment, bottom=bottom, leg_cover=leg_cover, sleeves=sleeves, outer=outer,
                   leggings=leggings, socks=socks, shoes=shoes, hair=hair, denim=category == "Denim", extras=extras)


@dataclass
class _Body:
    """Figure geometry in pixels; levels are in head heights h below the top of the head."""
    cx: float
    top: float
    h: float
    shoulder: float  # half widths
    waist: float
    hip: float
    arms: list[Chain]   # per side (left, right): shoulder, elbow, wrist
    hands: list[Chain]  # wrist, finger tips
    legs: list[Chain]   # hip joint, knee, ankle

    def y(self, level: float) -> float:
        return self.top + level * self.h

    def half_width(self, level: float) -> float:
        s, w, p = self.shoulder, self.waist, self.hip
        return float(np.interp(level, _TORSO_LEVELS, (0.5 * s, s, 0.9 * s, w, p, 0.95 * p)))


def _make_body(rng: np.random.Generator, width: int, height: int, gender: str) -> _Body:
    """A standing figure filling 70-85% of the height, anywhere vertically, with a random pose."""
    figure = height * rng.uniform(0.70, 0.85)
    h = figure / 7.5
    top = rng.uniform(0.02 * height, 0.98 * height - figure)
    cx = width / 2 + rng.uniform(-0.05, 0.05) * width
    build = rng.uniform(0.9, 1.15) * h
    men = gender == "MEN"
    shoulder = build * (rng.uniform(1.0, 1.15) if men else rng.uniform(0.85, 0.98))
    waist = build * (rng.uniform(0.62, 0.75) if men else rng.uniform(0.5, 0.62))
    hip = build * (rng.uniform(0.68, 0.8) if men else rng.uniform(0.75, 0.9))
    arms, hands, legs = [], [], []
    for side in (-1, 1):
        # arm angles from the vertical, outward positive; "hip" bends the forearm back to the waist
        pose = _weighted(rng, (("down", 5), ("out", 3), ("hip", 2)))
        upper = {"down": rng.uniform(3, 12), "out": rng.uniform(14, 28), "hip": rng.uniform(20, 32)}[pose]
        fore = rng.uniform(-55, -35) if pose == "hip" else upper + rng.uniform(-6, 15)
        shoulder_pt = (cx + side * 0.86 * shoulder, top + 1.6 * h)
        elbow = _step(shoulder_pt, side, upper, 1.45 * h)
        wrist = _step(elbow, side, fore, 1.25 * h)
        arms.append(([shoulder_pt, elbow, wrist], [0.38 * build, 0.27 * build, 0.2 * build]))
        hands.append(([wrist, _step(wrist, side, fore, 0.5 * h)], [0.22 * build, 0.2 * build]))
        thigh = rng.uniform(0, 8)
        hip_pt = (cx + side * 0.47 * hip, top + 3.75 * h)
        knee = _step(hip_pt, side, thigh, 1.75 * h)
        ankle = _step(knee, side, thigh + rng.uniform(-4, 2), 1.65 * h)
        legs.append(([hip_pt, knee, ankle], [0.95 * hip, 0.42 * build, 0.25 * build]))
    return _Body(cx, top, h, shoulder, waist, hip, arms, hands, legs)


def _step(point: tuple[float, float], side: int, degrees: float, length: float) -> tuple[float, float]:
    angle = math.radians(degrees)
    return point[0] + side * length * math.sin(angle), point[1] + length * math.cos(angle)


def _torso(body: _Body, start: float, end: float, widen: float = 1.0,
           neck: tuple[float, float] | None = None) -> list[Shape]:
    """The torso between two levels; neck = (half width, depth) in pixels cuts a neckline."""
    levels = [start] + [lv for lv in _TORSO_LEVELS if start < lv < end] + [end]
    left = [(body.cx - widen * body.half_width(lv), body.y(lv)) for lv in levels]
    right = [(body.cx + widen * body.half_width(lv), body.y(lv)) for lv in reversed(levels)]
    cut = [] if neck is None else [(body.cx + neck[0] * math.cos(t), body.y(start) + neck[1] * math.sin(t))
                                   for t in np.linspace(0, math.pi, 9)]
    return [("polygon", left + right + cut)]


def _skirt(body: _Body, start: float, hem: float, flare: float) -> Shape:
    """A skirt from the waist (level start) to level hem, widening by flare * h per head height."""
    hip_w = 1.06 * body.hip
    hem_w = hip_w + flare * body.h * (hem - 3.5)
    curve = [(body.cx + hem_w * math.cos(t), body.y(hem) + 0.1 * body.h * math.sin(t))
             for t in np.linspace(0, math.pi, 9)]
    waist_w = 1.05 * body.half_width(start)
    return ("polygon", [(body.cx - waist_w, body.y(start)), (body.cx + waist_w, body.y(start)),
                        (body.cx + hip_w, body.y(3.5)), *curve, (body.cx - hip_w, body.y(3.5))])


def _draw_lower(canvas: Canvas, rng: np.random.Generator, body: _Body, outfit: _Outfit,
                fills: dict[str, Fill]) -> None:
    """Bare body, legwear, shoes and the bottom garment: everything under the torso garment."""
    h, cx = body.h, body.cx
    neck = ("polygon", [(cx - 0.16 * h, body.y(0.8)), (cx + 0.16 * h, body.y(0.8)),
                        (cx + 0.2 * h, body.y(1.4)), (cx - 0.2 * h, body.y(1.4))])
    feet = [ellipse(c[0][-1][0], c[0][-1][1] + 0.2 * h, 0.17 * h, 0.14 * h) for c in body.legs]
    legs = [shape for chain in body.legs for shape in limb(chain)]
    canvas.paint(_ID["skin"], [neck] + _torso(body, 1.25, 3.95) + legs + feet, fills["skin"], rng)
    if outfit.leggings:
        shapes = _torso(body, 2.9, 3.95, 1.02) + [s for c in body.legs for s in limb(sub_chain(c, 0, 1, 1.05))]
        canvas.paint(_ID["leggings"], shapes, fills["leggings"], rng)
    if outfit.socks:
        shapes = [s for c in body.legs for s in limb(sub_chain(c, 0.82, 1, 1.08))] + feet
        canvas.paint(_ID["socks"], shapes, fills["socks"], rng)
    if outfit.shoes:
        start = 0.72 if outfit.shoes == "boots" else 0.96
        shapes = [s for c in body.legs for s in limb(sub_chain(c, start, 1, 1.15))]
        shapes += [ellipse(c[0][-1][0], c[0][-1][1] + 0.2 * h, 0.22 * h, 0.16 * h) for c in body.legs]
        canvas.paint(_ID["footwear"], shapes, fills["shoes"], rng, relief=0.4)
    if outfit.bottom in ("pants", "shorts"):
        legs = [s for c in body.legs for s in limb(sub_chain(c, 0, outfit.leg_cover, rng.uniform(1.1, 1.35)))]
        canvas.paint(_ID["pants"], _torso(body, 2.85, 3.95, 1.05) + legs, fills["bottom"], rng)
    elif outfit.bottom == "skirt":
        skirt = _skirt(body, 2.85, rng.uniform(4.2, 6.2), rng.uniform(0.05, 0.4))
        canvas.paint(_ID["skirt"], [skirt], fills["bottom"], rng)


def _draw_torso(canvas: Canvas, rng: np.random.Generator, body: _Body, outfit: _Outfit,
                fills: dict[str, Fill]) -> None:
    """Top, dress or rompers, then belt, necklace, tie and the open outer layer."""
    h, cx = body.h, body.cx
    neck = (rng.uniform(0.22, 0.36) * h, rng.uniform(0.1, 0.6) * h)
    if outfit.garment == "top":
        tucked = outfit.bottom in ("pants", "skirt", "shorts") and rng.random() < 0.35
        shapes = _torso(body, 1.25, 3.0 if tucked else rng.uniform(3.5, 3.95), 1.05, neck)
    elif outfit.garment == "dress":
        skirt = _skirt(body, 2.85, rng.uniform(4.4, 6.6), rng.uniform(0.05, 0.35))
        shapes = _torso(body, 1.25, 2.95, 1.04, neck) + [skirt]
    else:
        legs = [s for c in body.legs for s in limb(sub_chain(c, 0, outfit.leg_cover, 1.2))]
        shapes = _torso(body, 1.25, 3.95, 1.05, neck) + legs
    canvas.paint(_ID[outfit.garment], shapes, fills["garment"], rng)
    if "belt" in outfit.extras:
        canvas.paint(_ID["belt"], _torso(body, 2.8, 2.97, 1.08), fills["belt"], rng, relief=0.1)
        if outfit.view != "back":
            buckle = ("ring", (cx - 0.1 * h, body.y(2.78), cx + 0.1 * h, body.y(2.99)), 0.04 * h)
            canvas.paint(_ID["belt"], [buckle], fills["metal"], rng, relief=0)
    if "necklace" in outfit.extras:
        drop = rng.uniform(0.2, 0.7) * h
        chain = [(cx + 0.28 * h * math.cos(t), body.y(1.3) + drop * math.sin(t))
                 for t in np.linspace(0, math.pi, 12)]
        pendant = ellipse(cx, body.y(1.3) + drop + 0.04 * h, 0.05 * h, 0.06 * h)
        canvas.paint(_ID["necklace"], [("line", chain, 0.035 * h), pendant], fills["metal"], rng, relief=0)
    if "tie" in outfit.extras:
        tie = [(cx - 0.07 * h, body.y(1.35)), (cx + 0.07 * h, body.y(1.35)), (cx + 0.13 * h, body.y(2.9)),
               (cx, body.y(3.1)), (cx - 0.13 * h, body.y(2.9))]
        canvas.paint(_ID["tie"], [("polygon", tie)], fills["tie"], rng)
    if outfit.outer:
        end, gap = rng.uniform(3.6, 5.2), rng.uniform(0.1, 0.4) * h
        for side in (-1, 1):
            levels = [1.25] + [lv for lv in _TORSO_LEVELS if 1.25 < lv < end] + [end]
            edge = [(cx + side * 1.12 * body.half_width(lv), body.y(lv)) for lv in levels]
            lapel = [(cx + side * gap, body.y(end)), (cx + side * gap, body.y(2.4)),
                     (cx + side * 0.3 * h, body.y(1.25))]
            canvas.paint(_ID["outer"], [("polygon", edge + lapel)], fills["outer"], rng)


def _draw_arms(canvas: Canvas, rng: np.random.Generator, body: _Body, outfit: _Outfit,
               fills: dict[str, Fill]) -> None:
    """Arms and hands over the torso, then sleeves, gloves, wrist wearing, ring and bag."""
    h = body.h
    hands = [s for c in body.hands for s in limb(c, round_end=True)]
    canvas.paint(_ID["skin"], [s for c in body.arms for s in limb(c)] + hands, fills["skin"], rng)
    caps = [ellipse(c[0][0][0], c[0][0][1] + 0.04 * h, 0.2 * h, 0.2 * h) for c in body.arms]  # round seams
    if outfit.sleeves != "none":
        end = 1.0 if outfit.sleeves == "long" else rng.uniform(0.2, 0.45)
        sleeves = [s for c in body.arms for s in limb(sub_chain(c, 0, end, 1.2))]
        canvas.paint(_ID[outfit.garment], caps + sleeves, fills["garment"], rng)
    if outfit.outer:
        sleeves = [s for c in body.arms for s in limb(sub_chain(c, 0, 0.98, 1.35))]
        canvas.paint(_ID["outer"], caps + sleeves, fills["outer"], rng)
    if "gloves" in outfit.extras:
        gloves = [s for c in body.hands for s in limb(sub_chain(c, 0, 1, 1.12), round_end=True)]
        gloves += [s for c in body.arms for s in limb(sub_chain(c, 0.9, 1, 1.1))]
        canvas.paint(_ID["gloves"], gloves, fills["gloves"], rng)
    side = int(rng.integers(2))
    if "wrist wearing" in outfit.extras:
        band = limb(sub_chain(body.arms[side], 0.9, 0.97, 1.3))
        strap = fills["metal" if rng.random() < 0.5 else "bag"]  # bracelet or leather watch strap
        canvas.paint(_ID["wrist wearing"], band, strap, rng, relief=0.2)
    if "ring" in outfit.extras:
        points, _ = sub_chain(body.hands[1 - side], 0, 0.6)  # on a finger, past the knuckles
        canvas.paint(_ID["ring"], [ellipse(*points[-1], 0.05 * h, 0.05 * h)], fills["metal"], rng, relief=0)
    if "bag" in outfit.extras:
        _draw_bag(canvas, rng, body, fills["bag"])


def _draw_bag(canvas: Canvas, rng: np.random.Generator, body: _Body, fill: Fill) -> None:
    """A bag carried in one hand, or hanging at the hip from the opposite shoulder."""
    h, sign = body.h, (-1, 1)[int(rng.integers(2))]
    width, depth = rng.uniform(0.6, 1.0) * h, rng.uniform(0.5, 0.9) * h
    if rng.random() < 0.5:
        x, y = body.hands[(sign + 1) // 2][0][-1]
        top = y + 0.3 * h
        straps = [("line", [(x, y), (x + s * width / 3, top)], 0.05 * h) for s in (-1, 1)]
    else:
        x, top = body.cx + sign * (body.hip + 0.35 * h), body.y(3.3)
        straps = [("line", [(body.cx - sign * 0.6 * body.shoulder, body.y(1.35)), (x, top)], 0.06 * h)]
    bag = ("polygon", [(x - width / 2, top), (x + width / 2, top), (x + 0.55 * width, top + depth),
                       (x - 0.55 * width, top + depth)])
    canvas.paint(_ID["bag"], straps + [bag], fill, rng)


def _draw_head(canvas: Canvas, rng: np.random.Generator, body: _Body, outfit: _Outfit,
               fills: dict[str, Fill]) -> None:
    """Neckwear, then the face with eyes, brows and mouth (or the back of the head), then hair."""
    h, cx = body.h, body.cx
    if "neckwear" in outfit.extras:
        band = ("polygon", [(cx - 0.3 * h, body.y(0.95)), (cx + 0.3 * h, body.y(0.95)),
                            (cx + 0.36 * h, body.y(1.45)), (cx - 0.36 * h, body.y(1.45))])
        hanging = [(cx + 0.12 * h, body.y(1.3)), (cx + 0.2 * h, body.y(rng.uniform(2.2, 3.0)))]
        end = limb((hanging, [0.28 * h, 0.22 * h]))
        canvas.paint(_ID["neckwear"], [band] + end, fills["neckwear"], rng)
    head = ("ellipse", (cx - 0.36 * h, body.top, cx + 0.36 * h, body.y(1.05)))
    if outfit.view == "back":
        canvas.paint(_ID["hair"], [head], fills["hair"], rng)
        return
    ears = [ellipse(cx + s * 0.36 * h, body.y(0.56), 0.07 * h, 0.12 * h) for s in (-1, 1)]
    canvas.paint(_ID["face"], [head] + ears, fills["skin"], rng, relief=0.2)
    dark = Fill(np.array((45, 32, 30), np.float32), grain=2)
    eyes = [ellipse(cx + s * 0.15 * h, body.y(0.5), 0.065 * h, 0.032 * h) for s in (-1, 1)]
    brows = [("line", [(cx + s * 0.07 * h, body.y(0.41)), (cx + s * 0.24 * h, body.y(0.39))], 0.03 * h)
             for s in (-1, 1)]
    canvas.paint(None, eyes + brows, dark, rng, relief=0)  # marks stay label "face"
    skin = fills["skin"].colour
    nose = ("line", [(cx, body.y(0.55)), (cx + 0.03 * h, body.y(0.68))], 0.025 * h)
    canvas.paint(None, [nose], Fill(skin * 0.8), rng, relief=0)
    lips = Fill(skin * np.array((0.8, 0.5, 0.5), np.float32))
    canvas.paint(None, [ellipse(cx, body.y(0.8), 0.1 * h, 0.035 * h)], lips, rng, relief=0)


def _draw_back_hair(canvas: Canvas, rng: np.random.Generator, body: _Body, outfit: _Outfit, fill: Fill) -> None:
    """Long hair or a ponytail: behind the body in front views, over the back in back views."""
    h, cx = body.h, body.cx
    if outfit.hair == "long":
        end = body.y(rng.uniform(1.8, 3.0))
        shapes = [("polygon", [(cx - 0.42 * h, body.y(0.5)), (cx + 0.42 * h, body.y(0.5)),
                               (cx + 0.55 * h, end), (cx - 0.55 * h, end)])]
    elif outfit.hair == "ponytail":
        side = (-1, 1)[int(rng.integers(2))]
        shapes = limb(([(cx + side * 0.3 * h, body.y(0.3)), (cx + side * 0.55 * h, body.y(1.7))],
                        [0.3 * h, 0.12 * h]), round_end=True)
    else:
        return
    canvas.paint(_ID["hair"], shapes, fill, rng)


def _draw_front_hair(canvas: Canvas, rng: np.random.Generator, body: _Body, outfit: _Outfit, fill: Fill) -> None:
    """The hair cap down to a random hairline (low = bangs), side hair, a bun."""
    if outfit.hair == "none":
        return
    h, cx = body.h, body.cx
    cy, ry = body.y(0.46), 0.56 * h
    hairline = body.y(rng.uniform(0.16, 0.4))
    tilt = math.degrees(math.asin((hairline - cy) / ry))  # negative: the hairline is above the centre
    shapes: list[Shape] = [("chord", (cx - 0.42 * h, cy - ry, cx + 0.42 * h, cy + ry), 180 - tilt, 360 + tilt)]
    long = outfit.hair == "long"
    end, spread = body.y(rng.uniform(1.1, 1.7) if long else 0.7), (0.6 if long else 0.46) * h
    for s in (-1, 1):  # side hair over the ears, falling onto the shoulders when long
        shapes.append(("polygon", [(cx + s * 0.43 * h, body.y(0.3)), (cx + s * 0.3 * h, body.y(0.3)),
                                   (cx + s * 0.34 * h, end), (cx + s * spread, end)]))
    if outfit.hair == "bun":
        shapes.append(ellipse(cx, body.y(-0.05), 0.2 * h, 0.18 * h))
    canvas.paint(_ID["hair"], shapes, fill, rng)


def _draw_headgear(canvas: Canvas, rng: np.random.Generator, body: _Body, outfit: _Outfit,
                   fills: dict[str, Fill]) -> None:
    """Earrings, eyeglass and headwear: the front-most layers."""
    h, cx = body.h, body.cx
    if "earrings" in outfit.extras:
        shapes = [ellipse(cx + s * 0.37 * h, body.y(0.72), 0.04 * h, 0.04 * h) for s in (-1, 1)]
        shapes += [ellipse(cx + s * 0.37 * h, body.y(0.83), 0.03 * h, 0.05 * h) for s in (-1, 1)]
        canvas.paint(_ID["earrings"], shapes, fills["metal"], rng, relief=0)
    if "eyeglass" in outfit.extras:
        kind = "ring" if rng.random() < 0.6 else "ellipse"  # clear glasses or sunglasses
        y = body.y(0.5)
        shapes = [(kind, (cx + s * 0.16 * h - 0.13 * h, y - 0.08 * h, cx + s * 0.16 * h + 0.13 * h, y + 0.08 * h),
                   0.03 * h) for s in (-1, 1)]
        shapes += [("line", [(cx - 0.04 * h, y), (cx + 0.04 * h, y)], 0.03 * h)]
        shapes += [("line", [(cx + s * 0.29 * h, y - 0.02 * h), (cx + s * 0.37 * h, y - 0.04 * h)], 0.03 * h)
                   for s in (-1, 1)]
        canvas.paint(_ID["eyeglass"], shapes, fills["lens"], rng, relief=0)
    if "headwear" in outfit.extras:
        if rng.random() < 0.5:  # brimmed hat
            shapes = [("ellipse", (cx - 0.38 * h, body.y(-0.4), cx + 0.38 * h, body.y(0.25))),
                      ellipse(cx, body.y(0.12), rng.uniform(0.55, 0.8) * h, 0.1 * h)]
        else:  # beanie
            shapes = [("chord", (cx - 0.45 * h, body.y(-0.14), cx + 0.45 * h, body.y(1.0)), 188, 352)]
        canvas.paint(_ID["headwear"], shapes, fills["hat"], rng)


def _figure_fills(rng: np.random.Generator, outfit: _Outfit, h: float) -> dict[str, Fill]:
    hair = np.array(_HAIR_COLOURS[int(rng.integers(len(_HAIR_COLOURS)))], np.float32) + rng.uniform(-10, 10, 3)
    return {
        "skin": Fill(_skin_tone(rng), grain=1.5),
        "hair": Fill(hair, "knit", hair * 0.7, max(2.0, 0.04 * h), rng.uniform(-0.3, 0.3), 4),  # strands
        "garment": _garment_fill(rng, h),
        "bottom": _garment_fill(rng, h, "denim" if outfit.denim else None),
        "outer": _garment_fill(rng, h),
        "leggings": _garment_fill(rng, h, str(rng.choice(("solid", "knit")))),
        "socks": _garment_fill(rng, h, "knit"),
        "gloves": _garment_fill(rng, h, "knit"),
        "tie": _garment_fill(rng, h),
        "neckwear": _garment_fill(rng, h),
        "hat": _garment_fill(rng, h),
        "shoes": Fill(_random_colour(rng), grain=3),
        "belt": Fill(_random_colour(rng), grain=3),
        "bag": Fill(_random_colour(rng), grain=3),
        "metal": Fill(np.array(_METALS[int(rng.integers(len(_METALS)))], np.float32), grain=8),
        "lens": Fill(np.array((25, 22, 25), np.float32), grain=3),
    }


def _render(rng: np.random.Generator, stem: str, width: int, height: int
            ) -> tuple[Image.Image, Image.Image, _Body, str]:
    """One synthetic photo (RGB) and mask (L) for a file name, whose gender/category/view set the outfit;
    the figure and the view, for `_sided_labels`."""
    gender, category = stem.split("-")[:2]
    outfit = _choose_outfit(rng, gender, category, stem.rsplit("_", 1)[1])
    body = _make_body(rng, width, height, gender)
    canvas = Canvas(backdrop(rng, width, height), tuple(rng.uniform(-0.3, 0.3, 2)))
    fills = _figure_fills(rng, outfit, body.h)
    ankle_y = max(chain[0][-1][1] for chain in body.legs)
    canvas.shadow(body.cx, ankle_y + 0.3 * body.h, 1.6 * body.hip + 0.5 * body.h, 0.2 * body.h, 0.25)
    if outfit.view != "back":
        _draw_back_hair(canvas, rng, body, outfit, fills["hair"])
    _draw_lower(canvas, rng, body, outfit, fills)
    _draw_torso(canvas, rng, body, outfit, fills)
    if outfit.view == "back":
        _draw_back_hair(canvas, rng, body, outfit, fills["hair"])
    _draw_arms(canvas, rng, body, outfit, fills)
    _draw_head(canvas, rng, body, outfit, fills)
    if outfit.view != "back":
        _draw_front_hair(canvas, rng, body, outfit, fills["hair"])
    _draw_headgear(canvas, rng, body, outfit, fills)
    photo = Image.fromarray(np.clip(canvas.photo, 0, 255).astype(np.uint8))
    # a lens draws no one-pixel hard edges; the mask keeps them, as real annotations do
    return photo.filter(ImageFilter.GaussianBlur(0.6)), Image.fromarray(canvas.mask), body, outfit.view


# LIP's labels for the drawn DF-MM ones: the shipped DF-MM -> LIP map (labels/maps/lip.json) where it has a
# counterpart; skin and footwear by limb and side (`_sided_labels`); the rest (belt, bag, jewellery, tie,
# neck and torso skin), which LIP has no label for, unannotated (IGNORE_INDEX).
def _sided_labels(mask: np.ndarray, body: _Body, view: str, lip: LabelSet) -> np.ndarray:
    """(H, W) DF-MM ids of a drawn figure -> LIP ids. "left" is the person's own side: the image's right
    in front and side views, its left in back views."""
    table = load_label_map("lip").table()                                     # (256,) DF-MM id -> LIP id
    out = table[mask].astype(np.uint8)                                          # unmapped -> 255
    height, width = mask.shape
    # body.arms[i] / legs[i]: i = 0 on the image's left, which is the person's right unless seen from behind
    person_left = (1, 0) if view == "back" else (0, 1)
    for kind, chains, ends in (("arm", body.arms, body.hands), ("leg", body.legs, None)):
        for i, chain in enumerate(chains):
            layer = Image.new("L", (width, height))
            (x, y), h = chain[0][-1], body.h   # the ankle: a foot below it, as _draw_lower paints it
            shapes = limb(chain) + (limb(ends[i], round_end=True) if ends else
                                     [ellipse(x, y + 0.2 * h, 0.17 * h, 0.14 * h)])
            draw_shapes(ImageDraw.Draw(layer), shapes)
            side = "left" if person_left[i] else "right"
            out[(np.asarray(layer) > 0) & (mask == LABELS.index("skin"))] = lip.index(f"{side}-{kind}")
    shoes = mask == LABELS.index("footwear")
    on_left = np.arange(width)[None, :] < body.cx                               # (1, W): the image's left
    for i, image_side in enumerate((on_left, ~on_left)):
        out[shoes & image_side] = lip.index(f"{'left' if person_left[i] else 'right'}-shoe")
    return out


def _synthetic_names(rng: np.random.Generator, count: int) -> list[str]:
    """Names in the real scheme, outfits of one to four views (view numbers as in the real names).
    About 10% are names from the published test list (so the default test split finds a test set),
    half of them with one more view of their outfit outside the list, as in the real data, where
    views of a test outfit are training images. The rest are made-up outfits, none of that list."""
    published = read_split_file(DEFAULT_TEST_SPLIT)
    n_test = min(len(published), max(1, round(count / 10))) if count > 1 else 0
    names = [published[i] for i in rng.choice(len(published), n_test, replace=False)]
    taken, outfits = set(published) | set(names), {outfit_key(n) for n in published}
    views, weights = zip(*_VIEWS)
    p_view = np.array(weights) / sum(weights)
    for name in names[:]:
        outfit, own_view = name.rsplit("_", 2)[0], name.rsplit("_", 1)[1]
        others = [v != own_view for v in views]
        view = str(rng.choice(views, p=p_view * others / (p_view * others).sum()))
        extra = f"{outfit}_{_VIEW_NUMBERS[view]}_{view}"
        if len(names) < count and rng.random() < 0.5 and extra not in taken:
            taken.add(extra)
            names.append(extra)
    while len(names) < count:
        gender = "WOMEN" if rng.random() < 0.8 else "MEN"
        category = _weighted(rng, _CATEGORIES[gender])
        outfit = f"id_{int(rng.integers(1, 80_000)):08d}-{int(rng.integers(1, 8)):02d}"
        n_views = min(count - len(names), 1 + int(rng.choice(4, p=(0.3, 0.35, 0.25, 0.1))))
        if outfit in outfits:
            continue
        outfits.add(outfit)
        for view in rng.choice(views, n_views, replace=False, p=p_view):
            names.append(f"{gender}-{category}-{outfit}_{_VIEW_NUMBERS[str(view)]}_{view}")
    return names


def write_synthetic_dataset(out_dir: str | Path, count: int, seed: int = 0, width: int = 750,
                            height: int = 1101) -> list[Pair]:
    """Write count synthetic photo/mask pairs in the real layout; the same seed gives the same bytes."""
    if count < 1 or width < 32 or height < 32:
        raise ValueError(f"need count >= 1 and a size of at least 32x32, got {count}, {width}x{height}")
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "segm").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = _synthetic_names(rng, count)
    pairs = []
    for stem, child in tqdm(list(zip(names, rng.spawn(count))), desc=f"writing {out_dir}", unit="image"):
        photo, mask, _, _ = _render(child, stem, width, height)
        pair = Pair(stem, out_dir / "images" / f"{stem}{_IMAGE_SUFFIX}", out_dir / "segm" / f"{stem}{_MASK_SUFFIX}")
        photo.save(pair.image, quality=90)
        mask.save(pair.mask)
        pairs.append(pair)
    return sorted(pairs, key=lambda p: p.stem)


def write_synthetic_lip(out_dir: str | Path, count: int, seed: int = 0, width: int = 150, height: int = 220,
                        test_fraction: float = 0.2) -> list[Pair]:
    """count synthetic pairs in LIP's layout with LIP's 20 labels, as its two archives unpack:
    TrainVal_images/{train,val}_images/<id>.jpg, TrainVal_parsing_annotations/{train,val}_segmentations/<id>.png,
    and train_id.txt / val_id.txt; val (LIP's labelled evaluation part) gets test_fraction of them. Photo
    sizes vary by up to 20% around width x height, as LIP's do. Labels: see `_sided_labels`."""
    if count < 2 or width < 32 or height < 32:
        raise ValueError(f"need count >= 2 and a size of at least 32x32, got {count}, {width}x{height}")
    out_dir, lip = Path(out_dir), load_label_set("lip")
    rng = np.random.default_rng(seed)
    names = _synthetic_names(rng, count)
    n_val = max(1, round(test_fraction * count))
    pairs, ids = [], {"train": [], "val": []}
    drawn = tqdm(list(zip(names, rng.spawn(count))), desc=f"writing {out_dir}", unit="image")
    for k, (stem, child) in enumerate(drawn):
        w, h = (round(side * child.uniform(0.8, 1.2)) for side in (width, height))
        photo, mask, body, view = _render(child, stem, w, h)
        part = "val" if k < n_val else "train"
        lip_id = f"{k + 1}_{int(child.integers(100_000, 1_000_000))}"            # LIP's names: <n>_<id>
        image_dir = out_dir / "TrainVal_images" / f"{part}_images"
        mask_dir = out_dir / "TrainVal_parsing_annotations" / f"{part}_segmentations"
        image_dir.mkdir(parents=True, exist_ok=True)
        mask_dir.mkdir(parents=True, exist_ok=True)
        pair = Pair(lip_id, image_dir / f"{lip_id}.jpg", mask_dir / f"{lip_id}.png",
                    "test" if part == "val" else "train")
        photo.save(pair.image, quality=90)
        Image.fromarray(_sided_labels(np.asarray(mask), body, view, lip)).save(pair.mask)
        pairs.append(pair)
        ids[part].append(lip_id)
    for part, names_of in ids.items():
        (out_dir / "TrainVal_images" / f"{part}_id.txt").write_text("".join(f"{n}\n" for n in names_of))
    return sorted(pairs, key=lambda p: p.stem)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, parsed; tests/test_readme.py checks the documented commands against it."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--width", type=int, default=750)
    parser.add_argument("--height", type=int, default=1101)
    parser.add_argument("--layout", choices=("deepfashion-mm", "lip"), default="deepfashion-mm",
                        help="deepfashion-mm (default) or lip: LIP's layout and 20 labels")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    write = write_synthetic_lip if args.layout == "lip" else write_synthetic_dataset
    pairs = write(args.out_dir, args.count, args.seed, args.width, args.height)
    print(f"{args.out_dir}: wrote {len(pairs)} photo/mask pairs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
