"""DeepFashion-MultiModal human parsing data: labels, file pairing, splits, samples, checks, synthetic set.

Layout on disk (the published data set, and what `synth` writes):
    ROOT/images/<stem>.jpg       RGB photo, 750 wide x 1101 high in the real data
    ROOT/segm/<stem>_segm.png    label ids 0-23 (mode L or P), same size as its photo
Photos without a mask are normal (the real set has 44,096 photos and 12,701 masks): they are unlabelled.

Splits go by file name, never by a random draw: the published list `deepfashion-mm-test-split.txt` is
the test set, and val is the part of the rest whose outfit (`outfit_key`: all views of one outfit
together) hashes below `val_fraction`.

Run:
    python dataset.py synth OUT_DIR --count 200 [--seed 0]   # synthetic studio photos in the real layout
    python dataset.py check DATA_DIR [--test-split FILE]     # print every problem; exit 1 if there are any
    python dataset.py split --by-outfit DATA_DIR --out FILE [--fraction 0.1 --seed 0]
                                                             # an outfit-disjoint test split for --test_split
"""

from __future__ import annotations

import argparse
import colorsys
import hashlib
import logging
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

log = logging.getLogger(__name__)

LABELS: tuple[str, ...] = (
    "background", "top", "outer", "skirt", "dress", "pants", "leggings", "headwear", "eyeglass",
    "neckwear", "belt", "footwear", "bag", "hair", "face", "skin", "ring", "wrist wearing", "socks",
    "gloves", "necklace", "rompers", "earrings", "tie",
)
NUM_LABELS = len(LABELS)
IGNORE_INDEX = 255
PALETTE = np.array([  # (24, 3) uint8, row = label id
    (20, 20, 20), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128),
    (220, 190, 255), (154, 99, 36), (255, 224, 189), (190, 130, 100), (128, 128, 0), (0, 0, 128),
    (128, 128, 128), (170, 255, 195), (255, 255, 255), (128, 0, 0), (0, 90, 40), (90, 90, 255),
], dtype=np.uint8)
DEFAULT_TEST_SPLIT = Path(__file__).parent / "deepfashion-mm-test-split.txt"
SPLITS = ("train", "val", "test", "all")
MODES = ("random_strip", "center_strip", "whole")

_IMAGE_SUFFIX = ".jpg"
_MASK_SUFFIX = "_segm.png"
# PIL reports broken files with any of these, depending on the format and where decoding stops.
_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


class DataError(ValueError):
    """A data file or folder is missing or malformed; the message names it and says what is wrong."""


class EmptySplitError(DataError):
    """A split holds no pairs; the message says why."""


@dataclass(frozen=True)
class Pair:
    stem: str    # e.g. "WOMEN-Dresses-id_00000001-01_1_front"
    image: Path  # root/images/<stem>.jpg
    mask: Path   # root/segm/<stem>_segm.png


# ---------------------------------------------------------------------------------- files and splits

def _listing(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _scan(root: Path) -> tuple[dict[str, Path], dict[str, Path], list[Path]]:
    """-> (stem -> photo, stem -> mask, every other entry of images/ and segm/)."""
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found")
    images: dict[str, Path] = {}
    masks: dict[str, Path] = {}
    other: list[Path] = []
    for folder, suffix, found in ((root / "images", _IMAGE_SUFFIX, images), (root / "segm", _MASK_SUFFIX, masks)):
        if not folder.is_dir():
            raise DataError(f"{folder}: folder missing (expected images/*{_IMAGE_SUFFIX} and segm/*{_MASK_SUFFIX})")
        for path in folder.iterdir():
            # "._x.jpg" files are macOS resource forks, not photos
            if path.name.endswith(suffix) and not path.name.startswith(".") and path.is_file():
                found[path.name[: -len(suffix)]] = path
            else:
                other.append(path)
    return images, masks, sorted(other)


def find_pairs(root: str | Path, require_masks: bool = False) -> list[Pair]:
    """Photo/mask pairs under root, sorted by stem. Photos without a mask are skipped unless require_masks."""
    root = Path(root)
    images, masks, _ = _scan(root)
    problems = []
    orphans = sorted(masks.keys() - images.keys())
    if orphans:
        problems.append(f"{root / 'segm'}: {len(orphans)} mask(s) without a photo in images/: "
                        + _listing([masks[s].name for s in orphans]))
    unlabelled = sorted(images.keys() - masks.keys())
    if require_masks and unlabelled:
        problems.append(f"{root / 'images'}: {len(unlabelled)} photo(s) without a mask in segm/: "
                        + _listing([images[s].name for s in unlabelled]))
    if problems:
        raise DataError("; ".join(problems))
    pairs = [Pair(stem, images[stem], masks[stem]) for stem in sorted(images.keys() & masks.keys())]
    if not pairs:
        raise DataError(f"{root}: no pairs (images/<stem>{_IMAGE_SUFFIX} with segm/<stem>{_MASK_SUFFIX})")
    return pairs


def read_split_file(path: str | Path) -> list[str]:
    """Stems named by a split file: one "<stem>_segm.png", "<stem>.jpg" or "<stem>" a line; '#' comments."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise DataError(f"{path}: cannot read split file ({err.strerror or err})") from err
    stems = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        for suffix in (_MASK_SUFFIX, _IMAGE_SUFFIX):
            line = line.removesuffix(suffix)
        stems.append(line)
    if not stems:
        raise DataError(f"{path}: split file names no images")
    return stems


# "WOMEN-Dresses-id_00000001-01_1_front": gender-category-id_<person>-<outfit>_<view number>_<view name>
_OUTFIT_NAME = re.compile(r"(?:.*-)?(id_\d+-\d+)_\d+_[A-Za-z]+")


def outfit_key(stem: str) -> str:
    """The outfit a file name shows, the same for all its views: "id_00000001-01" for
    "WOMEN-Dresses-id_00000001-01_1_front" (person 00000001, outfit 01, view 1, front). The gender and
    category in front are left out: no id of the published test list appears under two of them, and
    leaving them out can only keep more views together. A stem outside this scheme (another data set,
    your own files) is an outfit of its own: the whole stem."""
    match = _OUTFIT_NAME.fullmatch(stem)
    return match.group(1) if match else stem


def _name_hash(key: str) -> int:
    return int(hashlib.sha1(key.encode()).hexdigest(), 16) % 10_000


def val_outfits(stems: list[str], val_fraction: float) -> set[str]:
    """The outfits (`outfit_key`) of the non-test stems held out for validation: those whose key hashes
    below val_fraction. A hash of the name, not an RNG: the split survives reordering, subsets and new
    files, and every view of an outfit is on the same side. With val_fraction > 0 and at least two
    outfits, validation gets at least one (the lowest hash) and training keeps at least one (the
    highest), so a small data set still validates; a single outfit is all for training."""
    outfits = sorted({outfit_key(s) for s in stems}, key=lambda o: (_name_hash(o), o))
    chosen = {o for o in outfits if _name_hash(o) < val_fraction * 10_000}
    if val_fraction > 0 and outfits:
        if not chosen and len(outfits) >= 2:
            chosen = {outfits[0]}
        elif len(chosen) == len(outfits):
            chosen.discard(outfits[-1])
    return chosen


def outfit_overlap(test_stems: list[str], stems: list[str]) -> dict[str, int]:
    """How many of test_stems show an outfit that one of the other `stems` (the labelled images outside
    the test split, which train and validate a model) shows too: {"images": n, "of": len(test_stems)}."""
    test = set(test_stems)
    seen = {outfit_key(s) for s in stems if s not in test}
    return {"images": sum(outfit_key(s) in seen for s in test), "of": len(test)}


def outfit_split(stems: list[str], fraction: float = 0.1, seed: int = 0) -> list[str]:
    """An outfit-disjoint test split of `stems`: whole outfits, drawn in a seeded random order until they
    hold at least `fraction` of the images (at least one outfit, never all). -> the chosen stems, sorted."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    groups: dict[str, list[str]] = {}
    for stem in sorted(set(stems)):
        groups.setdefault(outfit_key(stem), []).append(stem)
    if len(groups) < 2:
        raise DataError(f"an outfit-disjoint split needs at least two outfits, found {len(groups)}")
    keys = sorted(groups)
    chosen: list[str] = []
    for i in np.random.default_rng(seed).permutation(len(keys))[:-1]:   # the last one stays for training
        if chosen and len(chosen) >= fraction * sum(map(len, groups.values())):
            break
        chosen += groups[keys[i]]
    return sorted(chosen)


def split_pairs(pairs: list[Pair], split: str, test_split: str | Path | None = None,
                val_fraction: float = 0.05) -> list[Pair]:
    """The pairs of one split: test = named by the split file, val = the outfits of the rest that
    `val_outfits` holds out. An empty split raises EmptySplitError."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if not pairs:
        raise DataError(f"no pairs to split into {split!r}")
    if split == "all":
        return list(pairs)
    split_file = DEFAULT_TEST_SPLIT if test_split is None else Path(test_split)
    test_stems = set(read_split_file(split_file))
    absent = sorted(test_stems - {p.stem for p in pairs})
    if absent and test_split is None:
        log.info("%s: %d of its %d names are not in this data set (a partial or synthetic set)",
                 split_file.name, len(absent), len(test_stems))
    elif absent:
        raise DataError(f"{split_file}: {len(absent)} name(s) not in the data set: {_listing(absent)}")
    if split == "test":
        chosen = [p for p in pairs if p.stem in test_stems]
        reason = f"none of the {len(test_stems)} names in {split_file} is among the {len(pairs)} pairs"
    else:
        rest = [p for p in pairs if p.stem not in test_stems]
        held_out = val_outfits([p.stem for p in rest], val_fraction)
        chosen = [p for p in rest if (outfit_key(p.stem) in held_out) == (split == "val")]
        outfits = len({outfit_key(p.stem) for p in rest})
        reason = (f"{len(rest)} of {len(pairs)} pairs ({outfits} outfit(s)) are outside the test split "
                  f"{split_file.name}, and val_fraction={val_fraction} puts {len(held_out)} outfit(s) in val")
        if split == "val" and outfits == 1 and val_fraction > 0:
            reason += " (a single outfit stays for training)"
    if not chosen:
        raise EmptySplitError(f"{split} split is empty: {reason}")
    return chosen


# ---------------------------------------------------------------------------------- reading files

def open_mask(path: Path) -> Image.Image:
    """A label-id PNG, decoded and checked -> mode L or P image whose pixel values are the label ids
    (a P image's palette is never applied). Cropping and resizing it in PIL before converting to an
    array is what keeps a training sample cheap."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()  # inside the try: a truncated file only fails here
    except _PIL_ERRORS as err:
        raise DataError(f"{path}: cannot read mask ({err})") from err
    if img.mode in ("RGB", "RGBA"):
        raise DataError(f"{path}: mask is RGB-coloured; expected a single-channel label-id PNG (mode L or P)")
    if img.mode not in ("L", "P"):
        raise DataError(f"{path}: mask has mode {img.mode}; expected a single-channel label-id PNG (mode L or P)")
    if img.getextrema()[1] >= NUM_LABELS:  # the stored values (for P: palette indices)
        labels = np.asarray(img)
        values, counts = np.unique(labels[labels >= NUM_LABELS], return_counts=True)
        found = ", ".join(f"{v} ({c} px)" for v, c in zip(values.tolist(), counts.tolist()))
        raise DataError(f"{path}: label values above {NUM_LABELS - 1}: {found}")
    return img


def read_mask(path: Path) -> np.ndarray:
    """A label-id PNG -> (H, W) uint8 ids, checked as `open_mask` does."""
    return np.asarray(open_mask(path))


class DecodedImage(NamedTuple):
    image: Image.Image              # RGB, possibly decoded at a reduced JPEG scale
    original_size: tuple[int, int]  # (W, H) as stored in the file
    scale: float                    # decoded / original coordinates: 1, 1/2, 1/4 or 1/8


def read_image(path: Path, min_side: int | None = None) -> DecodedImage:
    """Decode a photo as RGB. With min_side, JPEGs decode at the smallest DCT scale whose short side
    keeps >= min_side pixels: a 256 px sample needs no full 750x1101 decode."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            size = img.size
            scale = 1.0
            if min_side is not None:
                # draft keeps W/s >= min_side and H/s >= min_side, hence short side/s >= min_side;
                # it returns None for non-JPEGs and progressive JPEGs, which then decode in full
                drafted = img.draft("RGB", (min_side, min_side))
                if drafted is not None:
                    scale = drafted[1][2] / size[0]  # exactly 1/s; the decoded width ceil(W/s) is not
            img.load()  # truncation raises here (ImageFile.LOAD_TRUNCATED_IMAGES stays False)
            rgb = img if img.mode == "RGB" else img.convert("RGB")  # converting RGB would copy it
    except _PIL_ERRORS as err:
        raise DataError(f"{path}: cannot decode photo ({err})") from err
    return DecodedImage(rgb, size, scale)


def prepare_whole_image(image: Image.Image | DecodedImage, image_size: int, size_multiple: int
                        ) -> tuple[torch.Tensor, tuple[int, int]]:
    """An RGB photo -> ((3, Hp, Wp) uint8 pixels, (h, w) before padding), as "whole" mode and predict.py
    feed it: scaled by image_size / min(W, H) (the training scale, so objects keep their trained size) and
    padded bottom/right to a multiple of size_multiple (`normalize` turns the padding into 0, the mean
    colour). A DecodedImage from read_image may be draft-decoded; its scale is honoured."""
    decoded = image if isinstance(image, DecodedImage) else DecodedImage(image, image.size, 1.0)
    width, height = decoded.original_size
    zoom = image_size / min(width, height)
    out_w, out_h = max(1, round(width * zoom)), max(1, round(height * zoom))
    box = (0, 0, width * decoded.scale, height * decoded.scale)  # the whole photo, in decoded pixels
    resized = decoded.image.resize((out_w, out_h), Image.Resampling.BILINEAR, box=box)
    pixels = torch.from_numpy(np.array(resized)).permute(2, 0, 1)  # (3, h, w) uint8
    pad = (0, -out_w % size_multiple, 0, -out_h % size_multiple)
    return F.pad(pixels, pad), (out_h, out_w)  # (3, Hp, Wp)


def _size_mismatch(pair: Pair, image_size: tuple[int, int], mask_shape: tuple[int, ...]) -> str:
    return (f"{pair.mask}: mask is {mask_shape[1]}x{mask_shape[0]} but its photo {pair.image} "
            f"is {image_size[0]}x{image_size[1]}")


def boundary_target(mask: torch.Tensor) -> torch.Tensor:
    """(..., H, W) integer label ids -> (..., H, W) float32: 1 where a 4-neighbour has another label, else 0.
    IGNORE_INDEX (padding) is nobody's neighbour and never a boundary: padding adds no edges."""
    if mask.dim() < 2:
        raise ValueError(f"boundary_target needs (..., H, W), got shape {tuple(mask.shape)}")
    known = mask != IGNORE_INDEX
    edge = torch.zeros(mask.shape, dtype=torch.bool, device=mask.device)
    # (..., H-1, W): differs from the pixel below, both labelled
    vertical = (mask[..., 1:, :] != mask[..., :-1, :]) & known[..., 1:, :] & known[..., :-1, :]
    edge[..., 1:, :] |= vertical
    edge[..., :-1, :] |= vertical
    # (..., H, W-1): differs from the pixel to the right, both labelled
    horizontal = (mask[..., :, 1:] != mask[..., :, :-1]) & known[..., :, 1:] & known[..., :, :-1]
    edge[..., :, 1:] |= horizontal
    edge[..., :, :-1] |= horizontal
    return edge.float()


GREY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as PIL's convert("L")


def color_jitter(image: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) float pixel values in [0, 255] and (B, 3) factors (brightness, contrast, saturation;
    1 = unchanged) -> (B, 3, H, W) in [0, 255]. Brightness scales; contrast stretches about the image's
    mean grey; saturation blends each pixel with its grey. torchvision's definitions, in this order."""
    weights = image.new_tensor(GREY_WEIGHTS).view(1, 3, 1, 1)
    brightness, contrast, saturation = factors.to(image).T[..., None, None, None]   # 3 x (B, 1, 1, 1)
    x = (image * brightness).clamp_(0, 255)
    mean_grey = (x * weights).sum(1, keepdim=True).mean((2, 3), keepdim=True)      # (B, 1, 1, 1)
    x = ((x - mean_grey) * contrast + mean_grey).clamp_(0, 255)
    grey = (x * weights).sum(1, keepdim=True)                                      # (B, 1, H, W)
    return ((x - grey) * saturation + grey).clamp_(0, 255)


def normalize(image: torch.Tensor, mean: tuple[float, float, float], std: tuple[float, float, float],
              valid_hw: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 3, H, W) pixel values in [0, 255] (uint8 or float) -> (x / 255 - mean) / std, float32 (or the
    input's float type). With valid_hw ((B, 2) height and width before padding) the padding becomes
    exactly 0, the mean colour."""
    image = image if image.is_floating_point() else image.float()  # float64 stays float64
    mean_t = image.new_tensor(mean).view(1, 3, 1, 1) * 255
    std_t = image.new_tensor(std).view(1, 3, 1, 1) * 255
    out = (image - mean_t) / std_t
    if valid_hw is not None:
        height, width = out.shape[-2:]
        rows = torch.arange(height, device=out.device)[None, :, None] < valid_hw[:, :1, None]   # (B, H, 1)
        cols = torch.arange(width, device=out.device)[None, None, :] < valid_hw[:, 1:, None]    # (B, 1, W)
        out = out * (rows & cols)[:, None]
    return out


def prepare_images(batch: dict[str, torch.Tensor], mean: tuple[float, float, float],
                   std: tuple[float, float, float], device: torch.device) -> torch.Tensor:
    """A collated batch of FashionDataset samples -> its images on `device`, (B, 3, H, W) float32 (or
    the batch's float type), jittered (when the samples carry jitter factors) and normalised."""
    image = batch["image"].to(device, non_blocking=True)
    image = image if image.is_floating_point() else image.float()
    if "jitter" in batch:
        image = color_jitter(image, batch["jitter"].to(device))
    valid_hw = batch["valid_hw"].to(device) if "valid_hw" in batch else None
    return normalize(image, mean, std, valid_hw)


def prepare_batch(batch: dict[str, torch.Tensor], mean: tuple[float, float, float],
                  std: tuple[float, float, float], device: torch.device
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A collated batch of FashionDataset samples -> on `device`: the images as `prepare_images` makes
    them; mask (B, H, W) int64; boundary target (B, H, W) float32. The per-pixel work runs here, once
    per batch, on the device; only uint8 crosses."""
    mask = batch["mask"].to(device, non_blocking=True).long()
    return prepare_images(batch, mean, std, device), mask, boundary_target(mask)


def colorize(mask: torch.Tensor) -> torch.Tensor:
    """(..., H, W) label ids -> (..., 3, H, W) uint8 PALETTE colours for viewing; IGNORE_INDEX (and any
    other id outside the table) is drawn black."""
    table = torch.cat([torch.from_numpy(PALETTE), torch.zeros(1, 3, dtype=torch.uint8)])  # (25, 3)
    ids = torch.where((mask >= 0) & (mask < NUM_LABELS), mask, NUM_LABELS).long()
    return table.to(mask.device)[ids].movedim(-1, -3)


# ---------------------------------------------------------------------------------- the data set

class FashionDataset(torch.utils.data.Dataset):
    """Photo/mask samples for training ("random_strip") and evaluation ("center_strip", "whole").

    Strip modes cut a square of side min(W, H) along the long axis (for the real 750x1101 photos: a
    750x750 band at some height) and resize it to image_size. "whole" scales the full photo by the same
    image_size / min(W, H) and pads bottom/right to a multiple of size_multiple.

    A sample is uint8: "image" (3, S, S) pixels, "mask" (S, S) label ids (IGNORE_INDEX = padding), and
    "index"; "whole" adds "valid_hw" (the size before padding) and "random_strip" with color_jitter > 0
    adds "jitter" (3,) factors. `prepare_batch` turns a collated batch into model input on the device:
    a worker only decodes, crops and resizes, and a quarter of the bytes of float32 cross to the GPU.

    Every random choice for a sample comes from np.random.default_rng((seed, epoch, index)), so a sample
    depends only on those three numbers - not on worker count, process or order - and a resumed run
    sees the same samples. Call set_epoch before each epoch (DataLoader workers copy the data set when
    an epoch starts; with persistent_workers=True they would keep the old epoch).
    """

    def __init__(self, root: str | Path, split: str = "train", image_size: int = 512,
                 mode: str = "random_strip", hflip: bool = True, color_jitter: float = 0.0,
                 size_multiple: int = 32, seed: int = 0, test_split: str | Path | None = None,
                 val_fraction: float = 0.05, skip_bad: bool = False, pairs: list[Pair] | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if image_size < 1 or size_multiple < 1:
            raise ValueError(f"image_size and size_multiple must be positive, got {image_size}, {size_multiple}")
        if not 0 <= color_jitter < 1:
            raise ValueError(f"color_jitter must be in [0, 1), got {color_jitter}")
        self.root = Path(root)
        # given pairs are used as they are: the caller has already chosen them
        self.pairs = list(pairs) if pairs is not None else split_pairs(
            find_pairs(self.root), split, test_split, val_fraction)
        if not self.pairs:
            raise DataError(f"{self.root}: no pairs given")
        self.image_size, self.mode, self.size_multiple = image_size, mode, size_multiple
        self.hflip, self.color_jitter, self.seed, self.skip_bad = hflip, color_jitter, seed, skip_bad
        self.epoch = 0
        # Bad samples seen so far, in shared memory: DataLoader workers inherit this tensor, so a bad
        # file is reported once per run, not once per worker or epoch, and then skipped fast.
        self._bad = torch.zeros(len(self.pairs), dtype=torch.bool).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        count = len(self.pairs)
        if not -count <= index < count:
            raise IndexError(f"index {index} out of range for {count} samples")
        for step in range(count):
            current = (index + step) % count
            if self._bad[current]:
                continue
            try:
                return self._sample(current)
            except DataError as err:
                if not self.skip_bad:
                    raise
                self._bad[current] = True
                log.warning("skipping sample %d: %s", current, err)
        raise DataError(f"{self.root}: all {count} samples are unreadable")

    def _sample(self, index: int) -> dict[str, torch.Tensor]:
        pair = self.pairs[index]
        rng = np.random.default_rng((self.seed, self.epoch, index))
        decoded = read_image(pair.image, self.image_size)
        mask = open_mask(pair.mask)
        width, height = decoded.original_size
        if mask.size != decoded.original_size:
            raise DataError(_size_mismatch(pair, decoded.original_size, (mask.height, mask.width)))
        if self.mode == "whole":
            return self._whole_sample(decoded, mask, index)
        step = round(1 / decoded.scale)  # original pixels per decoded pixel
        box = self._strip(width, height, step, rng)
        # the box is whole pixels in both images, so photo and mask stay pixel-aligned
        crop = np.array(decoded.image.crop(tuple(c // step for c in box)))            # (s, s, 3) uint8
        pixels = torch.from_numpy(crop).permute(2, 0, 1)[None]                         # (1, 3, s, s)
        size = (self.image_size, self.image_size)
        # uint8 in, uint8 out, channels-last: torch's vectorised path, twice as fast as PIL's resize
        image = F.interpolate(pixels, size=size, mode="bilinear", antialias=True, align_corners=False)[0]
        labels = torch.from_numpy(np.array(mask.resize(size, Image.Resampling.NEAREST, box=box)))  # (S, S)
        sample = {"image": image, "mask": labels, "index": torch.tensor(index, dtype=torch.int64)}
        return self._augment(sample, rng) if self.mode == "random_strip" else sample

    def _whole_sample(self, decoded: DecodedImage, mask: Image.Image, index: int) -> dict[str, torch.Tensor]:
        """The photo through prepare_whole_image; the mask at the same size, padded with IGNORE_INDEX."""
        image, (height, width) = prepare_whole_image(decoded, self.image_size, self.size_multiple)  # (3, Hp, Wp)
        labels = torch.from_numpy(np.array(mask.resize((width, height), Image.Resampling.NEAREST)))  # (h, w)
        pad = (0, image.shape[-1] - width, 0, image.shape[-2] - height)
        return {"image": image, "mask": F.pad(labels, pad, value=IGNORE_INDEX),  # (Hp, Wp)
                "index": torch.tensor(index, dtype=torch.int64),
                "valid_hw": torch.tensor([height, width], dtype=torch.int64)}

    def _strip(self, width: int, height: int, step: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """The strip's box in original pixels: a square of side min(W, H) along the long axis, at a random
        (training) or the central offset. Side and offset are multiples of `step`, the draft-decode
        factor, so the box is whole pixels in the decoded photo too."""
        side = min(width, height) // step * step
        positions = (max(width, height) - side) // step + 1  # offsets 0, step, 2 step, ... that fit
        choice = int(rng.integers(0, positions)) if self.mode == "random_strip" else (positions - 1) // 2
        offset = choice * step
        return (0, offset, side, offset + side) if height >= width else (offset, 0, offset + side, side)

    def _augment(self, sample: dict[str, torch.Tensor], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """Flip (no label is left/right specific); draw colour jitter factors for `prepare_batch`."""
        if self.hflip and rng.random() < 0.5:
            sample["image"], sample["mask"] = sample["image"].flip(-1), sample["mask"].flip(-1)
        if self.color_jitter > 0:
            factors = rng.uniform(1 - self.color_jitter, 1 + self.color_jitter, 3)  # brightness, contrast, saturation
            sample["jitter"] = torch.from_numpy(factors.astype(np.float32))
        return sample


# ---------------------------------------------------------------------------------- data check

def check_dataset(root: str | Path, test_split: str | Path | None = None) -> list[str]:
    """Every problem in the data set, one line each (file: problem). Photos without masks are not
    problems (logged as a count); neither are names of the default test list absent from a partial set."""
    root = Path(root)
    try:
        images, masks, other = _scan(root)
    except DataError as err:
        return [str(err)]
    problems = [f"{path}: not a *{_IMAGE_SUFFIX} photo or *{_MASK_SUFFIX} mask (ignored)" for path in other]
    problems += [f"{masks[stem]}: mask without a photo (no {root / 'images' / (stem + _IMAGE_SUFFIX)})"
                 for stem in sorted(masks.keys() - images.keys())]
    unlabelled = len(images.keys() - masks.keys())
    if unlabelled:
        log.info("%s: %d photo(s) have no mask (unlabelled, not used)", root / "images", unlabelled)
    stems = sorted(images.keys() & masks.keys())
    for stem in tqdm(stems, desc=f"checking {root}", unit="pair"):
        problems += _check_pair(Pair(stem, images[stem], masks[stem]))
    split_file = DEFAULT_TEST_SPLIT if test_split is None else Path(test_split)
    try:
        names = read_split_file(split_file)
    except DataError as err:
        return problems + [str(err)]
    present = set(stems)
    absent = [name for name in names if name not in present]
    overlap = outfit_overlap([name for name in names if name in present], stems)
    log.info("%s: %d of its %d images in %s share an outfit with a labelled image outside it%s",
             split_file.name, overlap["images"], overlap["of"], root,
             " (an outfit-disjoint test split: python dataset.py split --by-outfit)" if overlap["images"] else "")
    if test_split is None:
        if absent:
            log.info("%s: %d name(s) not in this data set", split_file.name, len(absent))
        return problems
    return problems + [f"{split_file}: names {name}, which has no photo/mask pair in {root}" for name in absent]


def _check_pair(pair: Pair) -> list[str]:
    problems = []
    image_size = labels = None
    try:
        image_size = read_image(pair.image).original_size
    except DataError as err:
        problems.append(str(err))
    try:
        labels = read_mask(pair.mask)
    except DataError as err:
        problems.append(str(err))
    if image_size is not None and labels is not None and labels.shape != image_size[::-1]:
        problems.append(_size_mismatch(pair, image_size, labels.shape))
    return problems


# ---------------------------------------------------------------------------------- synthetic data
# Studio-style photos of one drawn figure. Every part is drawn once into a coverage layer; the layer
# composites a textured fill into the photo and writes the label into the mask, so both always agree.

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

_Chain = tuple[list[tuple[float, float]], list[float]]  # joint points and the limb width at each
_Shape = tuple  # ("polygon", points) | ("ellipse", box) | ("ring", box, width) | ("line", points, width)
#                 | ("chord", box, start_degrees, end_degrees)


def _weighted(rng: np.random.Generator, table: tuple[tuple[str, float], ...]) -> str:
    names, weights = zip(*table)
    return names[rng.choice(len(names), p=np.array(weights) / sum(weights))]


@dataclass
class _Fill:
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


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    """One colour range shared by all garments, so that colour alone never gives the label."""
    saturation = rng.uniform(0, 0.15) if rng.random() < 0.3 else rng.uniform(0.25, 0.85)
    rgb = colorsys.hsv_to_rgb(rng.random(), saturation, rng.uniform(0.12, 0.95))
    return np.array(rgb, np.float32) * 255


def _garment_fill(rng: np.random.Generator, h: float, kind: str | None = None) -> _Fill:
    kind = kind or _weighted(rng, _TEXTURES)
    if kind == "denim":
        colour = np.array(colorsys.hsv_to_rgb(rng.uniform(0.57, 0.64), rng.uniform(0.35, 0.7),
                                              rng.uniform(0.25, 0.75)), np.float32) * 255
        return _Fill(colour, kind, np.minimum(colour * 1.4 + 25, 255), max(3.0, 0.08 * h), math.pi / 4, 4)
    colour = _random_colour(rng)
    second = colour * rng.uniform(0.6, 0.85) if kind == "knit" else _random_colour(rng)
    angle = rng.choice((0, math.pi / 2, math.pi / 4, -math.pi / 4)) + rng.uniform(-0.1, 0.1)
    return _Fill(colour, kind, second, max(2.0, h * rng.uniform(0.06, 0.3)), angle, rng.uniform(1.5, 6))


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
    arms: list[_Chain]   # per side (left, right): shoulder, elbow, wrist
    hands: list[_Chain]  # wrist, finger tips
    legs: list[_Chain]   # hip joint, knee, ankle

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


def _sub_chain(chain: _Chain, t0: float, t1: float, widen: float = 1.0) -> _Chain:
    """The part of a limb between fractions t0 and t1 of its length, widths scaled by widen."""
    points, widths = np.asarray(chain[0], np.float64), np.asarray(chain[1], np.float64)
    along = np.concatenate([[0], np.cumsum(np.hypot(*np.diff(points, axis=0).T))])
    along /= along[-1]
    ts = np.concatenate([[t0], along[(along > t0) & (along < t1)], [t1]])
    xs, ys = np.interp(ts, along, points[:, 0]), np.interp(ts, along, points[:, 1])
    return list(zip(xs.tolist(), ys.tolist())), (np.interp(ts, along, widths) * widen).tolist()


def _limb(chain: _Chain, round_end: bool = False) -> list[_Shape]:
    """A tapered limb: one quad per segment, discs at the joints so bends have no notches."""
    points, widths = chain
    shapes: list[_Shape] = []
    for (px, py), (qx, qy), wp, wq in zip(points, points[1:], widths, widths[1:]):
        length = math.hypot(qx - px, qy - py) or 1.0
        nx, ny = (py - qy) / length / 2, (qx - px) / length / 2  # half a unit normal
        shapes.append(("polygon", [(px + nx * wp, py + ny * wp), (qx + nx * wq, qy + ny * wq),
                                   (qx - nx * wq, qy - ny * wq), (px - nx * wp, py - ny * wp)]))
    joints = list(zip(points, widths))[1:] if round_end else list(zip(points, widths))[1:-1]
    shapes += [_ellipse(x, y, w / 2, w / 2) for (x, y), w in joints]
    return shapes


def _ellipse(x: float, y: float, rx: float, ry: float) -> _Shape:
    return ("ellipse", (x - rx, y - ry, x + rx, y + ry))


def _torso(body: _Body, start: float, end: float, widen: float = 1.0,
           neck: tuple[float, float] | None = None) -> list[_Shape]:
    """The torso between two levels; neck = (half width, depth) in pixels cuts a neckline."""
    levels = [start] + [lv for lv in _TORSO_LEVELS if start < lv < end] + [end]
    left = [(body.cx - widen * body.half_width(lv), body.y(lv)) for lv in levels]
    right = [(body.cx + widen * body.half_width(lv), body.y(lv)) for lv in reversed(levels)]
    cut = [] if neck is None else [(body.cx + neck[0] * math.cos(t), body.y(start) + neck[1] * math.sin(t))
                                   for t in np.linspace(0, math.pi, 9)]
    return [("polygon", left + right + cut)]


def _skirt(body: _Body, start: float, hem: float, flare: float) -> _Shape:
    """A skirt from the waist (level start) to level hem, widening by flare * h per head height."""
    hip_w = 1.06 * body.hip
    hem_w = hip_w + flare * body.h * (hem - 3.5)
    curve = [(body.cx + hem_w * math.cos(t), body.y(hem) + 0.1 * body.h * math.sin(t))
             for t in np.linspace(0, math.pi, 9)]
    waist_w = 1.05 * body.half_width(start)
    return ("polygon", [(body.cx - waist_w, body.y(start)), (body.cx + waist_w, body.y(start)),
                        (body.cx + hip_w, body.y(3.5)), *curve, (body.cx - hip_w, body.y(3.5))])


def _draw(draw: ImageDraw.ImageDraw, shapes: list[_Shape]) -> None:
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


class _Canvas:
    """The photo (H, W, 3) float32 and its mask (H, W) uint8, painted part by part, back to front."""

    def __init__(self, photo: np.ndarray, light: tuple[float, float]) -> None:
        self.photo = photo
        self.mask = np.zeros(photo.shape[:2], np.uint8)
        self.light = light  # key-light gradient across the frame (x, y)

    def paint(self, label: int | None, shapes: list[_Shape], fill: _Fill, rng: np.random.Generator,
              relief: float = 0.3) -> None:
        """Composite fill through the shapes' coverage and write label (None: photo only) under it."""
        height, width = self.mask.shape
        layer = Image.new("L", (width, height))
        _draw(ImageDraw.Draw(layer), shapes)
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


def _backdrop(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A diffusely lit light studio wall: (H, W, 3) float32."""
    base = rng.uniform(212, 246) + rng.uniform(-5, 5, 3).astype(np.float32)  # slightly warm or cool
    ys = np.linspace(-1, 1, height, dtype=np.float32)[:, None]
    xs = np.linspace(-1, 1, width, dtype=np.float32)[None, :]
    cx, cy = rng.uniform(-0.4, 0.4, 2)
    falloff = -rng.uniform(6, 22) * (0.6 * (xs - cx) ** 2 + 0.4 * (ys - cy) ** 2) + rng.uniform(-8, 8) * ys
    grain = rng.standard_normal((height, width), dtype=np.float32) * 1.5
    return (base + (falloff + grain)[..., None]).astype(np.float32)


def _draw_lower(canvas: _Canvas, rng: np.random.Generator, body: _Body, outfit: _Outfit,
                fills: dict[str, _Fill]) -> None:
    """Bare body, legwear, shoes and the bottom garment: everything under the torso garment."""
    h, cx = body.h, body.cx
    neck = ("polygon", [(cx - 0.16 * h, body.y(0.8)), (cx + 0.16 * h, body.y(0.8)),
                        (cx + 0.2 * h, body.y(1.4)), (cx - 0.2 * h, body.y(1.4))])
    feet = [_ellipse(c[0][-1][0], c[0][-1][1] + 0.2 * h, 0.17 * h, 0.14 * h) for c in body.legs]
    legs = [shape for chain in body.legs for shape in _limb(chain)]
    canvas.paint(_ID["skin"], [neck] + _torso(body, 1.25, 3.95) + legs + feet, fills["skin"], rng)
    if outfit.leggings:
        shapes = _torso(body, 2.9, 3.95, 1.02) + [s for c in body.legs for s in _limb(_sub_chain(c, 0, 1, 1.05))]
        canvas.paint(_ID["leggings"], shapes, fills["leggings"], rng)
    if outfit.socks:
        shapes = [s for c in body.legs for s in _limb(_sub_chain(c, 0.82, 1, 1.08))] + feet
        canvas.paint(_ID["socks"], shapes, fills["socks"], rng)
    if outfit.shoes:
        start = 0.72 if outfit.shoes == "boots" else 0.96
        shapes = [s for c in body.legs for s in _limb(_sub_chain(c, start, 1, 1.15))]
        shapes += [_ellipse(c[0][-1][0], c[0][-1][1] + 0.2 * h, 0.22 * h, 0.16 * h) for c in body.legs]
        canvas.paint(_ID["footwear"], shapes, fills["shoes"], rng, relief=0.4)
    if outfit.bottom in ("pants", "shorts"):
        legs = [s for c in body.legs for s in _limb(_sub_chain(c, 0, outfit.leg_cover, rng.uniform(1.1, 1.35)))]
        canvas.paint(_ID["pants"], _torso(body, 2.85, 3.95, 1.05) + legs, fills["bottom"], rng)
    elif outfit.bottom == "skirt":
        skirt = _skirt(body, 2.85, rng.uniform(4.2, 6.2), rng.uniform(0.05, 0.4))
        canvas.paint(_ID["skirt"], [skirt], fills["bottom"], rng)


def _draw_torso(canvas: _Canvas, rng: np.random.Generator, body: _Body, outfit: _Outfit,
                fills: dict[str, _Fill]) -> None:
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
        legs = [s for c in body.legs for s in _limb(_sub_chain(c, 0, outfit.leg_cover, 1.2))]
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
        pendant = _ellipse(cx, body.y(1.3) + drop + 0.04 * h, 0.05 * h, 0.06 * h)
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


def _draw_arms(canvas: _Canvas, rng: np.random.Generator, body: _Body, outfit: _Outfit,
               fills: dict[str, _Fill]) -> None:
    """Arms and hands over the torso, then sleeves, gloves, wrist wearing, ring and bag."""
    h = body.h
    hands = [s for c in body.hands for s in _limb(c, round_end=True)]
    canvas.paint(_ID["skin"], [s for c in body.arms for s in _limb(c)] + hands, fills["skin"], rng)
    caps = [_ellipse(c[0][0][0], c[0][0][1] + 0.04 * h, 0.2 * h, 0.2 * h) for c in body.arms]  # round seams
    if outfit.sleeves != "none":
        end = 1.0 if outfit.sleeves == "long" else rng.uniform(0.2, 0.45)
        sleeves = [s for c in body.arms for s in _limb(_sub_chain(c, 0, end, 1.2))]
        canvas.paint(_ID[outfit.garment], caps + sleeves, fills["garment"], rng)
    if outfit.outer:
        sleeves = [s for c in body.arms for s in _limb(_sub_chain(c, 0, 0.98, 1.35))]
        canvas.paint(_ID["outer"], caps + sleeves, fills["outer"], rng)
    if "gloves" in outfit.extras:
        gloves = [s for c in body.hands for s in _limb(_sub_chain(c, 0, 1, 1.12), round_end=True)]
        gloves += [s for c in body.arms for s in _limb(_sub_chain(c, 0.9, 1, 1.1))]
        canvas.paint(_ID["gloves"], gloves, fills["gloves"], rng)
    side = int(rng.integers(2))
    if "wrist wearing" in outfit.extras:
        band = _limb(_sub_chain(body.arms[side], 0.9, 0.97, 1.3))
        strap = fills["metal" if rng.random() < 0.5 else "bag"]  # bracelet or leather watch strap
        canvas.paint(_ID["wrist wearing"], band, strap, rng, relief=0.2)
    if "ring" in outfit.extras:
        points, _ = _sub_chain(body.hands[1 - side], 0, 0.6)  # on a finger, past the knuckles
        canvas.paint(_ID["ring"], [_ellipse(*points[-1], 0.05 * h, 0.05 * h)], fills["metal"], rng, relief=0)
    if "bag" in outfit.extras:
        _draw_bag(canvas, rng, body, fills["bag"])


def _draw_bag(canvas: _Canvas, rng: np.random.Generator, body: _Body, fill: _Fill) -> None:
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


def _draw_head(canvas: _Canvas, rng: np.random.Generator, body: _Body, outfit: _Outfit,
               fills: dict[str, _Fill]) -> None:
    """Neckwear, then the face with eyes, brows and mouth (or the back of the head), then hair."""
    h, cx = body.h, body.cx
    if "neckwear" in outfit.extras:
        band = ("polygon", [(cx - 0.3 * h, body.y(0.95)), (cx + 0.3 * h, body.y(0.95)),
                            (cx + 0.36 * h, body.y(1.45)), (cx - 0.36 * h, body.y(1.45))])
        hanging = [(cx + 0.12 * h, body.y(1.3)), (cx + 0.2 * h, body.y(rng.uniform(2.2, 3.0)))]
        end = _limb((hanging, [0.28 * h, 0.22 * h]))
        canvas.paint(_ID["neckwear"], [band] + end, fills["neckwear"], rng)
    head = ("ellipse", (cx - 0.36 * h, body.top, cx + 0.36 * h, body.y(1.05)))
    if outfit.view == "back":
        canvas.paint(_ID["hair"], [head], fills["hair"], rng)
        return
    ears = [_ellipse(cx + s * 0.36 * h, body.y(0.56), 0.07 * h, 0.12 * h) for s in (-1, 1)]
    canvas.paint(_ID["face"], [head] + ears, fills["skin"], rng, relief=0.2)
    dark = _Fill(np.array((45, 32, 30), np.float32), grain=2)
    eyes = [_ellipse(cx + s * 0.15 * h, body.y(0.5), 0.065 * h, 0.032 * h) for s in (-1, 1)]
    brows = [("line", [(cx + s * 0.07 * h, body.y(0.41)), (cx + s * 0.24 * h, body.y(0.39))], 0.03 * h)
             for s in (-1, 1)]
    canvas.paint(None, eyes + brows, dark, rng, relief=0)  # marks stay label "face"
    skin = fills["skin"].colour
    nose = ("line", [(cx, body.y(0.55)), (cx + 0.03 * h, body.y(0.68))], 0.025 * h)
    canvas.paint(None, [nose], _Fill(skin * 0.8), rng, relief=0)
    lips = _Fill(skin * np.array((0.8, 0.5, 0.5), np.float32))
    canvas.paint(None, [_ellipse(cx, body.y(0.8), 0.1 * h, 0.035 * h)], lips, rng, relief=0)


def _draw_back_hair(canvas: _Canvas, rng: np.random.Generator, body: _Body, outfit: _Outfit, fill: _Fill) -> None:
    """Long hair or a ponytail: behind the body in front views, over the back in back views."""
    h, cx = body.h, body.cx
    if outfit.hair == "long":
        end = body.y(rng.uniform(1.8, 3.0))
        shapes = [("polygon", [(cx - 0.42 * h, body.y(0.5)), (cx + 0.42 * h, body.y(0.5)),
                               (cx + 0.55 * h, end), (cx - 0.55 * h, end)])]
    elif outfit.hair == "ponytail":
        side = (-1, 1)[int(rng.integers(2))]
        shapes = _limb(([(cx + side * 0.3 * h, body.y(0.3)), (cx + side * 0.55 * h, body.y(1.7))],
                        [0.3 * h, 0.12 * h]), round_end=True)
    else:
        return
    canvas.paint(_ID["hair"], shapes, fill, rng)


def _draw_front_hair(canvas: _Canvas, rng: np.random.Generator, body: _Body, outfit: _Outfit, fill: _Fill) -> None:
    """The hair cap down to a random hairline (low = bangs), side hair, a bun."""
    if outfit.hair == "none":
        return
    h, cx = body.h, body.cx
    cy, ry = body.y(0.46), 0.56 * h
    hairline = body.y(rng.uniform(0.16, 0.4))
    tilt = math.degrees(math.asin((hairline - cy) / ry))  # negative: the hairline is above the centre
    shapes: list[_Shape] = [("chord", (cx - 0.42 * h, cy - ry, cx + 0.42 * h, cy + ry), 180 - tilt, 360 + tilt)]
    long = outfit.hair == "long"
    end, spread = body.y(rng.uniform(1.1, 1.7) if long else 0.7), (0.6 if long else 0.46) * h
    for s in (-1, 1):  # side hair over the ears, falling onto the shoulders when long
        shapes.append(("polygon", [(cx + s * 0.43 * h, body.y(0.3)), (cx + s * 0.3 * h, body.y(0.3)),
                                   (cx + s * 0.34 * h, end), (cx + s * spread, end)]))
    if outfit.hair == "bun":
        shapes.append(_ellipse(cx, body.y(-0.05), 0.2 * h, 0.18 * h))
    canvas.paint(_ID["hair"], shapes, fill, rng)


def _draw_headgear(canvas: _Canvas, rng: np.random.Generator, body: _Body, outfit: _Outfit,
                   fills: dict[str, _Fill]) -> None:
    """Earrings, eyeglass and headwear: the front-most layers."""
    h, cx = body.h, body.cx
    if "earrings" in outfit.extras:
        shapes = [_ellipse(cx + s * 0.37 * h, body.y(0.72), 0.04 * h, 0.04 * h) for s in (-1, 1)]
        shapes += [_ellipse(cx + s * 0.37 * h, body.y(0.83), 0.03 * h, 0.05 * h) for s in (-1, 1)]
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
                      _ellipse(cx, body.y(0.12), rng.uniform(0.55, 0.8) * h, 0.1 * h)]
        else:  # beanie
            shapes = [("chord", (cx - 0.45 * h, body.y(-0.14), cx + 0.45 * h, body.y(1.0)), 188, 352)]
        canvas.paint(_ID["headwear"], shapes, fills["hat"], rng)


def _figure_fills(rng: np.random.Generator, outfit: _Outfit, h: float) -> dict[str, _Fill]:
    hair = np.array(_HAIR_COLOURS[int(rng.integers(len(_HAIR_COLOURS)))], np.float32) + rng.uniform(-10, 10, 3)
    return {
        "skin": _Fill(_skin_tone(rng), grain=1.5),
        "hair": _Fill(hair, "knit", hair * 0.7, max(2.0, 0.04 * h), rng.uniform(-0.3, 0.3), 4),  # strands
        "garment": _garment_fill(rng, h),
        "bottom": _garment_fill(rng, h, "denim" if outfit.denim else None),
        "outer": _garment_fill(rng, h),
        "leggings": _garment_fill(rng, h, str(rng.choice(("solid", "knit")))),
        "socks": _garment_fill(rng, h, "knit"),
        "gloves": _garment_fill(rng, h, "knit"),
        "tie": _garment_fill(rng, h),
        "neckwear": _garment_fill(rng, h),
        "hat": _garment_fill(rng, h),
        "shoes": _Fill(_random_colour(rng), grain=3),
        "belt": _Fill(_random_colour(rng), grain=3),
        "bag": _Fill(_random_colour(rng), grain=3),
        "metal": _Fill(np.array(_METALS[int(rng.integers(len(_METALS)))], np.float32), grain=8),
        "lens": _Fill(np.array((25, 22, 25), np.float32), grain=3),
    }


def _render(rng: np.random.Generator, stem: str, width: int, height: int) -> tuple[Image.Image, Image.Image]:
    """One synthetic photo (RGB) and mask (L) for a file name, whose gender/category/view set the outfit."""
    gender, category = stem.split("-")[:2]
    outfit = _choose_outfit(rng, gender, category, stem.rsplit("_", 1)[1])
    body = _make_body(rng, width, height, gender)
    canvas = _Canvas(_backdrop(rng, width, height), tuple(rng.uniform(-0.3, 0.3, 2)))
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
    return photo.filter(ImageFilter.GaussianBlur(0.6)), Image.fromarray(canvas.mask)


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
        photo, mask = _render(child, stem, width, height)
        pair = Pair(stem, out_dir / "images" / f"{stem}{_IMAGE_SUFFIX}", out_dir / "segm" / f"{stem}{_MASK_SUFFIX}")
        photo.save(pair.image, quality=90)
        mask.save(pair.mask)
        pairs.append(pair)
    return sorted(pairs, key=lambda p: p.stem)


# ---------------------------------------------------------------------------------- command line

def _write_outfit_split(root: Path, out: Path, fraction: float, seed: int) -> int:
    try:
        stems = [p.stem for p in find_pairs(root)]
        chosen = outfit_split(stems, fraction, seed)
    except ValueError as err:   # DataError included
        print(f"error: {err}", file=sys.stderr)
        return 1
    outfits = len({outfit_key(s) for s in chosen})
    header = (f"# outfit-disjoint test split of {root}: {len(chosen)} of {len(stems)} labelled images, "
              f"{outfits} whole outfits\n# python dataset.py split --by-outfit {root} --out {out} "
              f"--fraction {fraction} --seed {seed}\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(header + "".join(f"{s}{_MASK_SUFFIX}\n" for s in chosen))
    print(f"{out}: {len(chosen)} test images in {outfits} outfits; use it with --test_split {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    synth = commands.add_parser("synth", help="write a synthetic data set in the real layout")
    synth.add_argument("out_dir", type=Path)
    synth.add_argument("--count", type=int, required=True)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--width", type=int, default=750)
    synth.add_argument("--height", type=int, default=1101)
    check = commands.add_parser("check", help="list every problem in a data set; exit 1 if there are any")
    check.add_argument("root", type=Path)
    check.add_argument("--test-split", type=Path, default=None, help="default: the published test list")
    split = commands.add_parser("split", help="write a test split file for --test_split")
    split.add_argument("root", type=Path)
    split.add_argument("--by-outfit", action="store_true", required=True,
                       help="whole outfits (every view of one) on one side; the only kind offered")
    split.add_argument("--out", type=Path, required=True, help="the split file to write")
    split.add_argument("--fraction", type=float, default=0.1, help="share of the labelled images (default 0.1)")
    split.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "synth":
        pairs = write_synthetic_dataset(args.out_dir, args.count, args.seed, args.width, args.height)
        print(f"{args.out_dir}: wrote {len(pairs)} photo/mask pairs")
        return 0
    if args.command == "split":
        return _write_outfit_split(args.root, args.out, args.fraction, args.seed)
    problems = check_dataset(args.root, args.test_split)
    for line in problems:
        print(line)
    if problems:
        print(f"{args.root}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"{args.root}: {len(find_pairs(args.root))} photo/mask pairs, no problems")
    return 0


if __name__ == "__main__":
    sys.exit(main())
