"""Training losses for clothing segmentation, as the released training script computes them:
class-weighted cross-entropy on the label mask (PyTorch's weighted mean) plus a weighted binary
cross-entropy on the boundary map over the inner pixels; and an optional soft Dice term.

`segmentation_loss` combines them as configured by `LossConfig`; run.py builds its loss flags
from that dataclass and fills in the class weights of the model's label set with `resolve_class_weights`
(the published ones for DeepFashion-MultiModal, 1 for other sets, overridable per label by name).
Tests: `python -m pytest tests/test_losses.py -q`.
"""

import dataclasses
import re
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from labels import IGNORE_INDEX, LABELS, NUM_LABELS


# The published weights: small accessories (eyeglass, neckwear, ring, wrist wearing, necklace,
# earrings, tie) cover few pixels and would otherwise be drowned by background and skin.
DEFAULT_CLASS_WEIGHTS: tuple[float, ...] = (
    1.0,  # 0 background
    1.0,  # 1 top
    1.0,  # 2 outer
    1.0,  # 3 skirt
    1.0,  # 4 dress
    1.0,  # 5 pants
    1.0,  # 6 leggings
    1.0,  # 7 headwear
    5.0,  # 8 eyeglass
    5.0,  # 9 neckwear
    2.0,  # 10 belt
    1.0,  # 11 footwear
    1.0,  # 12 bag
    1.0,  # 13 hair
    1.0,  # 14 face
    1.0,  # 15 skin
    5.0,  # 16 ring
    5.0,  # 17 wrist wearing
    2.0,  # 18 socks
    2.0,  # 19 gloves
    5.0,  # 20 necklace
    1.0,  # 21 rompers
    5.0,  # 22 earrings
    5.0,  # 23 tie
)
assert len(DEFAULT_CLASS_WEIGHTS) == NUM_LABELS
_LABEL_WEIGHT = re.compile(r"(.+)=\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*")


@dataclass
class LossConfig:
    """Loss weights; run.py builds a command-line flag from each field and its help."""
    class_weights: tuple[float, ...] = field(default=(), metadata={
        "help": "per-label cross-entropy weights, one per label in label-id order (default: the label set's: "
                "the published ones for DeepFashion-MultiModal's 24, 1 for any other set)"})
    label_weights: tuple[str, ...] = field(default=(), metadata={
        "help": "NAME=WEIGHT for single labels, over the weights above, e.g. --label_weights belt=3 "
                "'wrist wearing=5'"})
    ce_mean: str = field(default="weights", metadata={
        "help": "'weights': the weighted cross-entropy divided by the pixels' summed weights (PyTorch's "
                "weighted mean, as released); 'pixels': divided by the pixel count, which makes gradient "
                "accumulation give exactly the large-batch gradient", "choices": ["weights", "pixels"]})
    boundary_weight: float = field(default=1.0, metadata={
        "help": "coupling of the boundary term (published: 1)"})
    boundary_pos_weight: float = field(default=5.0, metadata={
        "help": "a missed boundary pixel costs this many times a false one (released code: 5; the paper's "
                "text says 20)"})
    dice_weight: float = field(default=0.0, metadata={
        "help": "coupling of the optional soft Dice term; 0 turns it off"})

    def __post_init__(self):
        bad = [w for w in self.label_weights if not _LABEL_WEIGHT.fullmatch(w)]
        if bad:
            raise ValueError(f"label_weights take NAME=WEIGHT (a number), got {', '.join(map(repr, bad))}")
        if self.ce_mean not in ("weights", "pixels"):
            raise ValueError(f"ce_mean must be 'weights' or 'pixels', got {self.ce_mean!r}")


def resolve_class_weights(config: LossConfig, labels: tuple[str, ...], label_set: str = "") -> LossConfig:
    """config with class_weights filled in for a model whose labels are `labels` (names in id order):
    the given weights (one per label) or the label set's defaults (the published ones for
    DeepFashion-MultiModal's 24, else 1), then each label_weights NAME=WEIGHT. ValueError names what
    does not fit."""
    what = f"label set {label_set}" if label_set else f"the model's {len(labels)} labels"
    if config.class_weights and len(config.class_weights) != len(labels):
        raise ValueError(f"class_weights needs {len(labels)} values (one per label of {what}), "
                         f"got {len(config.class_weights)}")
    weights = list(config.class_weights or (DEFAULT_CLASS_WEIGHTS if tuple(labels) == LABELS else
                                            (1.0,) * len(labels)))
    plain = [n.strip().lower().replace("_", " ") for n in labels]
    for item in config.label_weights:
        name, value = _LABEL_WEIGHT.fullmatch(item).groups()
        key = name.strip().lower().replace("_", " ")
        if key not in plain:
            raise ValueError(f"label_weights: {name!r} is not a label of {what}; its labels: {', '.join(labels)}")
        weights[plain.index(key)] = float(value)
    return dataclasses.replace(config, class_weights=tuple(weights), label_weights=())


def weighted_cross_entropy(
    logits: Tensor,
    target: Tensor,
    class_weights: Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    mean: str = "weights",
) -> Tensor:
    """Class-weighted cross-entropy averaged over valid pixels.

    logits: (B, C, H, W); target: (B, H, W) int64 label ids or `ignore_index`;
    class_weights: (C,) or None for all ones. mean "weights" divides by the summed weights of the
    valid pixels (F.cross_entropy(weight=...)'s mean, the released loss), "pixels" by their count.
    Returns a scalar.
    """
    valid = target != ignore_index  # (B, H, W)
    # (B, H, W), 0 where ignored
    nll = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")
    if class_weights is None:
        return nll.sum() / valid.sum().clamp(min=1)
    # Gather rather than F.cross_entropy(weight=...): no dtype clash with autocast logits.
    pixel_weights = class_weights.to(nll.dtype)[torch.where(valid, target, 0)] * valid  # (B, H, W)
    # "pixels": the loss of a batch is then the plain mean of its pixels' losses, so with equal-size
    # micro-batches gradient accumulation reproduces the large-batch gradient exactly; "weights"
    # normalises each micro-batch by its own weights. The clamps make a batch with no valid pixel
    # give a zero that backward still runs through, without a GPU sync.
    divisor = pixel_weights.sum().clamp(min=1e-12) if mean == "weights" else valid.sum().clamp(min=1)
    return (nll * pixel_weights).sum() / divisor


def inner_pixels(valid: Tensor) -> Tensor:
    """(B, H, W) bool -> the same without the outer ring of pixels, where the boundary target lacks
    neighbours (the released loss scores the inner (H-2) x (W-2) pixels)."""
    inner = torch.zeros_like(valid)
    inner[:, 1:-1, 1:-1] = valid[:, 1:-1, 1:-1]
    return inner


def boundary_bce(
    logits: Tensor,
    target: Tensor,
    pos_weight: float = 5.0,
    valid: Tensor | None = None,
) -> Tensor:
    """Binary cross-entropy of boundary logits, a boundary pixel weighted `pos_weight` times.

    logits, target: (B, H, W), target float in {0, 1}; valid: bool (B, H, W) or None for all.
    Returns the mean over valid pixels (a scalar).
    """
    pos = torch.as_tensor(pos_weight, device=logits.device, dtype=logits.dtype)
    # Boundaries are a few percent of pixels: without pos_weight, "no boundary anywhere" is cheap.
    bce = F.binary_cross_entropy_with_logits(
        logits, target, pos_weight=pos, reduction="none"
    )  # (B, H, W)
    if valid is None:
        return bce.mean()
    return (bce * valid).sum() / valid.sum().clamp(min=1)


def dice_loss(
    logits: Tensor,
    target: Tensor,
    ignore_index: int = IGNORE_INDEX,
    eps: float = 1.0,
) -> Tensor:
    """Soft multi-class Dice loss over the whole batch, averaged over classes present in target.

    logits: (B, C, H, W); target: (B, H, W) int64 label ids or `ignore_index`. Returns a scalar.
    """
    num_classes = logits.shape[1]
    valid = target != ignore_index  # (B, H, W)
    safe_target = torch.where(valid, target, 0)  # (B, H, W), any id will do where ignored
    # float32: the sums below run over every pixel of the batch.
    probs = logits.float().softmax(dim=1) * valid.unsqueeze(1)  # (B, C, H, W), 0 where ignored
    # Probability of the true class per pixel, summed per class: avoids a (B, C, H, W) one-hot.
    p_true = probs.gather(1, safe_target.unsqueeze(1))  # (B, 1, H, W)
    ids = safe_target.flatten()  # (BHW,)
    intersection = probs.new_zeros(num_classes).index_add(0, ids, p_true.flatten())  # (C,)
    target_sum = probs.new_zeros(num_classes).index_add(0, ids, valid.flatten().to(probs.dtype))
    prob_sum = probs.sum(dim=(0, 2, 3))  # (C,), as is target_sum
    dice = (2 * intersection + eps) / (prob_sum + target_sum + eps)  # (C,)
    # Only classes present count: absent ones would score ~1 for predicting nothing and dilute
    # the rare ones that matter. Masking instead of indexing avoids a GPU sync; with no class
    # present (all pixels ignored) the loss is 0.
    present = (target_sum > 0).to(probs.dtype)  # (C,)
    return (present * (1 - dice)).sum() / present.sum().clamp(min=1)


def segmentation_loss(
    mask_logits: Tensor,
    boundary_logits: Tensor,
    mask: Tensor,
    boundary: Tensor,
    config: LossConfig,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Total training loss and its detached parts ("ce", "boundary", "dice" if used, "total").

    mask_logits: (B, C, H, W); boundary_logits: (B, H, W); mask: (B, H, W) int64 with
    IGNORE_INDEX where unlabelled; boundary: (B, H, W) in {0, 1}. Pixels where mask is
    IGNORE_INDEX count in no term; the boundary term leaves out the outer ring of pixels. Empty
    config.class_weights weigh every label 1 (`resolve_class_weights` fills in a label set's).
    """
    valid = mask != IGNORE_INDEX  # (B, H, W)
    class_weights = torch.as_tensor(
        config.class_weights, device=mask_logits.device, dtype=torch.float32
    ) if config.class_weights else None  # (C,)
    ce = weighted_cross_entropy(mask_logits, mask, class_weights, mean=config.ce_mean)
    bce = boundary_bce(
        boundary_logits, boundary.to(boundary_logits.dtype), config.boundary_pos_weight, inner_pixels(valid)
    )
    total = ce + config.boundary_weight * bce
    parts = {"ce": ce.detach(), "boundary": bce.detach()}
    if config.dice_weight > 0:
        dice = dice_loss(mask_logits, mask)
        total = total + config.dice_weight * dice
        parts["dice"] = dice.detach()
    parts["total"] = total.detach()
    return total, parts
