"""Human parsing data: reading data sets in their layouts, splits, samples, checks. DeepFashion-MultiModal
(DF-MM) is the default throughout; what the label ids mean (label sets, label maps) is labels.py's, and
reading one photo or mask and making model input of its pixels is images.py's.

DF-MM's layout on disk (the published data set, and what synthetic.py writes):
    ROOT/images/<stem>.jpg       RGB photo, 750 wide x 1101 high in the real data
    ROOT/segm/<stem>_segm.png    label ids 0-23 (mode L or P), same size as its photo
Photos without a mask are normal (the real set has 44,096 photos and 12,701 masks): they are unlabelled.
Other layouts (`LAYOUTS`: lip, cihp, atr, and folders = ROOT/images + ROOT/masks with a name rule)
keep photos and label-id masks elsewhere; their masks use their own label set (labels.py, labels/NAME.json).

Splits go by file name, never by a random draw. DF-MM: the published list `deepfashion-mm-test-split.txt`
is the test set, and val is the part of the rest whose outfit (`outfit_key`: all views of one outfit
together) hashes below `val_fraction`. LIP and CIHP: their own labelled evaluation part is the test set;
ATR and folders: a hash of the name picks test_fraction of the images.

Run:
    python dataset.py check DATA_DIR [--test-split FILE] [--layout lip] [--labels FILE]
                                                             # print every problem; exit 1 if there are any
    python dataset.py split --by-outfit DATA_DIR --out FILE [--fraction 0.1 --seed 0]
                                                             # an outfit-disjoint test split for --test_split
    python synthetic.py OUT_DIR --count 200                  # the synthetic set (synthetic.py)
"""

from __future__ import annotations

import argparse
import dataclasses
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

from images import FITS, DecodedImage, open_mask, prepare_whole_image, read_image, read_mask
from labels import DEEPFASHION_MM, IGNORE_INDEX, DataError, LabelSet, load_label_set

log = logging.getLogger(__name__)

DEFAULT_TEST_SPLIT = Path(__file__).parent / "deepfashion-mm-test-split.txt"
SPLITS = ("train", "val", "test", "all")
MODES = ("random_strip", "center_strip", "whole", "random_letterbox", "letterbox")

_IMAGE_SUFFIX = ".jpg"        # DeepFashion-MultiModal's; other layouts name their own
_MASK_SUFFIX = "_segm.png"


class EmptySplitError(DataError):
    """A split holds no pairs; the message says why."""


# ---------------------------------------------------------------------------------- layouts

@dataclass(frozen=True)
class Layout:
    """Where a data set keeps its photos and masks, and the defaults that go with it.

    parts: (part, photo folder, mask folder); part "test" is the data set's own labelled evaluation part
    (LIP's val, CIHP's Validation), "train" the rest, "" a set without its own split. Folders are paths
    relative to the root; with `nested` each may also sit a few levels down (the archives nest them)."""
    name: str
    parts: tuple[tuple[str, str, str], ...]
    mask_pattern: str                   # a photo's mask file name, "{stem}" the photo's stem
    image_suffixes: tuple[str, ...]
    labels: str                         # the label set of the data set's own masks; "": any (DF-MM's by default)
    train_mode: str                     # FashionDataset modes for training and for evaluation
    eval_mode: str
    nested: bool = False
    unlabelled_255: bool = True         # a 255 in a mask is an unannotated pixel (else an error)

    @property
    def fit(self) -> str:
        """The side of a photo that image_size measures in this layout's training samples (images.FITS)."""
        return "short_side" if self.train_mode == "random_strip" else "long_side"

    @property
    def test_rule(self) -> str:
        """How the default test split is chosen: "published" list, the data set's own "part", or a "hash"."""
        if self.name == "deepfashion-mm":
            return "published"
        return "part" if any(part == "test" for part, _, _ in self.parts) else "hash"


LAYOUTS: dict[str, Layout] = {
    # ROOT/images/<stem>.jpg, ROOT/segm/<stem>_segm.png; the published test list; 750x750 strips
    "deepfashion-mm": Layout("deepfashion-mm", (("", "images", "segm"),), "{stem}_segm.png", (".jpg",),
                             "", "random_strip", "center_strip", unlabelled_255=False),
    # LIP (sysu-hcp.net/lip): TrainVal_images.zip and TrainVal_parsing_annotations.zip unpacked side by side
    "lip": Layout("lip", (("train", "train_images", "train_segmentations"),
                          ("test", "val_images", "val_segmentations")), "{stem}.png", (".jpg",), "lip", "random_letterbox", "letterbox", nested=True),
    # CIHP (instance-level_human_parsing.tar.gz): Category_ids are the 20 semantic labels
    "cihp": Layout("cihp", (("train", "Training/Images", "Training/Category_ids"),
                            ("test", "Validation/Images", "Validation/Category_ids")),
                   "{stem}.png", (".jpg",), "cihp", "random_letterbox", "letterbox", nested=True),
    # ATR (humanparsing.zip): no split of its own
    "atr": Layout("atr", (("", "JPEGImages", "SegmentationClassAug"),), "{stem}.png", (".jpg",), "atr",
                  "random_letterbox", "letterbox", nested=True),
    # your own: ROOT/images/<stem>.<jpg|png|...>, ROOT/masks/<mask_pattern>
    "folders": Layout("folders", (("", "images", "masks"),), "{stem}.png",
                      (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"), "",
                      "random_letterbox", "letterbox"),
}


def get_layout(name: str | Layout = "deepfashion-mm", mask_pattern: str = "") -> Layout:
    """A layout by name, with its mask name rule replaced when mask_pattern is given ("{stem}_mask.png")."""
    layout = name if isinstance(name, Layout) else LAYOUTS.get(name)
    if layout is None:
        raise ValueError(f"unknown data layout {name!r}; known: {', '.join(LAYOUTS)}")
    if mask_pattern:
        if mask_pattern.count("{stem}") != 1 or "/" in mask_pattern:
            raise ValueError(f"mask pattern {mask_pattern!r} must hold {{stem}} once and no folder, "
                             "e.g. '{stem}.png' or '{stem}_mask.png'")
        layout = dataclasses.replace(layout, mask_pattern=mask_pattern)
    return layout


def _find_folder(root: Path, relative: str, nested: bool) -> Path:
    """root/relative, or with nested the one folder up to three levels below root ending in `relative`."""
    direct = root / relative
    if direct.is_dir() or not nested:
        if not direct.is_dir():
            raise DataError(f"{direct}: folder missing")
        return direct
    want = tuple(Path(relative).parts)
    found, level = [], [root]
    for _ in range(3):
        level = [c for d in level for c in sorted(d.iterdir()) if c.is_dir() and not c.name.startswith(".")]
        found += [d for d in level if d.parts[-len(want):] == want]
        if found:
            break
    if len(found) != 1:
        raise DataError(f"{root}: {'no' if not found else f'{len(found)}'} folder(s) {relative}/ within three "
                        f"levels" + (f": {', '.join(map(str, found))}" if found else ""))
    return found[0]


DFMM_LAYOUT = LAYOUTS["deepfashion-mm"]

@dataclass(frozen=True)
class Pair:
    stem: str       # e.g. "WOMEN-Dresses-id_00000001-01_1_front"
    image: Path     # root/images/<stem>.jpg
    mask: Path      # root/segm/<stem>_segm.png
    part: str = ""  # the data set's own part ("train", "test") where its layout has parts


def _size_mismatch(pair: Pair, image_size: tuple[int, int], mask_shape: tuple[int, ...]) -> str:
    return (f"{pair.mask}: mask is {mask_shape[1]}x{mask_shape[0]} but its photo {pair.image} "
            f"is {image_size[0]}x{image_size[1]}")


# ---------------------------------------------------------------------------------- files and splits

def _listing(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


class _Scan(NamedTuple):
    images: dict[str, Path]                   # stem -> photo
    masks: dict[str, Path]                    # stem -> mask
    parts: dict[str, str]                     # stem -> its part ("" where the layout has none)
    folders: dict[str, tuple[Path, Path]]     # part -> (photo folder, mask folder)
    other: list[Path]                         # entries of those folders that are neither
    problems: list[str]                       # a stem with two photos or in two parts


def _expected(layout: Layout) -> str:
    return " and ".join(f"{i}/<stem>{'|'.join(layout.image_suffixes)} with {m}/{layout.mask_pattern}"
                        for _, i, m in layout.parts)


def _scan(root: Path, layout: Layout = DFMM_LAYOUT) -> _Scan:
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found")
    prefix, suffix = layout.mask_pattern.split("{stem}")
    found = _Scan({}, {}, {}, {}, [], [])
    for part, image_rel, mask_rel in layout.parts:
        try:
            folders = _find_folder(root, image_rel, layout.nested), _find_folder(root, mask_rel, layout.nested)
        except DataError as err:
            raise DataError(f"{err} (layout {layout.name} expects {_expected(layout)})") from None
        found.folders[part] = folders
        for path in sorted(folders[0].iterdir()):
            photo = next((x for x in layout.image_suffixes if path.name.lower().endswith(x)), None)
            # "._x.jpg" files are macOS resource forks, not photos
            if photo is None or path.name.startswith(".") or not path.is_file():
                found.other.append(path)
                continue
            stem = path.name[: -len(photo)]
            if stem in found.images:
                found.problems.append(f"{path}: a second photo for {stem!r} (the first: {found.images[stem]})")
                continue
            found.images[stem], found.parts[stem] = path, part
        for path in sorted(folders[1].iterdir()):
            name = path.name
            if (not name.startswith(prefix) or not name.endswith(suffix) or len(name) <= len(prefix + suffix)
                    or name.startswith(".") or not path.is_file()):
                found.other.append(path)
                continue
            stem = name[len(prefix): len(name) - len(suffix)]
            if stem in found.masks:
                found.problems.append(f"{path}: a second mask for {stem!r} (the first: {found.masks[stem]})")
                continue
            found.masks[stem] = path
            found.parts.setdefault(stem, part)
    found.other.sort()
    return found


def find_pairs(root: str | Path, require_masks: bool = False, layout: Layout | str = DFMM_LAYOUT) -> list[Pair]:
    """Photo/mask pairs under root in `layout`, sorted by stem. Photos without a mask are skipped unless
    require_masks."""
    root, layout = Path(root), get_layout(layout)
    scan = _scan(root, layout)
    problems = list(scan.problems)
    by_part: dict[str, list[str]] = {}
    for stem in sorted(scan.masks.keys() - scan.images.keys()):
        by_part.setdefault(scan.parts[stem], []).append(scan.masks[stem].name)
    for part, names in by_part.items():
        image_dir, mask_dir = scan.folders[part]
        problems.append(f"{mask_dir}: {len(names)} mask(s) without a photo in {image_dir.name}/: " + _listing(names))
    unlabelled = sorted(scan.images.keys() - scan.masks.keys())
    if require_masks and unlabelled:
        problems.append(f"{root}: {len(unlabelled)} photo(s) without a mask: "
                        + _listing([scan.images[s].name for s in unlabelled]))
    if problems:
        raise DataError("; ".join(problems))
    pairs = [Pair(stem, scan.images[stem], scan.masks[stem], scan.parts[stem])
             for stem in sorted(scan.images.keys() & scan.masks.keys())]
    if not pairs:
        raise DataError(f"{root}: no pairs ({_expected(layout)})")
    return pairs


_SPLIT_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


def read_split_file(path: str | Path) -> list[str]:
    """Stems named by a split file: one "<stem>_segm.png", "<stem>.jpg", "<stem>.png" or "<stem>" a line
    (so LIP's train_id.txt is one); '#' comments."""
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
        line = line.removesuffix(_MASK_SUFFIX)
        stems.append(next((line[: -len(x)] for x in _SPLIT_SUFFIXES if line.lower().endswith(x)), line))
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


def val_outfits(stems: list[str], val_fraction: float, salt: str = "") -> set[str]:
    """The outfits (`outfit_key`) of the non-test stems held out for validation: those whose key hashes
    below val_fraction. A hash of the name, not an RNG: the split survives reordering, subsets and new
    files, and every view of an outfit is on the same side. With val_fraction > 0 and at least two
    outfits, validation gets at least one (the lowest hash) and training keeps at least one (the
    highest), so a small data set still validates; a single outfit is all for training. A salt draws
    another, independent choice (the hashed test split of a data set without its own)."""
    outfits = sorted({outfit_key(s) for s in stems}, key=lambda o: (_name_hash(salt + o), o))
    chosen = {o for o in outfits if _name_hash(salt + o) < val_fraction * 10_000}
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


def choose_test_stems(pairs: list[Pair], test_split: str | Path | None = None, layout: Layout | str = DFMM_LAYOUT,
               test_fraction: float = 0.1, note_absent: bool = True) -> tuple[set[str], str]:
    """The test split's stems and where they come from: the split file if given, else the layout's rule
    (DeepFashion-MultiModal's published list; the data set's own test part; or the outfits, here whole
    stems, hashing below test_fraction, on a hash independent of validation's). note_absent: log how
    many names of the published list the data set lacks."""
    layout = get_layout(layout)
    if test_split is not None or layout.test_rule == "published":
        split_file = DEFAULT_TEST_SPLIT if test_split is None else Path(test_split)
        stems = set(read_split_file(split_file))
        absent = sorted(stems - {p.stem for p in pairs})
        if absent and test_split is None:
            if note_absent:
                log.info("%s: %d of its %d names are not in this data set (a partial or synthetic set)",
                         split_file.name, len(absent), len(stems))
        elif absent:
            raise DataError(f"{split_file}: {len(absent)} name(s) not in the data set: {_listing(absent)}")
        return stems, split_file.name
    if layout.test_rule == "part":
        return {p.stem for p in pairs if p.part == "test"}, f"the {layout.name} test part"
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    held = val_outfits([p.stem for p in pairs], test_fraction, salt="test:")
    return {p.stem for p in pairs if outfit_key(p.stem) in held}, f"the hashed {test_fraction:g} test split"


def split_pairs(pairs: list[Pair], split: str, test_split: str | Path | None = None,
                val_fraction: float = 0.05, layout: Layout | str = DFMM_LAYOUT, test_fraction: float = 0.1
                ) -> list[Pair]:
    """The pairs of one split: test as `test_stems` chooses, val = the outfits of the rest that
    `val_outfits` holds out. An empty split raises EmptySplitError."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if not pairs:
        raise DataError(f"no pairs to split into {split!r}")
    if split == "all":
        return list(pairs)
    # the val split is built beside a train split of the same pairs, which has said it already
    test, source = choose_test_stems(pairs, test_split, layout, test_fraction, note_absent=split != "val")
    if split == "test":
        chosen = [p for p in pairs if p.stem in test]
        reason = f"none of the {len(test)} names of {source} is among the {len(pairs)} pairs"
    else:
        rest = [p for p in pairs if p.stem not in test]
        held_out = val_outfits([p.stem for p in rest], val_fraction)
        chosen = [p for p in rest if (outfit_key(p.stem) in held_out) == (split == "val")]
        outfits = len({outfit_key(p.stem) for p in rest})
        reason = (f"{len(rest)} of {len(pairs)} pairs ({outfits} outfit(s)) are outside the test split "
                  f"{source}, and val_fraction={val_fraction} puts {len(held_out)} outfit(s) in val")
        if split == "val" and outfits == 1 and val_fraction > 0:
            reason += " (a single outfit stays for training)"
    if not chosen:
        raise EmptySplitError(f"{split} split is empty: {reason}")
    return chosen


# ---------------------------------------------------------------------------------- the data set

class FashionDataset(torch.utils.data.Dataset):
    """Photo/mask samples for training ("random_strip", "random_letterbox") and evaluation ("center_strip",
    "whole", "letterbox"), from a data set in any `Layout` whose masks use the label set `labels`.

    Strip modes cut a square of side min(W, H) along the long axis (for the real 750x1101 photos: a
    750x750 band at some height) and resize it to image_size. "whole" scales the full photo by the same
    image_size / min(W, H) (fit "short_side"; "long_side": / max(W, H), a letterboxed model's scale) and
    pads bottom/right to a multiple of size_multiple. Letterbox modes scale the whole photo to fit
    image_size x image_size (long side = image_size) and pad bottom/right to that square: other data
    sets' photos come in every size and aspect, and no part of them is cut away.

    A sample is uint8: "image" (3, S, S) pixels, "mask" (S, S) label ids (IGNORE_INDEX = padding), and
    "index"; "whole" and letterbox modes add "valid_hw" (the size before padding) and the random modes
    with color_jitter > 0 add "jitter" (3,) factors. Random modes flip half the samples, swapping
    left-X and right-X labels where the label set has them (LabelSet.flip_table). `prepare_batch` turns
    a collated batch into model input on the device: a worker only decodes, crops and resizes, and a
    quarter of the bytes of float32 cross to the GPU.

    Every random choice for a sample comes from np.random.default_rng((seed, epoch, index)), so a sample
    depends only on those three numbers - not on worker count, process or order - and a resumed run
    sees the same samples. Call set_epoch before each epoch (DataLoader workers copy the data set when
    an epoch starts; with persistent_workers=True they would keep the old epoch).
    """

    def __init__(self, root: str | Path, split: str = "train", image_size: int = 512,
                 mode: str = "random_strip", hflip: bool = True, color_jitter: float = 0.0,
                 size_multiple: int = 32, seed: int = 0, test_split: str | Path | None = None,
                 val_fraction: float = 0.05, skip_bad: bool = False, pairs: list[Pair] | None = None,
                 layout: Layout | str = DFMM_LAYOUT, labels: LabelSet = DEEPFASHION_MM,
                 test_fraction: float = 0.1, fit: str = "short_side") -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if image_size < 1 or size_multiple < 1:
            raise ValueError(f"image_size and size_multiple must be positive, got {image_size}, {size_multiple}")
        if not 0 <= color_jitter < 1:
            raise ValueError(f"color_jitter must be in [0, 1), got {color_jitter}")
        if fit not in FITS:
            raise ValueError(f"fit must be one of {FITS}, got {fit!r}")
        self.root, self.layout, self.labels, self.fit = Path(root), get_layout(layout), labels, fit
        # given pairs are used as they are: the caller has already chosen them
        self.pairs = list(pairs) if pairs is not None else split_pairs(
            find_pairs(self.root, layout=self.layout), split, test_split, val_fraction, self.layout, test_fraction)
        flip = labels.flip_table
        self._flip_ids = None if flip is None else torch.tensor(flip, dtype=torch.uint8)   # (256,)
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
        mask = open_mask(pair.mask, self.labels, self.layout.unlabelled_255)
        width, height = decoded.original_size
        if mask.size != decoded.original_size:
            raise DataError(_size_mismatch(pair, decoded.original_size, (mask.height, mask.width)))
        if self.mode == "whole":
            return self._whole_sample(decoded, mask, index)
        if self.mode.endswith("letterbox"):
            return self._letterbox_sample(decoded, mask, index, rng)
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
        image, (height, width) = prepare_whole_image(decoded, self.image_size, self.size_multiple,
                                                     self.fit)                                     # (3, Hp, Wp)
        labels = torch.from_numpy(np.array(mask.resize((width, height), Image.Resampling.NEAREST)))  # (h, w)
        pad = (0, image.shape[-1] - width, 0, image.shape[-2] - height)
        return {"image": image, "mask": F.pad(labels, pad, value=IGNORE_INDEX),  # (Hp, Wp)
                "index": torch.tensor(index, dtype=torch.int64),
                "valid_hw": torch.tensor([height, width], dtype=torch.int64)}

    def _letterbox_sample(self, decoded: DecodedImage, mask: Image.Image, index: int,
                          rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """The whole photo fitted into S x S, flipped before the padding so the padding stays bottom/right."""
        image, (height, width) = prepare_whole_image(decoded, self.image_size, 1, fit="long_side")  # (3, h, w)
        labels = torch.from_numpy(np.array(mask.resize((width, height), Image.Resampling.NEAREST)))   # (h, w)
        sample = {"image": image, "mask": labels, "index": torch.tensor(index, dtype=torch.int64)}
        if self.mode == "random_letterbox":
            sample = self._augment(sample, rng)
        pad = (0, self.image_size - width, 0, self.image_size - height)
        sample["image"] = F.pad(sample["image"], pad)                                              # (3, S, S)
        sample["mask"] = F.pad(sample["mask"], pad, value=IGNORE_INDEX)                           # (S, S)
        sample["valid_hw"] = torch.tensor([height, width], dtype=torch.int64)
        return sample

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
        """Flip (left-X and right-X labels swapped); draw colour jitter factors for `prepare_batch`."""
        if self.hflip and rng.random() < 0.5:
            sample["image"], sample["mask"] = sample["image"].flip(-1), sample["mask"].flip(-1)
            if self._flip_ids is not None:
                sample["mask"] = self._flip_ids[sample["mask"].long()]
        if self.color_jitter > 0:
            factors = rng.uniform(1 - self.color_jitter, 1 + self.color_jitter, 3)  # brightness, contrast, saturation
            sample["jitter"] = torch.from_numpy(factors.astype(np.float32))
        return sample


# ---------------------------------------------------------------------------------- data check

def check_dataset(root: str | Path, test_split: str | Path | None = None, layout: Layout | str = DFMM_LAYOUT,
                  labels: LabelSet | None = None) -> list[str]:
    """Every problem in the data set, one line each (file: problem); masks are checked against `labels`
    (default: the layout's label set). Photos without masks are not problems (logged as a count); neither
    are names of the default test list absent from a partial set."""
    root, layout = Path(root), get_layout(layout)
    try:
        labels = labels or load_label_set(layout.labels)
        scan = _scan(root, layout)
    except DataError as err:
        return [str(err)]
    images, masks = scan.images, scan.masks
    problems = [f"{path}: not a {'/'.join(layout.image_suffixes)} photo or a {layout.mask_pattern} mask (ignored)"
                for path in scan.other] + scan.problems
    problems += [f"{masks[stem]}: mask without a photo (no {scan.folders[scan.parts[stem]][0] / stem}"
                 f"{layout.image_suffixes[0]})" for stem in sorted(masks.keys() - images.keys())]
    unlabelled = len(images.keys() - masks.keys())
    if unlabelled:
        log.info("%s: %d photo(s) have no mask (unlabelled, not used)", root, unlabelled)
    stems = sorted(images.keys() & masks.keys())
    for stem in tqdm(stems, desc=f"checking {root}", unit="pair"):
        problems += _check_pair(Pair(stem, images[stem], masks[stem]), labels, layout.unlabelled_255)
    if test_split is None and layout.test_rule != "published":
        return problems   # the data set's own test part, or a hash: nothing to check
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


def _check_pair(pair: Pair, labels: LabelSet = DEEPFASHION_MM, unlabelled_255: bool = False) -> list[str]:
    problems = []
    image_size = ids = None
    try:
        image_size = read_image(pair.image).original_size
    except DataError as err:
        problems.append(str(err))
    try:
        ids = read_mask(pair.mask, labels, unlabelled_255)
    except DataError as err:
        problems.append(str(err))
    if image_size is not None and ids is not None and ids.shape != image_size[::-1]:
        problems.append(_size_mismatch(pair, image_size, ids.shape))
    return problems


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


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line, parsed; tests/test_readme.py checks the documented commands against it."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="list every problem in a data set; exit 1 if there are any")
    check.add_argument("root", type=Path)
    check.add_argument("--test-split", type=Path, default=None, help="default: the layout's own test split")
    check.add_argument("--layout", default="deepfashion-mm", choices=list(LAYOUTS), help="default: deepfashion-mm")
    check.add_argument("--labels", default="", help="label set of the masks (default: the layout's)")
    check.add_argument("--mask-pattern", default="", help="mask file name, e.g. '{stem}_mask.png' (layout folders)")
    split = commands.add_parser("split", help="write a test split file for --test_split")
    split.add_argument("root", type=Path)
    split.add_argument("--by-outfit", action="store_true", required=True,
                       help="whole outfits (every view of one) on one side; the only kind offered")
    split.add_argument("--out", type=Path, required=True, help="the split file to write")
    split.add_argument("--fraction", type=float, default=0.1, help="share of the labelled images (default 0.1)")
    split.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "split":
        return _write_outfit_split(args.root, args.out, args.fraction, args.seed)
    try:
        layout = get_layout(args.layout, args.mask_pattern)
        labels = load_label_set(args.labels or layout.labels)
    except ValueError as err:   # DataError included
        print(f"error: {err}", file=sys.stderr)
        return 2
    problems = check_dataset(args.root, args.test_split, layout, labels)
    for line in problems:
        print(line)
    if problems:
        print(f"{args.root}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"{args.root}: {len(find_pairs(args.root, layout=layout))} photo/mask pairs, no problems")
    return 0


if __name__ == "__main__":
    sys.exit(main())
