"""One photo or label-id mask, from its file to model input: decoding and checking a file (`read_image`,
`open_mask`), scaling a whole photo (`prepare_whole_image`), and the per-batch work on the device (colour
jitter, normalisation, boundary targets: `prepare_batch`); label ids in colour for viewing (`colorize`).
dataset.py reads data sets through these; predict.py and serve.py feed photos through the same steps, so
prediction sees what training saw.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from labels import DEEPFASHION_MM, IGNORE_INDEX, PALETTE, DataError, LabelSet

FITS = ("short_side", "long_side")   # what image_size measures: strips and "whole" the short side, letterboxes the long
# PIL reports broken files with any of these, depending on the format and where decoding stops.
_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


# ---------------------------------------------------------------------------------- reading files

def open_mask(path: Path, labels: LabelSet = DEEPFASHION_MM, unlabelled_255: bool = False) -> Image.Image:
    """A label-id PNG, decoded and checked -> mode L or P image whose pixel values are the label ids
    (a P image's palette is never applied); every value must be an id of `labels` (or, with
    unlabelled_255, IGNORE_INDEX for an unannotated pixel). Cropping and resizing it in PIL before
    converting to an array is what keeps a training sample cheap."""
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
    count = len(labels)
    if img.getextrema()[1] >= count:  # the stored values (for P: palette indices)
        ids = np.asarray(img)
        bad = (ids >= count) & ~((ids == IGNORE_INDEX) & unlabelled_255)
        if bad.any():
            values, counts = np.unique(ids[bad], return_counts=True)
            found = ", ".join(f"{v} ({c} px)" for v, c in zip(values.tolist(), counts.tolist()))
            raise DataError(f"{path}: label values outside label set {labels.name} (ids 0-{count - 1}"
                            f"{', 255 = unlabelled' if unlabelled_255 else ''}): {found}")
    return img


def read_mask(path: Path, labels: LabelSet = DEEPFASHION_MM, unlabelled_255: bool = False) -> np.ndarray:
    """A label-id PNG -> (H, W) uint8 ids, checked as `open_mask` does."""
    return np.asarray(open_mask(path, labels, unlabelled_255))


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


def prepare_whole_image(image: Image.Image | DecodedImage, image_size: int, size_multiple: int,
                        fit: str = "short_side") -> tuple[torch.Tensor, tuple[int, int]]:
    """An RGB photo -> ((3, Hp, Wp) uint8 pixels, (h, w) before padding), as "whole" mode and predict.py
    feed it: scaled by image_size / min(W, H) (fit "short_side": the strips' training scale, so objects
    keep their trained size; "long_side": image_size / max(W, H), the letterbox training scale) and
    padded bottom/right to a multiple of size_multiple (`normalize` turns the padding into 0, the mean
    colour). A DecodedImage from read_image may be draft-decoded; its scale is honoured."""
    if fit not in FITS:
        raise ValueError(f"fit must be one of {FITS}, got {fit!r}")
    decoded = image if isinstance(image, DecodedImage) else DecodedImage(image, image.size, 1.0)
    width, height = decoded.original_size
    zoom = image_size / (min(width, height) if fit == "short_side" else max(width, height))
    out_w, out_h = max(1, round(width * zoom)), max(1, round(height * zoom))
    box = (0, 0, width * decoded.scale, height * decoded.scale)  # the whole photo, in decoded pixels
    resized = decoded.image.resize((out_w, out_h), Image.Resampling.BILINEAR, box=box)
    pixels = torch.from_numpy(np.array(resized)).permute(2, 0, 1)  # (3, h, w) uint8
    pad = (0, -out_w % size_multiple, 0, -out_h % size_multiple)
    return F.pad(pixels, pad), (out_h, out_w)  # (3, Hp, Wp)


# ---------------------------------------------------------------------------------- batches on the device

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


def colorize(mask: torch.Tensor, palette: np.ndarray = PALETTE) -> torch.Tensor:
    """(..., H, W) label ids -> (..., 3, H, W) uint8 `palette` colours ((L, 3), a LabelSet's `colours`) for
    viewing; IGNORE_INDEX (and any other id outside the table) is drawn black."""
    count = len(palette)
    table = torch.cat([torch.from_numpy(np.asarray(palette, np.uint8)), torch.zeros(1, 3, dtype=torch.uint8)])
    ids = torch.where((mask >= 0) & (mask < count), mask, count).long()
    return table.to(mask.device)[ids].movedim(-1, -3)
