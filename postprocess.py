"""Boundary post-processing: network probabilities -> one cohesive label per garment.

Argmax per pixel can split one garment between two labels (pants near the hem look a bit like a
skirt). The published fix uses the boundary head to cut the image into regions and labels each
region as a whole:

1. threshold the boundary probability and close small gaps (dilate, then erode);
2. the 4-connected non-boundary regions of at least `min_region_size` pixels become masks;
3. each mask takes the label with the largest summed probability over its pixels;
4. leftover pixels (boundary, specks) that are sure of a label keep it (rings and earrings are too
   small to form a mask), the rest join the touching mask with the closest mean probability vector,
   with a tolerance that grows each round until every pixel has a label.

Pure numpy/scipy on one image, vectorised over pixels. Use:

    labels = postprocess(probs, boundary)   # (L, H, W) softmax, (H, W) sigmoid -> (H, W) uint8
    regions, count = boundary_regions(boundary, PostprocessConfig())   # step 2, for pictures
"""

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# 4-connected regions: a 1-pixel diagonal boundary line then still separates its two sides.
_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)
# The closing uses the 3x3 square: with the cross, one iteration cannot bridge a 2-pixel gap.
_EIGHT_CONNECTED = ndimage.generate_binary_structure(2, 2)


@dataclass(frozen=True)
class PostprocessConfig:
    """Every threshold of the boundary post-processing in one place."""

    # Missed boundaries merge garments (catastrophic) while extra ones cost little, and the 20x
    # boundary BCE inflates probabilities: its optimum is p = 20q / (20q + 1 - q) for a true boundary
    # frequency q, so 0.5 already means q ~ 5% (0.7 -> q ~ 10%, the gappy T of the paper's figure).
    boundary_threshold: float = 0.5
    # Dilate/erode steps of the closing; n steps bridge gaps of up to 2n pixels. 0 = no closing.
    closing_iterations: int = 1
    # Pixels; smaller non-boundary regions are specks and are treated as leftover pixels.
    min_region_size: int = 16
    # A leftover pixel this sure of a label keeps it (jewellery too small to form a region survives).
    promote_threshold: float = 0.9
    # L1 distance (at most 2) between a pixel's probabilities and a region's mean accepted in round 0:
    # a pixel that only moves a quarter of its mass to other labels joins without doubt.
    initial_tolerance: float = 0.25
    # The tolerance is multiplied by this each round: 0.25, 0.5, 1, then 2 admits any touching pixel.
    tolerance_growth: float = 2.0
    # Rounds of growth at most; the last one accepts any distance, so every pixel gets a label.
    max_rounds: int = 8

    def __post_init__(self) -> None:
        problems = []
        if not 0.0 <= self.boundary_threshold <= 1.0:
            problems.append(f"boundary_threshold must be in [0, 1], got {self.boundary_threshold}")
        if self.closing_iterations < 0:
            problems.append(f"closing_iterations must be >= 0, got {self.closing_iterations}")
        if self.min_region_size < 1:
            problems.append(f"min_region_size must be >= 1, got {self.min_region_size}")
        if not 0.0 < self.promote_threshold <= 1.0:
            problems.append(f"promote_threshold must be in (0, 1], got {self.promote_threshold}")
        if self.initial_tolerance <= 0.0:
            problems.append(f"initial_tolerance must be > 0, got {self.initial_tolerance}")
        if self.tolerance_growth <= 1.0:
            problems.append(f"tolerance_growth must be > 1, got {self.tolerance_growth}")
        if self.max_rounds < 1:
            problems.append(f"max_rounds must be >= 1, got {self.max_rounds}")
        if problems:
            raise ValueError("invalid PostprocessConfig: " + "; ".join(problems))


def boundary_regions(boundary: np.ndarray, config: PostprocessConfig = PostprocessConfig()
                     ) -> tuple[np.ndarray, int]:
    """(H, W) boundary probabilities -> ((H, W) int32 region ids, region count).

    Ids run 1..count over the 4-connected non-boundary regions of at least `min_region_size`
    pixels; 0 marks leftover pixels (boundary after closing, and specks).
    """
    edge = boundary >= config.boundary_threshold  # (H, W) bool
    if config.closing_iterations > 0:  # scipy reads iterations=0 as "repeat until nothing changes"
        edge = ndimage.binary_dilation(edge, _EIGHT_CONNECTED, config.closing_iterations)
        # Outside counts as boundary while eroding, or a line reaching the image edge would lose its
        # end pixels and the regions on both sides would meet around it.
        edge = ndimage.binary_erosion(edge, _EIGHT_CONNECTED, config.closing_iterations,
                                      border_value=1)
    ids, count = ndimage.label(~edge, _FOUR_CONNECTED)  # (H, W) int32
    sizes = np.bincount(ids.ravel(), minlength=count + 1)  # (count + 1,)
    keep = sizes >= config.min_region_size
    keep[0] = False
    renumber = np.zeros(count + 1, dtype=np.int32)  # old id -> new id, specks -> 0
    renumber[keep] = np.arange(1, keep.sum() + 1, dtype=np.int32)
    return renumber[ids], int(keep.sum())


def postprocess(probs: np.ndarray, boundary: np.ndarray,
                config: PostprocessConfig = PostprocessConfig()) -> np.ndarray:
    """(L, H, W) softmax probabilities and (H, W) boundary probabilities -> (H, W) uint8 labels.

    Every pixel is labelled and nothing is cropped. Without any region (everything boundary), the
    result is the per-pixel argmax.
    """
    _check_inputs(probs, boundary)
    num_labels, height, width = probs.shape
    flat = probs.reshape(num_labels, -1)  # (L, HW)
    regions, count = boundary_regions(boundary, config)
    if count == 0:
        return probs.argmax(axis=0).astype(np.uint8)
    ids = regions.ravel()  # (HW,) view of our own fresh array, so updating it in place is safe
    count = _promote_sure_pixels(ids, flat, count, config.promote_threshold)

    # Pooling the probability mass, not the argmax votes, lets confident pixels outweigh unsure ones.
    mass = np.stack([np.bincount(ids, weights=p, minlength=count + 1) for p in flat])  # (L, R+1)
    region_label = mass.argmax(axis=0).astype(np.uint8)  # (R+1,); entry 0 unused: growth fills all
    sizes = np.bincount(ids, minlength=count + 1)  # (R+1,)
    means = mass / np.maximum(sizes, 1)  # (L, R+1) mean probability vector per region

    _grow(ids, flat, means, (height, width), config)
    return region_label[ids].reshape(height, width)


def _check_inputs(probs: np.ndarray, boundary: np.ndarray) -> None:
    if not isinstance(probs, np.ndarray) or probs.ndim != 3:
        raise ValueError(f"probs must be an (L, H, W) numpy array, got "
                         f"{getattr(probs, 'shape', type(probs).__name__)}")
    if not isinstance(boundary, np.ndarray) or boundary.ndim != 2:
        raise ValueError(f"boundary must be an (H, W) numpy array, got "
                         f"{getattr(boundary, 'shape', type(boundary).__name__)}")
    if not np.issubdtype(probs.dtype, np.floating) or not np.issubdtype(boundary.dtype, np.floating):
        raise ValueError(f"probs and boundary must be floating point (probabilities), got "
                         f"{probs.dtype} and {boundary.dtype}")
    if probs.shape[1:] != boundary.shape:
        raise ValueError(f"probs is {probs.shape[1]}x{probs.shape[2]} (H x W) but boundary is "
                         f"{boundary.shape[0]}x{boundary.shape[1]}")
    if not 1 <= probs.shape[0] <= 256:
        raise ValueError(f"probs has {probs.shape[0]} labels; a uint8 label map holds 1 to 256")
    if probs.size == 0:
        raise ValueError(f"empty image: probs has shape {probs.shape}")


def _promote_sure_pixels(ids: np.ndarray, flat: np.ndarray, count: int, threshold: float) -> int:
    """Turns leftover pixels at least `threshold` sure of a label into one new region per label.

    ids: (HW,) region ids, updated in place; flat: (L, HW) probabilities. Returns the new count.
    One region per label rather than per blob: its pixels all share the label and the mean only
    guides which leftover neighbours join it.
    """
    leftover = np.flatnonzero(ids == 0)  # (K,)
    pixel_probs = flat[:, leftover]  # (L, K)
    top = pixel_probs.argmax(axis=0)  # (K,)
    sure = pixel_probs[top, np.arange(leftover.size)] >= threshold  # (K,)
    labels, new_ids = np.unique(top[sure], return_inverse=True)
    ids[leftover[sure]] = count + 1 + new_ids
    return count + labels.size


def _grow(ids: np.ndarray, flat: np.ndarray, means: np.ndarray, shape: tuple[int, int],
          config: PostprocessConfig) -> None:
    """Gives every leftover pixel (id 0) the id of the touching region closest to it, in place.

    ids: (HW,) with at least one region; flat: (L, HW) probabilities; means: (L, R+1).
    Each round first spreads as far as its tolerance allows, one layer of pixels at a time, so a
    band fills from the side it resembles before a later, laxer round lets the other side in.
    """
    height, width = shape
    for round_ in range(config.max_rounds):
        tolerance = config.initial_tolerance * config.tolerance_growth ** round_
        if round_ == config.max_rounds - 1:
            tolerance = np.inf  # the guarantee: the image is 4-connected, so growth reaches every pixel
        candidates = np.flatnonzero(ids == 0)  # (K,)
        if candidates.size == 0:
            return
        while candidates.size:
            region, distance = _closest_touching_region(candidates, ids, flat, means, height, width)
            accept = (region > 0) & (distance <= tolerance)  # no region touching: distance inf
            joined = candidates[accept]
            ids[joined] = region[accept]
            # Only pixels next to a newly assigned one can have a new option in this round.
            around = _neighbours(joined, height, width).ravel()  # (4 * J,)
            around = around[around >= 0]
            candidates = np.unique(around[ids[around] == 0])


def _closest_touching_region(candidates: np.ndarray, ids: np.ndarray, flat: np.ndarray,
                             means: np.ndarray, height: int, width: int
                             ) -> tuple[np.ndarray, np.ndarray]:
    """(K,) flat pixel indices -> (K,) id of the closest touching region (0: none touches), and
    the (K,) L1 distance between the pixel's probabilities and that region's mean (inf: none)."""
    neighbours = _neighbours(candidates, height, width)  # (4, K), -1 outside the image
    touching = np.where(neighbours >= 0, ids[neighbours], 0)  # (4, K) region ids, 0 = none
    pixel_probs = flat[:, candidates]  # (L, K)
    distance = np.full(touching.shape, np.inf)  # (4, K)
    for direction in range(4):
        has = touching[direction] > 0
        gap = pixel_probs[:, has] - means[:, touching[direction, has]]  # (L, K')
        distance[direction, has] = np.abs(gap).sum(axis=0)
    best = distance.argmin(axis=0)  # (K,) ties go to the first direction: deterministic
    column = np.arange(candidates.size)
    return touching[best, column], distance[best, column]


def _neighbours(indices: np.ndarray, height: int, width: int) -> np.ndarray:
    """(K,) flat pixel indices -> (4, K) flat indices of the up/down/left/right neighbours, -1 where
    that neighbour would be outside the image."""
    row, col = np.divmod(indices, width)
    stacked = np.stack([indices - width, indices + width, indices - 1, indices + 1])  # (4, K)
    inside = np.stack([row > 0, row < height - 1, col > 0, col < width - 1])  # (4, K)
    return np.where(inside, stacked, -1)
