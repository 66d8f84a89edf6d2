"""Tests for postprocess.py: the published method against the released code's outputs
(tests/fixtures/postprocess/), and both methods on hand-built maps.
Run: `python -m pytest tests/test_postprocess.py -q`."""
from collections import deque
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

import postprocess
from postprocess import PublishedConfig, RegionsConfig, boundary_regions, published, regions

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "postprocess"
CASES = sorted(p.stem for p in FIXTURES.glob("*.npz"))
BACKGROUND, TOP, SKIRT, PANTS, SKIN, RING = 0, 1, 3, 5, 15, 16
NUM_LABELS = 24
# The bar for "the released output": pixels of each case that must agree.
AGREEMENT = 0.999


def _fixture(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probs, boundary) as float32, the released output (H-2, W-2)."""
    with np.load(FIXTURES / f"{name}.npz") as f:
        return f["probs"].astype(np.float32), f["boundary"].astype(np.float32), f["published"]


# ---- the published method: the released outputs ---------------------------------------------------

def test_the_fixtures_are_all_there():
    assert len(CASES) == 16


@pytest.mark.parametrize("name", CASES)
def test_published_reproduces_the_released_output(name: str):
    probs, boundary, expected = _fixture(name)
    labels = published(probs, boundary)
    assert labels.shape == boundary.shape and labels.dtype == np.uint8
    agreement = (labels[1:-1, 1:-1] == expected).mean()
    assert agreement >= AGREEMENT, f"{name}: {agreement:.4%} of the inner pixels agree"
    assert np.array_equal(labels[1:-1, 1:-1], expected)  # measured: every pixel of every case


def _tie_case(first: tuple[int, int], second: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, tuple]:
    """All boundary, so every pixel is dust: background pixels sure of it (promoted), one pixel sure of
    top in direction `first` of the centre, one sure of skirt in direction `second`, and a centre at
    exactly the same L1 distance (1.25) from both. The released order decides for the first."""
    probs = np.zeros((NUM_LABELS, 11, 11), np.float32)
    probs[BACKGROUND], probs[SKIN] = 0.9, 0.1
    probs[:, 5, 5] = 0.0
    probs[[TOP, SKIRT, SKIN], 5, 5] = 0.375, 0.375, 0.25
    for (dy, dx), label in ((first, TOP), (second, SKIRT)):
        probs[:, 5 + dy, 5 + dx] = 0.0
        probs[label, 5 + dy, 5 + dx] = 1.0
    return probs, np.ones((11, 11), np.float32), (slice(5, 6), slice(5, 6), TOP)


def _threshold_case() -> tuple[np.ndarray, np.ndarray, tuple]:
    """Top left of a 2-pixel band, pants right of it, the band's boundary exactly at the threshold:
    not boundary (strict >), so one region, which the larger top takes."""
    probs = np.full((NUM_LABELS, 32, 32), 0.1 / 23, np.float32)
    probs[TOP, :, :20] = probs[PANTS, :, 20:] = 0.9
    boundary = np.zeros((32, 32), np.float32)
    boundary[:, 19:21] = np.float32(PublishedConfig().threshold)
    return probs, boundary, (slice(8, 24), slice(8, 24), TOP)


BELOW, ABOVE, RIGHT, LEFT = (1, 0), (-1, 0), (0, 1), (0, -1)
HAND_CASES = {"threshold": _threshold_case,
              **{f"tie {a} before {b}": (lambda a=a, b=b: _tie_case(a, b))
                 for a, b in [(BELOW, ABOVE), (BELOW, RIGHT), (BELOW, LEFT), (ABOVE, RIGHT), (ABOVE, LEFT),
                              (RIGHT, LEFT)]}}


def _failing_cases() -> list[str]:
    """Fixture and hand-built cases whose published output misses the expected one on more than
    0.1% of the compared pixels."""
    failing = []
    for name in CASES:
        probs, boundary, expected = _fixture(name)
        if (published(probs, boundary)[1:-1, 1:-1] == expected).mean() < AGREEMENT:
            failing.append(name)
    for name, make in HAND_CASES.items():
        probs, boundary, (rows, cols, label) = make()
        if (published(probs, boundary)[rows, cols] == label).mean() < AGREEMENT:
            failing.append(name)
    return failing


class _StatisticsFrozen(postprocess._Statistics):
    """The regions' statistics with no region gathering them: joins leave them as they were."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.growing = 0


MUTATIONS = {
    "threshold >= instead of >": ("_wall_pixels", lambda boundary, threshold: boundary >= np.float32(threshold)),
    "neighbours above before below": ("_NEIGHBOURS", (ABOVE, BELOW, RIGHT, LEFT)),
    "neighbours left before right": ("_NEIGHBOURS", (BELOW, ABOVE, LEFT, RIGHT)),
    "neighbours right and left first": ("_NEIGHBOURS", (RIGHT, LEFT, BELOW, ABOVE)),
    "queue taken from its first element": ("_FIRST_CYCLE_REVERSED", False),
    "statistics not updated on join": ("_Statistics", _StatisticsFrozen),
}


def test_every_hand_built_case_holds():
    assert _failing_cases() == []


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_a_changed_step_fails_some_case(mutation: str, monkeypatch):
    name, value = MUTATIONS[mutation]
    monkeypatch.setattr(postprocess, name, value)
    assert _failing_cases(), f"no case notices: {mutation}"


# ---- the published method: any input ------------------------------------------------------------

def _random_maps(rng: np.random.Generator, height: int, width: int, num_labels: int = NUM_LABELS
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Blocks of random labels with noisy probabilities, and a blurred, noisy boundary map along the
    block edges: on 50-80 pixels, 20-60 regions and over a thousand dust pixels."""
    block = int(rng.integers(12, 24))
    coarse = rng.integers(0, num_labels, (height // block + 1, width // block + 1))
    labels = np.kron(coarse, np.ones((block, block), int))[:height, :width]
    logits = 2.0 * (np.arange(num_labels)[:, None, None] == labels) + rng.normal(0, 1, (num_labels, height, width))
    probs = np.exp(logits - logits.max(axis=0))
    probs = (probs / probs.sum(axis=0)).astype(np.float32)
    edge = np.zeros((height, width))
    edge[:-1] += labels[1:] != labels[:-1]
    edge[:, :-1] += labels[:, 1:] != labels[:, :-1]
    boundary = ndimage.gaussian_filter(edge, 1.5) * 2 + rng.normal(0, 0.05, edge.shape)
    return probs, np.clip(boundary, 0, 1).astype(np.float32)


@pytest.mark.parametrize("shape", [(37, 53), (64, 20), (3, 40), (1, 7), (2, 2), (3, 3), (5, 4)])
def test_published_labels_any_shape(shape: tuple[int, int]):
    probs, boundary = _random_maps(np.random.default_rng(sum(shape)), *shape)
    labels = published(probs, boundary)
    assert labels.shape == shape and labels.dtype == np.uint8 and labels.max() < NUM_LABELS


def test_published_ring_takes_the_nearest_inner_label():
    probs, boundary = _random_maps(np.random.default_rng(5), 30, 41)
    labels = published(probs, boundary)
    assert np.array_equal(labels, np.pad(labels[1:-1, 1:-1], 1, mode="edge"))


def test_published_without_any_boundary_gives_the_middle_one_label():
    probs = np.full((NUM_LABELS, 30, 40), 0.02, np.float32)
    probs[TOP, :15], probs[PANTS, 15:] = 0.52, 0.54  # argmax: top above row 15, pants below
    labels = published(probs, np.zeros((30, 40), np.float32))
    # The frame's closed corners make small regions of their own; the rest is one region, and its
    # summed probabilities favour pants (15 rows of 0.54 against 15 of 0.52).
    assert np.all(labels[6:24, 6:34] == PANTS)


def test_published_all_boundary():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(NUM_LABELS), size=(12, 15)).transpose(2, 0, 1).astype(np.float32)
    everywhere = np.ones((12, 15), np.float32)
    # No region and no pixel sure enough to be promoted: the released code would never end.
    np.testing.assert_array_equal(published(probs, everywhere), probs.argmax(axis=0))
    probs[:, 6, 7] = 0.0
    probs[SKIN, 6, 7] = 1.0  # one promoted pixel: everything grows from it
    assert np.all(published(probs, everywhere) == SKIN)


def test_published_one_label():
    probs, boundary = _random_maps(np.random.default_rng(2), 20, 25, num_labels=1)
    assert np.all(published(probs, boundary) == 0)
    assert np.all(published(probs, np.ones_like(boundary)) == 0)


def test_published_refuses_what_is_not_probabilities():
    probs, boundary = _random_maps(np.random.default_rng(3), 10, 10)
    probs[0, 4, 4] = np.nan
    with pytest.raises(ValueError, match="probabilities in"):
        published(probs, boundary)


@pytest.mark.parametrize("field, value", [("threshold", 1.0), ("expand", -1), ("promote", 0.0),
                                          ("join", 0.0), ("impatience", 1.0)])
def test_bad_published_config_raises(field: str, value: float):
    with pytest.raises(ValueError, match=field):
        PublishedConfig(**{field: value})


def _released_rule(probs: np.ndarray, walls: np.ndarray) -> np.ndarray:
    """Steps 6-10 of the released post-processing read literally, pixel by pixel (slow): the inner
    (h, w) labels from (L, h, w) float32 probabilities and (h, w) walls."""
    h, w = walls.shape
    p = probs.transpose(1, 2, 0)  # (h, w, L)
    region = -np.ones((h, w), int)
    sizes = []
    for y in range(h):
        for x in range(w):
            if region[y, x] >= 0:
                continue
            region[y, x], todo, size = len(sizes), deque([(y, x)]), 1
            while todo:
                a, b = todo.popleft()
                for yy, xx in ((a + 1, b), (a - 1, b), (a, b + 1), (a, b - 1)):
                    if 0 <= yy < h and 0 <= xx < w and region[yy, xx] < 0 and not (walls[a, b] and walls[yy, xx]):
                        region[yy, xx], size = len(sizes), size + 1
                        todo.append((yy, xx))
            sizes.append(size)
    keep = np.array(sizes) > 10
    ids = np.where(keep, np.cumsum(keep) - 1, -1)[region]
    count = int(keep.sum())
    stats = np.concatenate([np.zeros((count, p.shape[2]), np.float32), np.eye(p.shape[2], dtype=np.float32)])
    queue = []
    for y in range(h):
        for x in range(w):
            if ids[y, x] >= 0:
                stats[ids[y, x]] += p[y, x]
            elif p[y, x].max() >= 0.5:
                ids[y, x] = count + p[y, x].argmax()
            else:
                queue.append((y, x, 1.0))
    if count == 0 and len(queue) == h * w:
        return p.argmax(axis=2)
    while queue:
        again = []
        for y, x, patience in reversed(queue):
            best, nearest = -1, np.inf
            for yy, xx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= yy < h and 0 <= xx < w and ids[yy, xx] >= 0:
                    s = stats[ids[yy, xx]]
                    distance = np.abs(p[y, x] - s / s.sum()).sum()
                    if distance < nearest:
                        best, nearest = ids[yy, xx], distance
            if best >= 0 and nearest < 0.05 * patience:
                ids[y, x] = best
                if best < count:
                    stats[best] += p[y, x]
            else:
                again.append((y, x, patience * 1.5 if best >= 0 else patience))
        queue = again
    return stats.argmax(axis=1)[ids]


@pytest.mark.parametrize("seed", range(8))
def test_published_follows_the_released_rule_read_literally(seed: int):
    rng = np.random.default_rng(seed)
    height, width = rng.integers(50, 80, 2)
    probs, boundary = _random_maps(rng, height, width)
    walls = postprocess.published_walls(boundary[1:-1, 1:-1])
    expected = _released_rule(probs[:, 1:-1, 1:-1], walls)
    np.testing.assert_array_equal(published(probs, boundary)[1:-1, 1:-1], expected)


def test_walls_by_hand():
    boundary = np.zeros((20, 20), np.float32)
    boundary[9:11, 3:17] = 0.5  # a 2-pixel line: it stays
    boundary[4, 3:17] = 0.5  # a 1-pixel line: no 2x2 square holds it
    walls = postprocess.published_walls(boundary)
    assert walls[9:11, 3:17].all() and not walls[4, 6:14].any()
    assert walls[0].all() and walls[-1].all() and walls[:, 0].all() and walls[:, -1].all()


@pytest.mark.parametrize("lengths", [[40, 1, 70, 3, 50, 36], [3000] + [1] * 2000 + [20] * 30])
def test_running_sums_add_one_row_at_a_time(lengths: list[int]):
    rng = np.random.default_rng(4)
    segment = np.repeat(np.arange(len(lengths)), lengths)  # the second: several groups of lengths
    values = (rng.random((segment.size, 24)) * rng.choice([1e-3, 1.0, 1e3], (segment.size, 1))).astype(np.float32)
    start = (rng.random((len(lengths), 24)) * 100).astype(np.float32)
    expected, running = np.empty_like(values), start.copy()
    for i, s in enumerate(segment):
        running[s] = running[s] + values[i]
        expected[i] = running[s]
    np.testing.assert_array_equal(postprocess._running_sums(start, values, segment), expected)


@pytest.mark.parametrize("later", [1, -1])
def test_statistics_at_a_visit(later: int):
    """A cycle's pending joins, visited in raster order (later = 1) or its reverse: the means a pixel
    sees at its visit are those of the joins before it added one at a time in float32 (the released
    `stats += p`), and lie within the drift from the cycle's start that `_unsure` relies on."""
    rng = np.random.default_rng(7)
    n, count = 300, 4
    probs = rng.dirichlet(np.full(NUM_LABELS, 0.3), n).astype(np.float32)
    region = np.where(rng.random(n) < 0.4, rng.integers(0, count, n), -1)
    statistics = postprocess._Statistics(probs, region, count)
    joins = rng.permutation(np.flatnonzero(region < 0))[:120]
    into = rng.integers(0, count + NUM_LABELS, joins.size)  # promotion regions too: they never change
    statistics.pend_joins(joins, into, later)
    sums, seen = statistics.sums.copy(), np.empty((n, count + NUM_LABELS, NUM_LABELS), np.float32)
    joins_into = dict(zip(joins.tolist(), into.tolist()))
    for pixel in range(n)[::later]:  # the visit order
        seen[pixel] = postprocess._normalised(sums)
        if joins_into.get(pixel, count) < count:
            sums[joins_into[pixel]] += probs[pixel]
    r, at = np.repeat(np.arange(count + NUM_LABELS), n), np.tile(np.arange(n), count + NUM_LABELS)
    means = statistics.means_at_visit(r, at)
    np.testing.assert_array_equal(means, seen[at, r])
    moved = np.abs(means - statistics.means[r]).sum(axis=1)
    drift = statistics.drift(r, at)
    assert (moved <= drift).all() and (drift[moved == 0] == 0).any() and (drift[moved > 0] < 0.5).all()
    statistics.add_joins()
    np.testing.assert_array_equal(statistics.sums, sums)


# ---- choosing a method ------------------------------------------------------------------------------

def test_run_by_name():
    probs, boundary = _random_maps(np.random.default_rng(6), 20, 30)
    assert set(postprocess.METHODS) == {"published", "regions"}
    np.testing.assert_array_equal(postprocess.run("published", probs, boundary), published(probs, boundary))
    np.testing.assert_array_equal(postprocess.run("regions", probs, boundary), regions(probs, boundary))
    np.testing.assert_array_equal(postprocess.run("none", probs, boundary), probs.argmax(axis=0))
    with pytest.raises(ValueError, match="unknown post-processing 'nope'"):
        postprocess.run("nope", probs, boundary)


# ---- the regions method -------------------------------------------------------------------------

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
    assert np.all(regions(probs, boundary)[inside] == PANTS)


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
    _, count = boundary_regions(boundary, RegionsConfig())
    assert count == 2
    labels = regions(probs, boundary)
    assert np.all(labels[:12] == TOP) and np.all(labels[13:] == PANTS)


def test_without_closing_the_gap_merges_the_garments():
    probs, boundary = _gap_scene()
    config = RegionsConfig(closing_iterations=0)
    _, count = boundary_regions(boundary, config)
    assert count == 1
    assert np.all(regions(probs, boundary, config) == TOP)  # the larger top swallows the pants


def test_a_small_confident_object_is_kept():
    probs = _probs(20, 20, skin=0.99)
    probs[:, 8:10, 8:10] = _probs(2, 2, ring=0.95, skin=0.05)
    probs[:, 7:11, 7:11][:, [0, 0, 0, 0, 3, 3, 3, 3, 1, 2, 1, 2],
                         [0, 1, 2, 3, 0, 1, 2, 3, 0, 0, 3, 3]] = _probs(1, 12, skin=0.7, ring=0.3)[:, 0]
    boundary = np.zeros((20, 20), dtype=np.float32)
    boundary[7:11, 7:11] = 1.0  # jewellery draws dense boundary over itself and its rim
    expected = np.full((20, 20), SKIN, dtype=np.uint8)
    expected[8:10, 8:10] = RING

    np.testing.assert_array_equal(regions(probs, boundary), expected)
    # Without promotion the ring is too small to be a region and would join the skin.
    no_promotion = RegionsConfig(promote_threshold=1.0)
    assert np.all(regions(probs, boundary, no_promotion) == SKIN)


def test_a_perfect_prediction_is_unchanged():
    labels = np.zeros((40, 32), dtype=np.uint8)
    labels[5:30, 8:24] = TOP
    labels[20:40, 6:26] = PANTS
    labels[8:12, 10:13] = 20  # a necklace smaller than min_region_size
    labels[2:10, 2:5] = SKIN
    labels[3, 3] = RING
    labels[30:40, 15:17] = BACKGROUND  # a 2-pixel slit: all boundary, no region of its own
    out = regions(_one_hot(labels), _label_edges(labels))
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

    labels = regions(probs, boundary)
    assert np.all(labels[:, :16] == TOP)
    assert np.all(labels[:, 16:] == PANTS)
    # With a single round it is also the last, which takes any distance: both sides grow at once
    # and meet in the middle of the band.
    labels = regions(probs, boundary, RegionsConfig(max_rounds=1))
    assert np.all(labels[:, :13] == TOP)
    assert np.all(labels[:, 13:] == PANTS)


def test_all_boundary_falls_back_to_argmax():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(NUM_LABELS), size=(12, 15)).transpose(2, 0, 1).astype(np.float32)
    boundary = np.ones((12, 15), dtype=np.float32)
    assert boundary_regions(boundary, RegionsConfig())[1] == 0
    np.testing.assert_array_equal(regions(probs, boundary), probs.argmax(axis=0))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_noisy_input_gives_a_full_valid_label_map(seed: int):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(NUM_LABELS, 0.3), size=(37, 53)).transpose(2, 0, 1)
    boundary = rng.random((37, 53))
    labels = regions(probs, boundary)
    assert labels.shape == (37, 53) and labels.dtype == np.uint8
    assert labels.max() < NUM_LABELS


def test_region_ids_drop_specks():
    boundary = np.zeros((10, 10), dtype=np.float32)
    boundary[:, 4] = boundary[0:3, 5:] = boundary[3:, 7] = 1.0  # regions of 40, 14 and 14 pixels
    ids, count = boundary_regions(boundary, RegionsConfig(closing_iterations=0, min_region_size=14))
    assert ids.dtype == np.int32 and ids.shape == (10, 10)
    assert count == 3 and sorted(np.bincount(ids.ravel())[1:]) == [14, 14, 40]
    ids, count = boundary_regions(boundary, RegionsConfig(closing_iterations=0, min_region_size=15))
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
        regions(probs, boundary)


@pytest.mark.parametrize("field, value", [
    ("boundary_threshold", 1.5), ("closing_iterations", -1), ("min_region_size", 0),
    ("promote_threshold", 0.0), ("initial_tolerance", 0.0), ("tolerance_growth", 1.0),
    ("max_rounds", 0),
])
def test_bad_config_raises(field: str, value: float):
    with pytest.raises(ValueError, match=field):
        RegionsConfig(**{field: value})
