"""Tests for losses.py against hand-computed values. Run: `python -m pytest tests/test_losses.py -q`."""

import math

import pytest
import torch
import torch.nn.functional as F

from losses import (
    DEFAULT_CLASS_WEIGHTS,
    IGNORE_INDEX,
    LossConfig,
    boundary_bce,
    dice_loss,
    inner_pixels,
    resolve_class_weights,
    segmentation_loss,
    weighted_cross_entropy,
)
from labels import LABELS, load_label_set


def _lse(*xs: float) -> float:
    return math.log(sum(math.exp(x) for x in xs))


def _pixels(*rows: list[float]) -> torch.Tensor:
    """Per-pixel logit rows -> (1, C, 1, N) logits."""
    return torch.tensor(rows, dtype=torch.float64).T.reshape(1, len(rows[0]), 1, len(rows))


# --- weighted cross-entropy ---------------------------------------------------------------------


def test_weighted_ce_by_hand() -> None:
    logits = _pixels([1.0, 2.0, 0.0], [0.5, -1.0, 2.0])  # (1, 3, 1, 2)
    target = torch.tensor([[[1, 2]]])
    weights = torch.tensor([1.0, 2.0, 5.0], dtype=torch.float64)
    nll0 = _lse(1.0, 2.0, 0.0) - 2.0
    nll1 = _lse(0.5, -1.0, 2.0) - 2.0
    # released: torch's weighted mean, divided by the weights 2 + 5
    got = weighted_cross_entropy(logits, target, weights)
    assert got.item() == pytest.approx((2.0 * nll0 + 5.0 * nll1) / 7, rel=1e-12)
    assert got.item() == pytest.approx(F.cross_entropy(logits, target, weight=weights).item(), rel=1e-12)
    # "pixels": divided by the 2 pixels
    got = weighted_cross_entropy(logits, target, weights, mean="pixels")
    assert got.item() == pytest.approx((2.0 * nll0 + 5.0 * nll1) / 2, rel=1e-12)


def test_weighted_ce_excludes_ignored_pixels() -> None:
    logits = _pixels([1.0, 2.0, 0.0], [0.5, -1.0, 2.0], [9.0, -9.0, 3.0])  # third pixel ignored
    target = torch.tensor([[[1, 2, IGNORE_INDEX]]])
    weights = torch.tensor([1.0, 2.0, 5.0], dtype=torch.float64)
    summed = 2.0 * (_lse(1.0, 2.0, 0.0) - 2.0) + 5.0 * (_lse(0.5, -1.0, 2.0) - 2.0)
    assert weighted_cross_entropy(logits, target, weights).item() == pytest.approx(summed / 7, rel=1e-12)
    assert weighted_cross_entropy(logits, target, weights, mean="pixels").item() == pytest.approx(
        summed / 2, rel=1e-12)
    expected = F.cross_entropy(logits, target, weight=weights, ignore_index=IGNORE_INDEX)
    assert weighted_cross_entropy(logits, target, weights).item() == pytest.approx(expected.item(), rel=1e-12)


def test_weighted_ce_unit_weights_match_torch() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 4, 6, generator=g)
    target = torch.randint(0, 5, (2, 4, 6), generator=g)
    target[0, :2] = IGNORE_INDEX
    expected = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(weighted_cross_entropy(logits, target, torch.ones(5)), expected)
    torch.testing.assert_close(weighted_cross_entropy(logits, target), expected)


def test_weighted_ce_no_valid_pixel_is_zero_with_gradient() -> None:
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    target = torch.full((1, 2, 2), IGNORE_INDEX)
    for mean in ("weights", "pixels"):
        logits.grad = None
        loss = weighted_cross_entropy(logits, target, torch.tensor([1.0, 2.0, 5.0]), mean=mean)
        loss.backward()
        assert loss.item() == 0.0
        assert logits.grad is not None and torch.all(logits.grad == 0)


def test_weighted_ce_gradient_accumulation_matches_large_batch_with_the_pixel_mean() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64)
    weights = torch.tensor([1.0, 2.0, 5.0], dtype=torch.float64)
    # Non-uniform labels: the first half is mostly the heavy class, the second the light one,
    # so the two micro-batches have very different weight sums.
    target = torch.zeros(4, 5, 5, dtype=torch.long)
    target[:2] = 2
    target[:2, 0] = 1
    target[2:, :, 0] = 1

    def loss_and_grad(loss_fn, idx: slice) -> tuple[torch.Tensor, torch.Tensor]:
        x = logits.clone().requires_grad_(True)
        loss = loss_fn(x[idx], target[idx])
        loss.backward()
        return loss.detach(), x.grad

    ours = lambda x, t: weighted_cross_entropy(x, t, weights, mean="pixels")  # noqa: E731
    full, full_grad = loss_and_grad(ours, slice(0, 4))
    a, a_grad = loss_and_grad(ours, slice(0, 2))
    b, b_grad = loss_and_grad(ours, slice(2, 4))
    torch.testing.assert_close(full, (a + b) / 2)
    torch.testing.assert_close(full_grad, (a_grad + b_grad) / 2)

    theirs = lambda x, t: weighted_cross_entropy(x, t, weights)  # noqa: E731  (the released mean)
    full, full_grad = loss_and_grad(theirs, slice(0, 4))
    a, a_grad = loss_and_grad(theirs, slice(0, 2))
    b, b_grad = loss_and_grad(theirs, slice(2, 4))
    assert not torch.allclose(full, (a + b) / 2)
    assert not torch.allclose(full_grad, (a_grad + b_grad) / 2)


# --- boundary BCE -------------------------------------------------------------------------------


def test_boundary_bce_missed_boundary_costs_pos_weight_times_a_false_one() -> None:
    softplus2 = math.log(1 + math.exp(2.0))  # -log(sigmoid(-2)) = -log(1 - sigmoid(2))
    logits = torch.tensor([[[-2.0]]], dtype=torch.float64)
    missed = boundary_bce(logits, torch.ones(1, 1, 1, dtype=torch.float64), pos_weight=20.0)
    false = boundary_bce(-logits, torch.zeros(1, 1, 1, dtype=torch.float64), pos_weight=20.0)
    assert missed.item() == pytest.approx(20.0 * softplus2, rel=1e-12)
    assert false.item() == pytest.approx(softplus2, rel=1e-12)
    assert missed.item() == pytest.approx(20.0 * false.item(), rel=1e-12)


def test_boundary_bce_respects_valid_mask() -> None:
    logits = torch.tensor([[[-2.0, 2.0, 50.0, -50.0]]], dtype=torch.float64)
    target = torch.tensor([[[1.0, 0.0, 0.0, 1.0]]], dtype=torch.float64)
    valid = torch.tensor([[[True, True, False, False]]])  # the two huge errors are ignored
    softplus2 = math.log(1 + math.exp(2.0))
    expected = (20.0 * softplus2 + softplus2) / 2
    assert boundary_bce(logits, target, 20.0, valid).item() == pytest.approx(expected, rel=1e-12)
    assert boundary_bce(logits, target, 20.0).item() > 100  # without the mask they dominate


# --- Dice ---------------------------------------------------------------------------------------


def test_dice_perfect_prediction_is_zero() -> None:
    g = torch.Generator().manual_seed(2)
    target = torch.randint(0, 4, (2, 8, 8), generator=g)
    logits = 100.0 * F.one_hot(target, 6).permute(0, 3, 1, 2).float()  # classes 4, 5 absent
    target[0, 0] = IGNORE_INDEX  # its (confident, right or wrong) logits must not matter
    assert dice_loss(logits, target).item() < 1e-6


def test_dice_by_hand() -> None:
    ln2 = math.log(2.0)
    # softmax: pixel 0 -> (1/2, 1/4, 1/4), target 0; pixel 1 -> (1/4, 1/2, 1/4), target 1;
    # pixel 2 ignored. Class 2 is absent and must not count.
    logits = _pixels([ln2, 0.0, 0.0], [0.0, ln2, 0.0], [0.0, 0.0, 9.0])
    target = torch.tensor([[[0, 1, IGNORE_INDEX]]])
    # class 0: intersection 1/2, sum(p) 3/4, sum(t) 1; class 1 the same by symmetry.
    dice_per_class = (2 * 0.5 + 1.0) / (0.75 + 1.0 + 1.0)
    expected = 1 - dice_per_class
    assert dice_loss(logits, target, eps=1.0).item() == pytest.approx(expected, rel=1e-6)


# --- segmentation_loss --------------------------------------------------------------------------


def _batch(seed: int = 3) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    mask_logits = torch.randn(2, 24, 6, 6, generator=g, requires_grad=True)
    boundary_logits = torch.randn(2, 6, 6, generator=g, requires_grad=True)
    mask = torch.randint(0, 24, (2, 6, 6), generator=g)
    mask[1, :3] = IGNORE_INDEX
    boundary = (torch.rand(2, 6, 6, generator=g) < 0.2).float()
    return mask_logits, boundary_logits, mask, boundary


def test_segmentation_loss_combines_parts_with_configured_weights() -> None:
    mask_logits, boundary_logits, mask, boundary = _batch()
    config = resolve_class_weights(LossConfig(boundary_weight=0.5, boundary_pos_weight=10.0, dice_weight=0.3),
                                   LABELS)
    total, parts = segmentation_loss(mask_logits, boundary_logits, mask, boundary, config)

    ce = weighted_cross_entropy(mask_logits, mask, torch.tensor(DEFAULT_CLASS_WEIGHTS))
    bce = boundary_bce(boundary_logits, boundary, 10.0, inner_pixels(mask != IGNORE_INDEX))
    dice = dice_loss(mask_logits, mask)
    torch.testing.assert_close(parts["ce"], ce.detach())
    torch.testing.assert_close(parts["boundary"], bce.detach())
    torch.testing.assert_close(parts["dice"], dice.detach())
    torch.testing.assert_close(total, ce + 0.5 * bce + 0.3 * dice)
    torch.testing.assert_close(parts["total"], total.detach())
    assert all(not p.requires_grad for p in parts.values())


def test_segmentation_loss_without_dice_and_backward() -> None:
    mask_logits, boundary_logits, mask, boundary = _batch()
    total, parts = segmentation_loss(mask_logits, boundary_logits, mask, boundary, LossConfig())
    assert set(parts) == {"ce", "boundary", "total"}
    torch.testing.assert_close(total, parts["ce"] + parts["boundary"])
    total.backward()
    for grad in (mask_logits.grad, boundary_logits.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_segmentation_loss_ignores_unlabelled_pixels_in_every_term() -> None:
    mask_logits, boundary_logits, mask, boundary = _batch()
    config = LossConfig(dice_weight=1.0)
    total, _ = segmentation_loss(mask_logits, boundary_logits, mask, boundary, config)
    ignored = mask == IGNORE_INDEX  # (B, H, W)
    # Scramble every input at the ignored pixels: the loss must not move.
    mask_logits2 = torch.where(ignored.unsqueeze(1), 30.0 * torch.randn_like(mask_logits), mask_logits)
    boundary_logits2 = torch.where(ignored, -30.0, boundary_logits)
    boundary2 = torch.where(ignored, 1.0, boundary)
    total2, _ = segmentation_loss(mask_logits2, boundary_logits2, mask, boundary2, config)
    torch.testing.assert_close(total2, total)


def test_the_boundary_term_leaves_out_the_outer_ring() -> None:
    mask_logits, boundary_logits, mask, boundary = _batch()
    config = LossConfig(ce_mean="pixels")
    _, parts = segmentation_loss(mask_logits, boundary_logits, mask, boundary, config)
    ring = torch.ones_like(boundary, dtype=torch.bool)
    ring[:, 1:-1, 1:-1] = False
    _, parts2 = segmentation_loss(mask_logits, torch.where(ring, 40.0, boundary_logits), mask, boundary, config)
    torch.testing.assert_close(parts2["boundary"], parts["boundary"])
    inner = inner_pixels(mask != IGNORE_INDEX)
    assert inner.sum() < (mask != IGNORE_INDEX).sum() and not inner[ring].any()


def test_released_loss_defaults() -> None:
    assert (LossConfig().ce_mean, LossConfig().boundary_pos_weight, LossConfig().boundary_weight) == (
        "weights", 5.0, 1.0)


def test_default_class_weights_match_published() -> None:
    assert len(DEFAULT_CLASS_WEIGHTS) == 24
    assert resolve_class_weights(LossConfig(), LABELS).class_weights == DEFAULT_CLASS_WEIGHTS
    fives = {8, 9, 16, 17, 20, 22, 23}  # eyeglass, neckwear, ring, wrist wearing, necklace, earrings, tie
    twos = {10, 18, 19}  # belt, socks, gloves
    for label_id, weight in enumerate(DEFAULT_CLASS_WEIGHTS):
        assert weight == (5.0 if label_id in fives else 2.0 if label_id in twos else 1.0), label_id


def test_class_weights_follow_the_label_set_and_take_overrides_by_name() -> None:
    lip = load_label_set("lip").labels
    assert resolve_class_weights(LossConfig(), lip, "lip").class_weights == (1.0,) * 20
    config = LossConfig(label_weights=("left-arm=3", "HAT = 0.5"))
    weights = resolve_class_weights(config, lip, "lip").class_weights
    assert weights[lip.index("left-arm")] == 3.0 and weights[lip.index("hat")] == 0.5 and sum(weights) == 21.5
    published = resolve_class_weights(LossConfig(label_weights=("wrist_wearing=1",)), LABELS).class_weights
    assert published[17] == 1.0 and published[8] == 5.0                # the rest stay the published ones
    given = resolve_class_weights(LossConfig(class_weights=(2.0,) * 20, label_weights=("face=7",)), lip)
    assert given.class_weights[13] == 7.0 and given.class_weights[0] == 2.0 and given.label_weights == ()
    with pytest.raises(ValueError, match="class_weights needs 20 values .*lip.*got 24"):
        resolve_class_weights(LossConfig(class_weights=DEFAULT_CLASS_WEIGHTS), lip, "lip")
    with pytest.raises(ValueError, match="'top' is not a label of label set lip; its labels: background, hat"):
        resolve_class_weights(LossConfig(label_weights=("top=2",)), lip, "lip")
    with pytest.raises(ValueError, match="NAME=WEIGHT"):
        LossConfig(label_weights=("top",))


def test_empty_class_weights_weigh_every_label_one() -> None:
    mask_logits, boundary_logits, mask, boundary = _batch()
    _, parts = segmentation_loss(mask_logits, boundary_logits, mask, boundary, LossConfig())
    torch.testing.assert_close(parts["ce"], weighted_cross_entropy(mask_logits, mask).detach())
