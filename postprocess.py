"""Boundary post-processing: network probabilities -> one cohesive label per garment.

Argmax per pixel can split one garment between two labels (pants near the hem look a bit like a
skirt). Both methods here use the boundary head to cut the image into regions and give each region
one label, and both are pure numpy/scipy on one image:

- `published` (the default): the released code's post-processing, step for step (see `published`);
  it reproduces the released output on every pixel of the 16 cases in tests/fixtures/postprocess/.
- `regions`: this project's own method: boundary >= 0.5, a 3x3 closing, 4-connected regions of at
  least 16 pixels, sure leftovers kept, the rest joining the touching region with the closest mean
  under a tolerance that doubles each round; it scores higher against the fixtures' ground truth.

    labels = postprocess.run("published", probs, boundary)   # (L, H, W) softmax, (H, W) sigmoid -> (H, W) uint8
    labels = postprocess.published(probs, boundary, PublishedConfig(threshold=0.2))
    labels = postprocess.regions(probs, boundary, RegionsConfig())
    regions, count = boundary_regions(boundary, RegionsConfig())   # the regions method's step 2, for pictures
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse import csgraph

# 4-connected regions: a 1-pixel diagonal boundary line then still separates its two sides.
_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)


def _check_inputs(probs: np.ndarray, boundary: np.ndarray) -> None:
    for name, array, ndim, dims in (("probs", probs, 3, "(L, H, W)"), ("boundary", boundary, 2, "(H, W)")):
        if not isinstance(array, np.ndarray) or array.ndim != ndim:
            raise ValueError(f"{name} must be an {dims} numpy array, got "
                             f"{getattr(array, 'shape', type(array).__name__)}")
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


def _check_fields(config: object, **rules: tuple[bool, str]) -> None:
    """One ValueError naming every field of the config whose rule, given as (holds, "must be ..."), fails."""
    problems = [f"{field} must be {rule}, got {getattr(config, field)}" for field, (holds, rule) in rules.items()
                if not holds]
    if problems:
        raise ValueError(f"invalid {type(config).__name__}: " + "; ".join(problems))


# ---- the published method ---------------------------------------------------------------------

# Floods of at most this many pixels (walls included) are dust; fixed in the released code.
_DUST_PIXELS = 10
# The order in which the released code looks at a pixel's neighbours, as (dy, dx): below, above,
# right, left. Among equally close regions the first one wins.
_NEIGHBOURS = ((1, 0), (-1, 0), (0, 1), (0, -1))
# The released queue starts in raster order and each cycle takes it from its last element.
_FIRST_CYCLE_REVERSED = True
# A decision is taken on statistics of the cycle's start only if its margin exceeds their possible
# drift by this much: float32 rounding moves a distance by about 1e-6.
_SLACK = 1e-4


@dataclass(frozen=True)
class PublishedConfig:
    """The released post-processing's settings, with its defaults."""

    # Boundary pixels: boundary probability strictly above this.
    threshold: float = 0.1
    # Gap closing: dilate by an 11x11 square (2 * expand + 1), erode by the diamond |dy| + |dx| <= 5.
    expand: int = 5
    # A dust pixel whose top probability reaches this joins that label's promotion region at once.
    promote: float = 0.5
    # A queued pixel joins the nearest touching region if their L1 distance is below join x patience.
    join: float = 0.05
    # A queued pixel's patience grows by this factor in each cycle that a region touched it.
    impatience: float = 1.5

    def __post_init__(self) -> None:
        _check_fields(self, threshold=(0.0 <= self.threshold < 1.0, "in [0, 1)"), expand=(self.expand >= 0, ">= 0"),
                      promote=(0.0 < self.promote <= 1.0, "in (0, 1]"), join=(self.join > 0.0, "> 0"),
                      impatience=(self.impatience > 1.0, "> 1"))


def published(probs: np.ndarray, boundary: np.ndarray, config: PublishedConfig = PublishedConfig()
              ) -> np.ndarray:
    """The released post-processing: (L, H, W) softmax probabilities and (H, W) boundary
    probabilities -> (H, W) uint8 labels.

    As released, on the inner (H-2) x (W-2) grid, both inputs read as float32:
    1-5. walls (`published_walls`): boundary > threshold, kept where a 2x2 square of them holds it,
         plus the grid's frame; closed (11x11 square dilation, diamond erosion) and hollowed;
    6.   floods (`published_floods`): areas between 2-pixel walls; more than 10 pixels make a region,
         the rest is dust;
    7.   statistics (`_Statistics`): each region's summed probabilities; one more "promotion" region
         per label, whose statistics are that label's one-hot vector;
    8.   promotion (`_promote_sure_dust`): dust pixels at least `promote` sure of a label join its
         promotion region, the rest queue;
    9.   the patient join queue (`_join_queue`): in cycles over the queue (its last element first), a
         pixel looks at its neighbours below, above, right and left, takes the region with the
         smallest L1 distance between its probabilities and the region's normalised statistics, and
         joins it if that is below join x patience, adding itself to the statistics (not of
         promotion regions); otherwise it queues again, its patience x impatience if some region
         touched it. Here each cycle is settled in vectorised rounds that take the released
         one-pixel-at-a-time decisions (why: `_CycleDecisions`);
    10.  labels: every pixel takes the label with the largest statistic of its region.
    Beyond the released code: any H x W (it ran square images only), the outer ring labelled like
    its nearest inner pixel (it had no output there), and the per-pixel argmax where there is no
    region and no promoted pixel (it would never finish) or the image is under 3 pixels high or wide.
    probs must lie in [0, 1] (NaN would never join a region).
    """
    _check_inputs(probs, boundary)
    if not (probs.min() >= 0 and probs.max() <= 1 + 1e-3):  # NaN fails both
        raise ValueError(f"probs must be probabilities in [0, 1], got values from {probs.min()} to {probs.max()}")
    num_labels, height, width = probs.shape
    if height < 3 or width < 3:
        return probs.argmax(axis=0).astype(np.uint8)
    probs = probs.astype(np.float32, copy=False)
    h, w = height - 2, width - 2
    pixel_probs = np.ascontiguousarray(probs[:, 1:-1, 1:-1].transpose(1, 2, 0)).reshape(h * w, num_labels)
    walls = published_walls(boundary.astype(np.float32, copy=False)[1:-1, 1:-1], config)
    region, count = published_floods(walls)
    region = region.ravel()  # (hw,) region id, -1 for dust
    statistics = _Statistics(pixel_probs, region, count)
    if not _promote_sure_dust(pixel_probs, region, count, config.promote) and count == 0:
        return probs.argmax(axis=0).astype(np.uint8)
    region = _join_queue(region, statistics, (h, w), config)
    labels = statistics.sums.argmax(axis=1).astype(np.uint8)[region].reshape(h, w)
    return np.pad(labels, 1, mode="edge")


def published_walls(boundary: np.ndarray, config: PublishedConfig = PublishedConfig()) -> np.ndarray:
    """(h, w) boundary probabilities of the inner grid -> (h, w) bool walls (steps 1-5)."""
    edge = _wall_pixels(boundary, config.threshold)
    square = edge[:-1, :-1] & edge[1:, :-1] & edge[:-1, 1:] & edge[1:, 1:]  # (h-1, w-1), by top-left
    walls = np.zeros_like(edge)  # a boundary pixel stays if one 2x2 square of them holds it
    walls[:-1, :-1] |= square
    walls[1:, :-1] |= square
    walls[:-1, 1:] |= square
    walls[1:, 1:] |= square
    walls[0], walls[-1], walls[:, 0], walls[:, -1] = True, True, True, True
    size = 2 * config.expand + 1
    grown = ndimage.maximum_filter1d(walls.view(np.uint8), size, axis=0, mode="constant")
    grown = ndimage.maximum_filter1d(grown, size, axis=1, mode="constant").view(bool)
    # The released erosion reads beyond the grid, where the grown frame has set everything.
    closed = _diamond_eroded(grown, config.expand)
    return (closed & ~_diamond_eroded(closed, 2)) | walls  # hollowed: the 12-pixel ring all set


def _wall_pixels(boundary: np.ndarray, threshold: float) -> np.ndarray:
    return boundary > np.float32(threshold)


def _diamond_eroded(mask: np.ndarray, radius: int) -> np.ndarray:
    """Pixels whose whole diamond |dy| + |dx| <= radius is set, outside the grid counting as set."""
    distance = ndimage.distance_transform_cdt(mask, metric="taxicab")  # to the nearest unset pixel
    return (distance > radius) | (distance < 0)  # -1: no unset pixel at all


def published_floods(walls: np.ndarray) -> tuple[np.ndarray, int]:
    """(h, w) bool walls -> ((h, w) int region ids, -1 for dust; region count) (step 6).

    The released flood fill claims, from each unclaimed pixel in raster order, everything connected
    to it through 4-neighbour steps that are not wall to wall. Those connect symmetrically, so each
    flood is a connected component whatever the order: the 4-connected open areas, merged where a
    wall pixel touches several, each with the wall pixels next to it (a lone wall pixel: its own)."""
    ids, count = ndimage.label(~walls, _FOUR_CONNECTED)  # open areas 1..count, 0 on walls
    padded = np.pad(ids, 1)
    wy, wx = np.nonzero(walls)
    around = np.stack([padded[wy + 1 + dy, wx + 1 + dx] for dy, dx in _NEIGHBOURS])  # (4, K)
    first = around.max(axis=0)  # one open area next to the wall pixel, 0 if none
    link = (around > 0) & (around != first)
    pairs = sparse.coo_matrix((np.ones(link.sum(), np.int8), (np.broadcast_to(first, around.shape)[link],
                                                              around[link])), shape=(count + 1,) * 2)
    _, merged = csgraph.connected_components(pairs, directed=False)  # (count + 1,) flood per area
    flood = merged[ids]
    flood[wy, wx] = np.where(first > 0, merged[first], -1)
    sizes = np.bincount(flood[flood >= 0], minlength=merged.max() + 1)
    keep = sizes > _DUST_PIXELS
    renumber = np.full(sizes.size + 1, -1)  # index -1 (lone wall pixels) stays -1
    renumber[:-1][keep] = np.arange(keep.sum())
    return renumber[flood], int(keep.sum())


def _promote_sure_dust(pixel_probs: np.ndarray, region: np.ndarray, count: int, promote: float) -> bool:
    """Step 8, in place: dust pixels at least `promote` sure of a label join its promotion region, id
    count + label. True if any did."""
    dust = np.flatnonzero(region < 0)
    top = pixel_probs[dust].argmax(axis=1)
    sure = pixel_probs[dust, top] >= promote
    region[dust[sure]] = count + top[sure]
    return bool(sure.any())


# ---- the published method, step 9: the patient join queue ---------------------------------------

def _join_queue(region: np.ndarray, statistics: _Statistics, shape: tuple[int, int],
                config: PublishedConfig) -> np.ndarray:
    """Step 9: (hw,) region ids, -1 queued -> (hw,) region ids, every pixel in a region; `statistics`
    gathers the joins. Cycle after cycle (`_CycleDecisions` decides each), on the frontier: a pixel
    no region touches goes back unchanged, so only queued pixels next to a region can join."""
    grid = _Grid(*shape)
    region = np.append(region, -2)  # (N + 1,): region, -1 queued, -2 outside
    patience = np.ones(grid.n + 1)
    cycle = _CycleDecisions(region, patience, statistics, grid, config.join)
    frontier = np.flatnonzero((region[:-1] == -1) & (region[grid.neighbours[:, :-1]] >= 0).any(axis=0))
    later = -1 if _FIRST_CYCLE_REVERSED else 1  # a cycle's visit order, 1: raster order
    while frontier.size:
        active = cycle.settle(frontier, later)
        choice, touched = cycle.choice[active], (cycle.seen[:, active] >= 0).any(axis=0)
        joined = active[choice >= 0]
        region[joined] = choice[choice >= 0]
        statistics.add_joins()
        patience[active[(choice < 0) & touched]] *= config.impatience
        later = -later
        if joined.size:  # the frontier loses the joined pixels and gains their queued neighbours
            around = grid.neighbours[:, joined].ravel()
            frontier = grid.distinct(np.concatenate([frontier[region[frontier] == -1], around[region[around] == -1]]))
        else:  # the next cycles differ only in patience: on to the first that can join
            nearest = cycle.distance[:, frontier].min(axis=0)
            waiting = patience[frontier]
            while not (nearest < config.join * waiting).any():
                waiting, later = waiting * config.impatience, -later
            patience[frontier] = waiting
        cycle.clear(active)
    # The grid is connected and holds a region, so the frontier empties only when all have joined.
    assert (region[:-1] >= 0).all()
    return region[:-1]


class _CycleDecisions:
    """One cycle of the join queue, decided in vectorised rounds that take the decisions the released
    queue takes one pixel at a time:
    - The queue is always the queued pixels in raster order or its reverse: it starts in raster
      order, each cycle takes it from its last element and appends its leftovers in the order it
      visits them. So "visited earlier" compares flat indices (times `later`: 1 in a raster-order
      cycle, -1 otherwise): the neighbours visited after a pixel are below and right of it, or above
      and left.
    - A decision depends only on earlier visits: the regions of earlier neighbours and the joins
      before it. The sequential decisions are therefore the only fixed point of "decide every pixel
      given all others' decisions", and re-deciding in rounds only the pixels whose inputs changed
      reaches it. `_rounds_at_start` decides with the statistics of the cycle's start, `_unsure`
      keeps each decision whose margins exceed how far its regions' statistics can have moved by its
      visit, and `_exact_rounds` re-decides the rest with the statistics at their visit (float32
      running sums in visit order, bit for bit the released `stats += p`) until nothing changes.
    """

    def __init__(self, region: np.ndarray, patience: np.ndarray, statistics: _Statistics, grid: _Grid,
                 join: float):
        # The queue's region and patience, read here: they change between cycles only.
        self.region, self.patience, self.statistics, self.grid, self.join = region, patience, statistics, grid, join
        # Per direction (_NEIGHBOURS order) and pixel: the region seen there (-1 a queued pixel, -2
        # outside) and its L1 distance; per pixel the region it joins (-1 none). `clear` resets them.
        self.seen = np.full((4, grid.n + 1), -1)
        self.distance = np.full((4, grid.n + 1), np.inf, np.float32)
        self.choice = np.full(grid.n + 1, -1)

    def settle(self, frontier: np.ndarray, later: int) -> np.ndarray:
        """Decides a cycle, its joins pending in the statistics; returns the pixels involved."""
        active = self._rounds_at_start(frontier, later)
        self._pend_joins(active, later)
        return self._exact_rounds(self._unsure(active), active, later)

    def clear(self, active: np.ndarray) -> None:
        self.seen[:, active], self.distance[:, active], self.choice[active] = -1, np.inf, -1

    def _rounds_at_start(self, frontier: np.ndarray, later: int) -> np.ndarray:
        """Decisions with the statistics of the cycle's start, to their fixed point: each round passes
        the choices that changed on to the neighbours visited after. Returns the pixels involved."""
        self.seen[:, frontier] = self.region[self.grid.neighbours[:, frontier]]  # (4, F)
        direction, i = (self.seen[:, frontier] >= 0).nonzero()
        self._distances_at_start(direction, frontier[i])
        reached, pixels = [frontier], frontier
        while pixels.size:
            _, _, direction, neighbours = self._decide(pixels, later)
            self._distances_at_start(direction, neighbours)
            reached.append(neighbours)
            pixels = self.grid.distinct(neighbours)
        return self.grid.distinct(np.concatenate(reached))

    def _unsure(self, active: np.ndarray) -> np.ndarray:
        """The active pixels whose decision the statistics' drift by their visit could change: their
        nearest distance within its drift of join x patience or of another region's distance."""
        if not self.statistics.join_pixels.size:
            return active[:0]  # no statistics moved: every distance is exact
        grew = np.zeros(self.statistics.sums.shape[0] + 1, bool)  # [-1]: no region
        grew[self.statistics.join_regions] = True
        # Only pixels seeing a region that grew can have a distance off its exact value.
        pixels = active[self.grid.distinct(grew[self.seen[:, active]].nonzero()[1])]
        seen = self.seen[:, pixels]  # (4, C)
        k, i = grew[seen].nonzero()
        drift = np.zeros(seen.shape)  # (4, C) how far each distance can be from its exact value
        drift[k, i] = self.statistics.drift(seen[k, i], pixels[i])
        distance = self.distance[:, pixels]
        best = distance.argmin(axis=0)
        column = np.arange(pixels.size)
        d, margin, region = distance[best, column], drift[best, column], seen[best, column]
        unsure = np.abs(d - self.join * self.patience[pixels]) <= margin
        unsure |= ((seen != region) & (distance - drift <= d + margin)).any(axis=0)
        return pixels[unsure]

    def _exact_rounds(self, pixels: np.ndarray, active: np.ndarray, later: int) -> np.ndarray:
        """Re-decides the pixels with the statistics at their visit, then every pixel a changed choice
        reaches, until nothing changes. Returns the active pixels with those reached."""
        while pixels.size:
            self.distance[:, pixels] = np.inf
            seen = self.seen[:, pixels]
            k, i = (seen >= 0).nonzero()
            means = self.statistics.means_at_visit(seen[k, i], pixels[i])
            self.distance[k, pixels[i]] = _l1(self.statistics.probs[pixels[i]], means)
            changed, old, _, neighbours = self._decide(pixels, later)
            if not changed.size:
                break
            active = self.grid.distinct(np.concatenate([active, neighbours]))
            self._pend_joins(active, later)
            # Statistics moved for every pixel seeing a region whose joins changed before its visit.
            regions, at = np.concatenate([old, self.choice[changed]]), np.concatenate([changed, changed]) * later
            grows = (regions >= 0) & (regions < self.statistics.growing)
            first = np.full(self.statistics.sums.shape[0] + 1, np.iinfo(np.int64).max)  # [-1]: no region
            np.minimum.at(first, regions[grows], at[grows])
            moved = active[(later * active > first[self.seen[:, active]]).any(axis=0)]
            pixels = self.grid.distinct(np.concatenate([neighbours, moved]))
        return active

    def _decide(self, pixels: np.ndarray, later: int) -> tuple[np.ndarray, ...]:
        """Each pixel's choice from its distances: the region at the nearest (the first of equal ones)
        if below join x patience, shown to the queued neighbours visited after it if it changed.
        Returns (the pixels whose choice changed, their old choice, the direction those see them in, those)."""
        distance = self.distance[:, pixels]  # (4, K)
        best = distance.argmin(axis=0)
        nearest = distance[best, np.arange(pixels.size)]
        new = np.where(nearest < self.join * self.patience[pixels], self.seen[best, pixels], -1)
        changed = new != self.choice[pixels]
        pixels = pixels[changed]
        old = self.choice[pixels]
        self.choice[pixels] = new[changed]
        table, back = self.grid.after[later]
        around = table[:, pixels]  # (2, K)
        k, i = (self.region[around] == -1).nonzero()
        direction, neighbours = back[k], around[k, i]
        self.seen[direction, neighbours] = self.choice[pixels[i]]
        return pixels, old, direction, neighbours

    def _distances_at_start(self, direction: np.ndarray, pixels: np.ndarray) -> None:
        """Distances of (direction, pixel) pairs to the region seen there, at the cycle's start."""
        regions = self.seen[direction, pixels]
        distance = np.full(regions.size, np.inf, np.float32)
        sees = regions >= 0
        distance[sees] = _l1(self.statistics.probs[pixels[sees]], self.statistics.means[regions[sees]])
        self.distance[direction, pixels] = distance

    def _pend_joins(self, active: np.ndarray, later: int) -> None:
        choice = self.choice[active]
        self.statistics.pend_joins(active[choice >= 0], choice[choice >= 0], later)


class _Statistics:
    """The regions' statistics (step 7) and the joins of the cycle being decided: `sums`, (R + L, L)
    float32, summed probabilities of the R floods, then one promotion region per label, its one-hot
    vector; their `means` and `mass`. Only the first `growing` (the floods) gather joined pixels."""

    def __init__(self, pixel_probs: np.ndarray, region: np.ndarray, count: int):
        members = np.flatnonzero(region >= 0)
        # Sums in raster order, one pixel at a time in float32, as a loop over the pixels would add them.
        member_of = sparse.csr_matrix((np.ones(members.size, np.float32), (region[members], members)),
                                      shape=(count, region.size))
        self.sums = np.concatenate([member_of @ pixel_probs, np.eye(pixel_probs.shape[1], dtype=np.float32)])
        self.probs, self.growing, self.span = pixel_probs, count, 2 * (region.size + 1)
        self.means = _normalised(self.sums)  # (R + L, L)
        self.mass = self.sums.sum(axis=1, dtype=np.float64)  # (R + L,)

    def pend_joins(self, pixels: np.ndarray, regions: np.ndarray, later: int) -> None:
        """The cycle's joins as decided so far, those that gather statistics sorted by region, then
        visit order: the statistics at a visit are those of the cycle's start and the joins before it."""
        grows = regions < self.growing
        order = np.lexsort((later * pixels[grows], regions[grows]))
        self.join_pixels, self.join_regions, self.later = pixels[grows][order], regions[grows][order], later
        self.join_keys = self._key(self.join_regions, self.join_pixels)

    def add_joins(self) -> None:
        """Adds the cycle's joins for good, one pixel at a time in visit order as the released `stats += p`."""
        last = np.ones(self.join_regions.size, bool)  # the last join into each region
        last[:-1] = self.join_regions[1:] != self.join_regions[:-1]
        regions = self.join_regions[last]
        self.sums[regions] = _running_sums(self.sums, self.probs[self.join_pixels], self.join_regions)[last]
        self.means[regions] = _normalised(self.sums[regions])
        self.mass[regions] = self.sums[regions].sum(axis=1, dtype=np.float64)

    def drift(self, r: np.ndarray, at: np.ndarray) -> np.ndarray:
        """(K,) bounds on how far, in L1, the means of regions r move by the visits of pixels at: joins
        of p_j with sums s_j move them by at most sum |p_j - s_j m| / S, m and S their mean and mass
        at the cycle's start (0 where none joined before, else _SLACK more for float32 rounding)."""
        p = self.probs[self.join_pixels]
        moved = np.zeros(p.shape[0] + 1)  # running sum of |p_j - s_j m| in the joins' order
        np.cumsum(_l1(p, p.sum(axis=1, keepdims=True) * self.means[self.join_regions]), dtype=np.float64,
                  out=moved[1:])
        first, stop = self._joins_before(r, at)
        return np.where(stop > first, (moved[stop] - moved[first]) / np.maximum(self.mass[r], 1e-30) + _SLACK,
                        0.0)

    def means_at_visit(self, r: np.ndarray, at: np.ndarray) -> np.ndarray:
        """(K, L) means of regions r as pixels at see them: with the joins before their visit added."""
        means = self.means[r]
        first, stop = self._joins_before(r, at)
        moved = stop > first
        if moved.any():
            needed = np.zeros(self.sums.shape[0], bool)  # only the regions asked about
            needed[r[moved]] = True
            rows = needed[self.join_regions]
            sums = _running_sums(self.sums, self.probs[self.join_pixels[rows]], self.join_regions[rows])
            means[moved] = _normalised(sums[np.cumsum(rows)[stop[moved] - 1] - 1])
        return means

    def _joins_before(self, r: np.ndarray, at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(first, stop): the pending joins into regions r before the visits of pixels at."""
        return self.join_keys.searchsorted(r * self.span), self.join_keys.searchsorted(self._key(r, at))

    def _key(self, regions: np.ndarray, pixels: np.ndarray) -> np.ndarray:
        """Sort key of (region, visit position): regions lie `span` apart, more than any visit position."""
        return regions * self.span + self.later * pixels + self.span // 2


class _Grid:
    """The (h, w) grid as flat indices, N = h * w standing for "outside"."""

    def __init__(self, h: int, w: int):
        n = self.n = h * w
        index = np.full((h + 2, w + 2), n)
        index[1:-1, 1:-1] = np.arange(n).reshape(h, w)
        self.neighbours = np.full((4, n + 1), n)  # (4, N + 1) in _NEIGHBOURS order
        for k, (dy, dx) in enumerate(_NEIGHBOURS):
            self.neighbours[k, :n] = index[1 + dy:h + 1 + dy, 1 + dx:w + 1 + dx].ravel()
        # Per visit order (1: raster order): the neighbours visited after a pixel, the direction they see it in.
        offsets = np.array([dy * w + dx for dy, dx in _NEIGHBOURS])
        opposite = np.array([_NEIGHBOURS.index((-dy, -dx)) for dy, dx in _NEIGHBOURS])
        self.after = {later: (self.neighbours[later * offsets > 0], opposite[later * offsets > 0])
                      for later in (1, -1)}
        self._slot = np.full(n + 1, -1)  # scratch for distinct

    def distinct(self, pixels: np.ndarray) -> np.ndarray:
        """The distinct entries of pixels (flat indices), in no particular order."""
        ranks = np.arange(pixels.size)
        self._slot[pixels] = ranks
        return pixels[self._slot[pixels] == ranks]


def _running_sums(start: np.ndarray, values: np.ndarray, segment: np.ndarray) -> np.ndarray:
    """Running float32 sums, one row at a time: out[i] = start[segment[i]] + values[j] + ... +
    values[i] for the rows j..i of i's segment so far (segment sorted). (S, L), (M, L), (M,) -> (M, L).
    Segments of similar length sit side by side as the columns of one array, padded with zeros, so one
    np.cumsum down its first axis (which adds in order) does a whole group bit for bit."""
    if not segment.size:
        return values
    starts = np.ones(segment.size, bool)
    starts[1:] = segment[1:] != segment[:-1]
    head = np.flatnonzero(starts)
    length = np.diff(head, append=segment.size)
    if length.max() == 1:
        return start[segment] + values
    rank = np.arange(segment.size) - np.repeat(head, length)
    if (length.max() + 1) * head.size <= max(4 * (segment.size + head.size), 4096):
        group = np.zeros(head.size, int)  # one array: the padding stays small
    else:
        group = np.ceil(np.log2(length) / 2).astype(int)  # lengths 1 | 2-4 | 5-16 | 17-64 | ...
    out = np.empty_like(values)
    for g in range(group.max() + 1):
        segments = np.flatnonzero(group == g)
        if not segments.size:
            continue
        rows = np.repeat(group == g, length)
        column = np.repeat(np.arange(segments.size), length[segments])
        grid = np.zeros((length[segments].max() + 1, segments.size, values.shape[1]), np.float32)
        grid[0] = start[segment[head[segments]]]
        grid[rank[rows] + 1, column] = values[rows]
        out[rows] = np.cumsum(grid, axis=0)[rank[rows] + 1, column]
    return out


def _l1(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(K, L), (K, L) float32 -> (K,) L1 distances, summed like the released code's numpy."""
    return np.add.reduce(np.abs(a - b), axis=1)


def _normalised(stats: np.ndarray) -> np.ndarray:
    """(K, L) statistics divided by their sums (all-zero rows stay zero)."""
    total = np.add.reduce(stats, axis=1, keepdims=True)
    return stats / np.where(total > 0, total, np.float32(1))


# ---- the regions method ------------------------------------------------------------------------

# The closing uses the 3x3 square: with the cross, one iteration cannot bridge a 2-pixel gap.
_EIGHT_CONNECTED = ndimage.generate_binary_structure(2, 2)


@dataclass(frozen=True)
class RegionsConfig:
    """Every threshold of the regions method in one place."""

    # Missed boundaries merge garments (catastrophic) while extra ones cost little, and a boundary
    # BCE weighting missed boundary w x inflates probabilities: its optimum is p = wq / (wq + 1 - q)
    # for a true boundary frequency q, so with w = 20 0.5 already means q ~ 5%.
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
        _check_fields(self, boundary_threshold=(0.0 <= self.boundary_threshold <= 1.0, "in [0, 1]"),
                      closing_iterations=(self.closing_iterations >= 0, ">= 0"),
                      min_region_size=(self.min_region_size >= 1, ">= 1"),
                      promote_threshold=(0.0 < self.promote_threshold <= 1.0, "in (0, 1]"),
                      initial_tolerance=(self.initial_tolerance > 0.0, "> 0"),
                      tolerance_growth=(self.tolerance_growth > 1.0, "> 1"), max_rounds=(self.max_rounds >= 1, ">= 1"))


def boundary_regions(boundary: np.ndarray, config: RegionsConfig = RegionsConfig()
                     ) -> tuple[np.ndarray, int]:
    """(H, W) boundary probabilities -> ((H, W) int32 region ids, region count): ids 1..count for the
    4-connected non-boundary regions of at least `min_region_size` pixels, 0 for leftover pixels
    (boundary after closing, and specks)."""
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


def regions(probs: np.ndarray, boundary: np.ndarray, config: RegionsConfig = RegionsConfig()) -> np.ndarray:
    """(L, H, W) softmax probabilities and (H, W) boundary probabilities -> (H, W) uint8 labels, every
    pixel labelled; the per-pixel argmax without any region (everything boundary)."""
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


def _promote_sure_pixels(ids: np.ndarray, flat: np.ndarray, count: int, threshold: float) -> int:
    """Turns leftover pixels at least `threshold` sure of a label into one new region per label (not
    per blob: its pixels all share the label, and the mean only guides which neighbours join it).
    ids: (HW,) region ids, updated in place; flat: (L, HW) probabilities. Returns the new count."""
    leftover = np.flatnonzero(ids == 0)  # (K,)
    pixel_probs = flat[:, leftover]  # (L, K)
    top = pixel_probs.argmax(axis=0)  # (K,)
    sure = pixel_probs[top, np.arange(leftover.size)] >= threshold  # (K,)
    labels, new_ids = np.unique(top[sure], return_inverse=True)
    ids[leftover[sure]] = count + 1 + new_ids
    return count + labels.size


def _grow(ids: np.ndarray, flat: np.ndarray, means: np.ndarray, shape: tuple[int, int],
          config: RegionsConfig) -> None:
    """Gives every leftover pixel (id 0) the id of the touching region closest to it, in place; ids:
    (HW,) with at least one region, flat: (L, HW) probabilities, means: (L, R+1). Each round first
    spreads as far as its tolerance allows, one layer of pixels at a time, so a band fills from the
    side it resembles before a later, laxer round lets the other side in."""
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


def _closest_touching_region(candidates: np.ndarray, ids: np.ndarray, flat: np.ndarray, means: np.ndarray,
                             height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
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
    """(K,) flat pixel indices -> (4, K) flat indices of the up/down/left/right neighbours, -1 outside."""
    row, col = np.divmod(indices, width)
    stacked = np.stack([indices - width, indices + width, indices - 1, indices + 1])  # (4, K)
    inside = np.stack([row > 0, row < height - 1, col > 0, col < width - 1])  # (4, K)
    return np.where(inside, stacked, -1)


# ---- choosing a method by name ------------------------------------------------------------------

# Each: (probs (L, H, W), boundary (H, W)) -> (H, W) uint8 labels, with its default settings.
METHODS = {"published": published, "regions": regions}


def run(method: str, probs: np.ndarray, boundary: np.ndarray) -> np.ndarray:
    """The post-processing `method` (a METHODS name) with its defaults; "none" is the per-pixel argmax."""
    if method == "none":
        _check_inputs(probs, boundary)
        return probs.argmax(axis=0).astype(np.uint8)
    if method not in METHODS:
        raise ValueError(f"unknown post-processing {method!r}; choose from {', '.join([*METHODS, 'none'])}")
    return METHODS[method](probs, boundary)
