"""DeepFashion-MultiModal human parsing data: labels, file pairing, splits, samples, checks.

Layout on disk (the published data set, and what synthetic.py writes):
    ROOT/images/<stem>.jpg       RGB photo, 750 wide x 1101 high in the real data
    ROOT/segm/<stem>_segm.png    label ids 0-23 (mode L or P), same size as its photo
Photos without a mask are normal (the real set has 44,096 photos and 12,701 masks): they are unlabelled.

Splits go by file name, never by a random draw: the published list `deepfashion-mm-test-split.txt` is
the test set, and val is the part of the rest whose outfit (`outfit_key`: all views of one outfit
together) hashes below `val_fraction`.

Run:
    python synthetic.py OUT_DIR --count 200 [--seed 0]       # synthetic studio photos in the real layout
    python dataset.py check DATA_DIR [--test-split FILE]     # print every problem; exit 1 if there are any
    python dataset.py split --by-outfit DATA_DIR --out FILE [--fraction 0.1 --seed 0]
                                                             # an outfit-disjoint test split for --test_split
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
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


def write_synthetic_dataset(*args, **kwargs) -> list[Pair]:
    """synthetic.write_synthetic_dataset, which moved there; this name stays for callers of the old one."""
    from synthetic import write_synthetic_dataset as write   # synthetic imports this module: import late
    return write(*args, **kwargs)


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
    commands.add_parser("synth", add_help=False, help="= python synthetic.py: write a synthetic data set")
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
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["synth"]:   # the generator's own command line, kept under its old name
        from synthetic import main as synth_main
        return synth_main(argv[1:])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
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
