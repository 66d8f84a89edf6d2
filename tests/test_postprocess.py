"""Tests for postprocess.py on hand-built probability maps. Run: `python -m pytest tests/test_postprocess.py -q`."""

import numpy as np
import pytest

from postprocess import PostprocessConfig, boundary_regions, postprocess

BACKGROUND, TOP, SKIRT, PANTS, SKIN, RING = 0, 1, 3, 5, 15, 16
NUM_LABELS = 24


def _probs(height: int, width: int, **mix: float) -> np.ndarray:
    """(24, H, W) float32, every pixel the same mix given as label=probability (rest spread evenly)."""
    ids = {"background": BACKGROUND, "top": TOP, "skirt": SKIRT, "pants": PANTS, "skin": SKIN,
           "ring": RING}
    rest = (1.0 - sum(mix.values())) / (NUM_LABELS - len(mix))
    vector = np.full(NUM_LABELS, rest, dtype=np.float32)
    for name, p in mix.items():
        vector[ids[name]] = p
    return np.broadcast_to(vector[:, None, None], (NUM_LABELS, height, width)).copy()


def _one_hot(labels: np.ndarray) -> np.ndarray:
    """(H, W) label ids -> (24, H, W) float32 one-hot."""
    return (np.arange(NUM_LABELS)[:, None, None] == labels[None]).astype(np.float32)


def _label_edges(labels: np.ndarray) -> np.ndarray:
    """(H, W) ids -> (H, W) float32, 1 where a 4-neighbour has another label (the training target)."""
    edge = np.zeros(labels.shape, dtype=bool)
    vertical = labels[1:] != labels[:-1]
    edge[1:] |= vertical
    edge[:-1] |= vertical
    horizontal = labels[:, 1:] != labels[:, :-1]
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    return edge.astype(np.float32)


def test_a_mixed_region_gets_one_label():
    probs = _probs(20, 20, background=0.9, pants=0.05, skirt=0.05)
    boundary = np.zeros((20, 20), dtype=np.float32)
    boundary[4, 4:16] = boundary[15, 4:16] = boundary[4:16, 4] = boundary[4:16, 15] = 1.0
    inside = (slice(5, 15), slice(5, 15))  # 10x10 pixels, rows alternate 3 pants-ish : 2 skirt-ish
    mixed = np.repeat((np.arange(10) % 5 < 3)[:, None], 10, axis=1)  # (10, 10) True = pants-ish
    probs[:, inside[0], inside[1]] = 0.0
    probs[PANTS, inside[0], inside[1]] = np.where(mixed, 0.55, 0.45)
    probs[SKIRT, inside[0], inside[1]] = np.where(mixed, 0.45, 0.55)

    assert (probs.argmax(axis=0)[inside] == SKIRT).mean() == pytest.approx(0.4)  # argmax splits it
    assert np.all(postprocess(probs, boundary)[inside] == PANTS)


def _gap_scene() -> tuple[np.ndarray, np.ndarray]:
    """Top (rows 0-11) over pants (rows 13-23), a boundary line on row 12 with a 2-pixel gap."""
    probs = _probs(24, 24, top=0.8, pants=0.1)
    probs[:, 13:] = _probs(11, 24, top=0.1, pants=0.8)
    probs[:, 12] = _probs(1, 24, top=0.45, pants=0.45)[:, 0]
    boundary = np.zeros((24, 24), dtype=np.float32)
    boundary[12] = 1.0
    boundary[12, 10:12] = 0.0
    return probs, boundary


def test_closing_keeps_a_two_pixel_gap_shut():
    probs, boundary = _gap_scene()
    _, count = boundary_regions(boundary, PostprocessConfig())
    assert count == 2
    labels = postprocess(probs, boundary)
    assert np.all(labels[:12] == TOP) and np.all(labels[13:] == PANTS)


def test_without_closing_the_gap_merges_the_garments():
    probs, boundary = _gap_scene()
    config = PostprocessConfig(closing_iterations=0)
    _, count = boundary_regions(boundary, config)
    assert count == 1
    assert np.all(postprocess(probs, boundary, config) == TOP)  # the larger top swallows the pants


def test_a_small_confident_object_is_kept():
    probs = _probs(20, 20, skin=0.99)
    probs[:, 8:10, 8:10] = _probs(2, 2, ring=0.95, skin=0.05)
    probs[:, 7:11, 7:11][:, [0, 0, 0, 0, 3, 3, 3, 3, 1, 2, 1, 2],
                         [0, 1, 2, 3, 0, 1, 2, 3, 0, 0, 3, 3]] = _probs(1, 12, skin=0.7, ring=0.3)[:, 0]
    boundary = np.zeros((20, 20), dtype=np.float32)
    boundary[7:11, 7:11] = 1.0  # jewellery draws dense boundary over itself and its rim
    expected = np.full((20, 20), SKIN, dtype=np.uint8)
    expected[8:10, 8:10] = RING

    np.testing.assert_array_equal(postprocess(probs, boundary), expected)
    # Without promotion the ring is too small to be a region and would join the skin.
    no_promotion = PostprocessConfig(promote_threshold=1.0)
    assert np.all(postprocess(probs, boundary, no_promotion) == SKIN)


def test_a_perfect_prediction_is_unchanged():
    labels = np.zeros((40, 32), dtype=np.uint8)
    labels[5:30, 8:24] = TOP
    labels[20:40, 6:26] = PANTS
    labels[8:12, 10:13] = 20  # a necklace smaller than min_region_size
    labels[2:10, 2:5] = SKIN
    labels[3, 3] = RING
    labels[30:40, 15:17] = BACKGROUND  # a 2-pixel slit: all boundary, no region of its own
    out = postprocess(_one_hot(labels), _label_edges(labels))
    np.testing.assert_array_equal(out, labels)


def test_leftover_pixels_join_the_region_they_resemble():
    # A 6-pixel boundary band between top (left) and pants (right). Its pixels lean to pants by
    # argmax (0.45 vs 0.4) but their whole vector is closer to the top region's mean (L1 0.9 vs 1.1).
    probs = np.zeros((NUM_LABELS, 16, 26), dtype=np.float32)
    probs[TOP, :, :10], probs[SKIN, :, :10] = 0.7, 0.3
    probs[PANTS, :, 16:] = 1.0
    probs[TOP, :, 10:16], probs[PANTS, :, 10:16], probs[SKIN, :, 10:16] = 0.4, 0.45, 0.15
    boundary = np.zeros((16, 26), dtype=np.float32)
    boundary[:, 10:16] = 1.0

    labels = postprocess(probs, boundary)
    assert np.all(labels[:, :16] == TOP)
    assert np.all(labels[:, 16:] == PANTS)
    # With a single round it is also the last, which takes any distance: both sides grow at once
    # and meet in the middle of the band.
    labels = postprocess(probs, boundary, PostprocessConfig(max_rounds=1))
    assert np.all(labels[:, :13] == TOP)
    assert np.all(labels[:, 13:] == PANTS)


def test_all_boundary_falls_back_to_argmax():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(NUM_LABELS), size=(12, 15)).transpose(2, 0, 1).astype(np.float32)
    boundary = np.ones((12, 15), dtype=np.float32)
    assert boundary_regions(boundary, PostprocessConfig())[1] == 0
    np.testing.assert_array_equal(postprocess(probs, boundary), probs.argmax(axis=0))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_noisy_input_gives_a_full_valid_label_map(seed: int):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(NUM_LABELS, 0.3), size=(37, 53)).transpose(2, 0, 1)
    boundary = rng.random((37, 53))
    labels = postprocess(probs, boundary)
    assert labels.shape == (37, 53) and labels.dtype == np.uint8
    assert labels.max() < NUM_LABELS


def test_region_ids_drop_specks():
    boundary = np.zeros((10, 10), dtype=np.float32)
    boundary[:, 4] = boundary[0:3, 5:] = boundary[3:, 7] = 1.0  # regions of 40, 14 and 14 pixels
    ids, count = boundary_regions(boundary, PostprocessConfig(closing_iterations=0, min_region_size=14))
    assert ids.dtype == np.int32 and ids.shape == (10, 10)
    assert count == 3 and sorted(np.bincount(ids.ravel())[1:]) == [14, 14, 40]
    ids, count = boundary_regions(boundary, PostprocessConfig(closing_iterations=0, min_region_size=15))
    assert count == 1 and np.all(ids[:, :4] == 1) and np.all(ids[:, 4:] == 0)


@pytest.mark.parametrize("probs, boundary, message", [
    (np.zeros((4, 4), np.float32), np.zeros((4, 4), np.float32), "probs must be an"),
    (np.zeros((2, 4, 4), np.float32), np.zeros((1, 4, 4), np.float32), "boundary must be an"),
    (np.zeros((2, 4, 4), np.float32), np.zeros((4, 5), np.float32), "4x4 .* boundary is 4x5"),
    (np.zeros((2, 4, 4), np.int64), np.zeros((4, 4), np.float32), "floating point"),
    (np.zeros((257, 2, 2), np.float32), np.zeros((2, 2), np.float32), "257 labels"),
    (np.zeros((2, 0, 4), np.float32), np.zeros((0, 4), np.float32), "empty image"),
])
def test_bad_inputs_raise(probs: np.ndarray, boundary: np.ndarray, message: str):
    with pytest.raises(ValueError, match=message):
        postprocess(probs, boundary)


@pytest.mark.parametrize("field, value", [
    ("boundary_threshold", 1.5), ("closing_iterations", -1), ("min_region_size", 0),
    ("promote_threshold", 0.0), ("initial_tolerance", 0.0), ("tolerance_growth", 1.0),
    ("max_rounds", 0),
])
def test_bad_config_raises(field: str, value: float):
    with pytest.raises(ValueError, match=field):
        PostprocessConfig(**{field: value})
