"""Boundary post-processing: network probabilities -> one cohesive label per garment.

Argmax per pixel can split one garment between two labels (pants near the hem look a bit like a
skirt). Both methods here use the boundary head to cut the image into regions and give each region
one label, and both are pure numpy/scipy on one image:

- `published` (the default): the released code's post-processing, step for step (see `published`);
  it reproduces the released output on every pixel of the 16 cases in tests/fixtures/postprocess/.
- `regions`: this project's own method: boundary >= 0.5, a 3x3 closing, 4-connected regions of at
  least 16 pixels, leftovers at least 0.9 sure of a label kept, the rest joining the touching region
  with the closest mean under a tolerance that doubles each round. It scores higher than `published`
  against the fixtures' ground truth (README, Evaluate).

    labels = postprocess.run("published", probs, boundary)   # (L, H, W) softmax, (H, W) sigmoid -> (H, W) uint8
    labels = postprocess.published(probs, boundary, PublishedConfig(threshold=0.2))
    labels = postprocess.regions(probs, boundary, RegionsConfig())
    regions, count = boundary_regions(boundary, RegionsConfig())   # the regions method's step 2, for pictures
"""

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse import csgraph

# 4-connected regions: a 1-pixel diagonal boundary line then still separates its two sides.
_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)


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
        problems = []
        if not 0.0 <= self.threshold < 1.0:
            problems.append(f"threshold must be in [0, 1), got {self.threshold}")
        if self.expand < 0:
            problems.append(f"expand must be >= 0, got {self.expand}")
        if not 0.0 < self.promote <= 1.0:
            problems.append(f"promote must be in (0, 1], got {self.promote}")
        if self.join <= 0.0:
            problems.append(f"join must be > 0, got {self.join}")
        if self.impatience <= 1.0:
            problems.append(f"impatience must be > 1, got {self.impatience}")
        if problems:
            raise ValueError("invalid PublishedConfig: " + "; ".join(problems))


def published(probs: np.ndarray, boundary: np.ndarray, config: PublishedConfig = PublishedConfig()
              ) -> np.ndarray:
    """The released post-processing: (L, H, W) softmax probabilities and (H, W) boundary
    probabilities -> (H, W) uint8 labels.

    As released, on the inner (H-2) x (W-2) grid, both inputs read as float32:
    1-5. walls (`published_walls`): boundary > threshold, kept where a 2x2 square of them holds it,
         plus the grid's frame; closed (11x11 square dilation, diamond erosion) and hollowed;
    6.   floods (`published_floods`): areas between 2-pixel walls; more than 10 pixels make a region,
         the rest is dust;
    7.   each region's statistics: its summed probabilities; one more "promotion" region per label,
         whose statistics are that label's one-hot vector;
    8.   dust pixels at least `promote` sure of a label join its promotion region, the rest queue;
    9.   in cycles over the queue (its last element first), a pixel looks at its neighbours below,
         above, right and left, takes the region with the smallest L1 distance between its
         probabilities and the region's normalised statistics, and joins it if that is below
         join x patience, adding itself to the statistics (not of promotion regions); otherwise it
         queues again, its patience x impatience if some region touched it;
    10.  every pixel takes the label with the largest statistic of its region.
    Beyond the released code: any H x W (it ran square images only), the outer ring labelled like
    its nearest inner pixel (it had no output there), and the per-pixel argmax where there is no
    region and no promoted pixel (it would never finish) or the image is under 3 pixels high or wide.
    probs must lie in [0, 1] (NaN would never join a region).
    """
    _check_inputs(probs, boundary)
    if not (probs.min() >= 0 and probs.max() <= 1 + 1e-3):  # NaN fails both
        raise ValueError(f"probs must be probabilities in [0, 1], got values from {probs.min()} to "
                         f"{probs.max()}")
    num_labels, height, width = probs.shape
    if height < 3 or width < 3:
        return probs.argmax(axis=0).astype(np.uint8)
    probs = probs.astype(np.float32, copy=False)
    inner = probs[:, 1:-1, 1:-1]  # (L, h, w)
    h, w = height - 2, width - 2
    walls = published_walls(boundary.astype(np.float32, copy=False)[1:-1, 1:-1], config)
    region, count = published_floods(walls)
    region = region.ravel()  # (hw,) region id, -1 for dust
    pixel_probs = np.ascontiguousarray(inner.transpose(1, 2, 0)).reshape(h * w, num_labels)  # (hw, L)
    members = np.flatnonzero(region >= 0)
    # Sums in raster order, one pixel at a time in float32, as a loop over the pixels would add them.
    member_of = sparse.csr_matrix((np.ones(members.size, np.float32), (region[members], members)),
                                  shape=(count, h * w))
    stats = np.concatenate([member_of @ pixel_probs, np.eye(num_labels, dtype=np.float32)])  # (R + L, L)
    dust = np.flatnonzero(region < 0)
    top = pixel_probs[dust].argmax(axis=1)
    sure = pixel_probs[dust, top] >= config.promote
    region[dust[sure]] = count + top[sure]  # promotion region of label l: id count + l
    if count == 0 and not sure.any():
        return probs.argmax(axis=0).astype(np.uint8)
    region = _Dust(pixel_probs, region, stats, count, (h, w), config).run()
    labels = stats.argmax(axis=1).astype(np.uint8)[region].reshape(h, w)
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
    # The released erosion reads the grown array beyond the grid, which the frame has filled: there
    # everything counts as set.
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
    to it through 4-neighbour steps that are not wall to wall. Those steps connect symmetrically, so
    each flood is a connected component whatever the scan order: the 4-connected open areas, merged
    where a wall pixel touches several of them, each with the wall pixels next to it. A wall pixel
    with no open neighbour is a flood of one.
    """
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


class _Dust:
    """Steps 8-9 of the released post-processing: the queue of dust pixels, settled in cycles.

    Flat pixel indices of the (h, w) grid; index N = h * w stands for "outside". The released code
    visits every queued pixel one at a time; this visits the same pixels in the same order and takes
    the same decisions, in vectorised rounds:
    - The queue is always the queued pixels in raster order or its reverse: it starts in raster
      order, each cycle takes it from its last element and appends its leftovers in the order it
      visits them. So "visited earlier" compares flat indices, and the neighbours visited after a
      pixel are those with a larger index in a forward cycle (below, right), a smaller one otherwise.
    - A pixel no region touches goes back unchanged, so a cycle only needs the frontier (queued
      pixels next to a region) and the pixels its joins reach.
    - A decision depends only on earlier visits: the regions of earlier neighbours and the joins
      before it. The sequential decisions are therefore the only fixed point of "decide every pixel
      given all others' decisions", and re-deciding in rounds only the pixels whose inputs changed
      reaches it. Rounds first use the statistics of the cycle's start; then each decision is kept
      if its margins exceed how far the statistics of its regions can have moved by its visit (joins
      of p_j with sums s_j move a region's normalised statistics by at most sum |p_j - s_j m| / S in
      L1, m and S its mean and mass at the cycle's start); the rest are re-decided with the exact
      statistics at their visit (float32 running sums in visit order, bit for bit the released
      `stats += p`) until nothing changes.
    - A cycle without joins changes only patience, so the empty cycles after it are skipped at once.
    """

    def __init__(self, pixel_probs: np.ndarray, region: np.ndarray, stats: np.ndarray, growing: int,
                 shape: tuple[int, int], config: PublishedConfig):
        h, w = shape
        n = h * w
        self.probs, self.stats, self.growing, self.n = pixel_probs, stats, growing, n
        self.span = 2 * (n + 1)  # _key: regions apart by more than any visit position
        self.join, self.impatience = config.join, config.impatience
        self.means = _normalised(stats)  # (R + L, L)
        self.mass = stats.sum(axis=1, dtype=np.float64)  # (R + L,)
        self.region = np.append(region, -2)  # (N + 1,): region, -1 queued, -2 outside
        index = np.full((h + 2, w + 2), n)
        index[1:-1, 1:-1] = np.arange(n).reshape(h, w)
        self.neighbours = np.full((4, n + 1), n)  # (4, N + 1) in _NEIGHBOURS order, N outside
        for k, (dy, dx) in enumerate(_NEIGHBOURS):
            self.neighbours[k, :n] = index[1 + dy:h + 1 + dy, 1 + dx:w + 1 + dx].ravel()
        # Per visit direction (1: raster order): the neighbours visited after a pixel, and the
        # direction in which they see it.
        offsets = np.array([dy * w + dx for dy, dx in _NEIGHBOURS])
        opposite = np.array([_NEIGHBOURS.index((-dy, -dx)) for dy, dx in _NEIGHBOURS])
        self.after = {later: (self.neighbours[later * offsets > 0], opposite[later * offsets > 0])
                      for later in (1, -1)}
        self.patience = np.ones(n + 1)
        # Per pixel and direction, for this cycle: the region seen there (-1 none), its distance.
        self.seen = np.full((4, n + 1), -1)
        self.distance = np.full((4, n + 1), np.inf, np.float32)
        self.choice = np.full(n + 1, -1)  # the region a pixel joins this cycle, -1 none
        self.slot = np.full(n + 1, -1)  # scratch for _distinct
        near = (self.region[self.neighbours[:, :n]] >= 0).any(axis=0)
        self.frontier = np.flatnonzero((region < 0) & near)
        self.join_list = None  # this cycle's joins, while the decisions stand

    def run(self) -> np.ndarray:
        """Settles every queued pixel; returns the (N,) region ids."""
        forward = not _FIRST_CYCLE_REVERSED
        while self.frontier.size:
            joined = self._cycle(1 if forward else -1)
            forward = not forward
            if not joined:
                forward = self._skip_empty_cycles(forward)
        # The grid is connected and holds a region, so the frontier empties only when all have joined.
        assert (self.region[:-1] >= 0).all()
        return self.region[:-1]

    def _distinct(self, pixels: np.ndarray) -> np.ndarray:
        """The distinct entries of pixels (flat indices), in no particular order."""
        ranks = np.arange(pixels.size)
        self.slot[pixels] = ranks
        return pixels[self.slot[pixels] == ranks]

    def _skip_empty_cycles(self, forward: bool) -> bool:
        """After a cycle without joins, the next ones differ only in patience until one can join."""
        patience = self.patience[self.frontier]
        while not (self.nearest < self.join * patience).any():
            patience = patience * self.impatience
            forward = not forward
        self.patience[self.frontier] = patience
        return forward

    def _decide(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Region each pixel joins (-1: none) from the regions it sees, and its nearest distance."""
        distance = self.distance[:, pixels]  # (4, K)
        best = distance.argmin(axis=0)  # the first of equal distances
        nearest = distance[best, np.arange(pixels.size)]
        joins = nearest < self.join * self.patience[pixels]
        return np.where(joins, self.seen[best, pixels], -1), nearest

    def _visited_after(self, pixels: np.ndarray, later: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Queued neighbours visited after each pixel: (their direction back to it, them, it)."""
        table, back = self.after[later]
        around = table[:, pixels]  # (2, K)
        k, i = (self.region[around] == -1).nonzero()
        return back[k], around[k, i], pixels[i]

    def _cycle(self, later: int) -> bool:
        """One cycle (later = 1: raster order, -1: reverse); True if some pixel joined."""
        frontier = self.frontier
        self.join_list = None
        active = self._spread(frontier, later)
        active = self._settle(active, later)
        choice, seen = self.choice[active], self.seen[:, active]
        joined = active[choice >= 0]
        touched = active[(choice < 0) & (seen >= 0).any(axis=0)]
        self.patience[touched] *= self.impatience
        self._commit(joined, active, later)
        self.seen[:, active], self.distance[:, active], self.choice[active] = -1, np.inf, -1
        if joined.size:
            around = self.neighbours[:, joined].ravel()
            around = around[self.region[around] == -1]
            self.frontier = self._distinct(np.concatenate([frontier[self.region[frontier] == -1], around]))
        return bool(joined.size)

    def _spread(self, frontier: np.ndarray, later: int) -> np.ndarray:
        """Decisions with the statistics of the cycle's start: joins pass on along the visit order.
        Returns the pixels involved."""
        static = self.region[self.neighbours[:, frontier]]  # (4, F) regions next to the frontier
        self.seen[:, frontier] = static
        k, i = (static >= 0).nonzero()
        self.distance[k, frontier[i]] = _l1(self.probs[frontier[i]], self.means[static[k, i]])
        parts, pixels, first = [frontier], frontier, True
        while pixels.size:
            new, nearest = self._decide(pixels)
            if first:
                self.nearest, first = nearest, False  # for _skip_empty_cycles
            changed = new != self.choice[pixels]
            pixels = pixels[changed]
            self.choice[pixels] = new[changed]
            direction, later_pixels, source = self._visited_after(pixels, later)
            regions = self.choice[source]
            self.seen[direction, later_pixels] = regions
            distance = np.full(regions.size, np.inf, np.float32)
            sees = regions >= 0
            distance[sees] = _l1(self.probs[later_pixels[sees]], self.means[regions[sees]])
            self.distance[direction, later_pixels] = distance
            parts.append(later_pixels)
            pixels = self._distinct(later_pixels)
        return self._distinct(np.concatenate(parts)) if len(parts) > 1 else frontier

    def _settle(self, active: np.ndarray, later: int) -> np.ndarray:
        """Keeps the decisions the statistics' drift cannot change; settles the others exactly."""
        joins, regions, keys = self._joins(active, later)
        if not joins.size:
            return active  # no statistics moved: every distance was exact
        p = self.probs[joins]
        moved = np.zeros(joins.size + 1)  # running sum of |p_j - s_j m| in this order
        np.cumsum(_l1(p, p.sum(axis=1, keepdims=True) * self.means[regions]), dtype=np.float64, out=moved[1:])
        grew = np.zeros(self.stats.shape[0] + 1, bool)  # [-1]: no region
        grew[regions] = True
        # Only pixels seeing a region that grew can have a distance off its exact value.
        columns = self._distinct(grew[self.seen[:, active]].nonzero()[1])
        pixels = active[columns]
        seen = self.seen[:, pixels]  # (4, C)
        k, i = grew[seen].nonzero()
        r = seen[k, i]
        before = keys.searchsorted(self._key(r, pixels[i], later))
        start = keys.searchsorted(r * self.span)
        drift = np.zeros(seen.shape)  # (4, C) how far each distance can be from its exact value
        drift[k, i] = np.where(before > start, (moved[before] - moved[start]) / np.maximum(self.mass[r], 1e-30)
                               + _SLACK, 0.0)
        distance = self.distance[:, pixels]
        best = distance.argmin(axis=0)
        column = np.arange(pixels.size)
        d, margin, region = distance[best, column], drift[best, column], seen[best, column]
        unsure = np.abs(d - self.join * self.patience[pixels]) <= margin
        unsure |= ((seen != region) & (distance - drift <= d + margin)).any(axis=0)
        pixels = pixels[unsure]
        while pixels.size:
            self._exact_distances(pixels, active, later)
            new, _ = self._decide(pixels)
            changed = new != self.choice[pixels]
            pixels = pixels[changed]
            if not pixels.size:
                break
            old = self.choice[pixels]
            self.choice[pixels] = new[changed]
            self.join_list = None
            direction, later_pixels, source = self._visited_after(pixels, later)
            self.seen[direction, later_pixels] = self.choice[source]
            active = self._distinct(np.concatenate([active, later_pixels]))
            # Statistics: every pixel seeing a region whose joins changed before its visit.
            changed_regions = np.concatenate([old, self.choice[pixels]])
            at = np.concatenate([pixels, pixels]) * later
            grows = (changed_regions >= 0) & (changed_regions < self.growing)
            first = np.full(self.stats.shape[0] + 1, np.iinfo(np.int64).max)  # [-1]: no region
            np.minimum.at(first, changed_regions[grows], at[grows])
            hit = (later * active > first[self.seen[:, active]]).any(axis=0)
            pixels = self._distinct(np.concatenate([later_pixels, active[hit]]))
        return active

    def _key(self, regions: np.ndarray, pixels: np.ndarray, later: int) -> np.ndarray:
        """Sort key of (region, visit position)."""
        return regions * self.span + later * pixels + self.n + 1

    def _joins(self, active: np.ndarray, later: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """This cycle's joins into regions that gather statistics, by region, then visit order:
        (pixels, regions, sort keys), kept until a decision changes."""
        if self.join_list is None:
            choice = self.choice[active]
            joins = active[(choice >= 0) & (choice < self.growing)]
            regions = self.choice[joins]
            order = np.lexsort((later * joins, regions))
            joins, regions = joins[order], regions[order]
            self.join_list = joins, regions, self._key(regions, joins, later)
        return self.join_list

    def _exact_distances(self, pixels: np.ndarray, active: np.ndarray, later: int) -> None:
        """Every distance of the given pixels with the statistics as they are at their visit."""
        joins, regions, keys = self._joins(active, later)
        self.distance[:, pixels] = np.inf
        seen = self.seen[:, pixels]
        k, i = (seen >= 0).nonzero()
        r, at = seen[k, i], pixels[i]
        means = self.means[r]
        before = keys.searchsorted(self._key(r, at, later))
        moved = (r < self.growing) & (before > keys.searchsorted(r * self.span))
        if moved.any():
            needed = np.zeros(self.stats.shape[0], bool)  # only the regions asked about
            needed[r[moved]] = True
            rows = needed[regions]
            sums = _running_sums(self.stats, self.probs[joins[rows]], regions[rows])
            means[moved] = _normalised(sums[np.cumsum(rows)[before[moved] - 1] - 1])
        self.distance[k, at] = _l1(self.probs[at], means)

    def _commit(self, joined: np.ndarray, active: np.ndarray, later: int) -> None:
        self.region[joined] = self.choice[joined]
        joins, regions, _ = self._joins(active, later)
        if regions.size:
            last = np.ones(regions.size, bool)
            last[:-1] = regions[1:] != regions[:-1]
            sums = _running_sums(self.stats, self.probs[joins], regions)[last]
            self.stats[regions[last]] = sums
            self.means[regions[last]] = _normalised(sums)
            self.mass[regions[last]] = sums.sum(axis=1, dtype=np.float64)


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
            raise ValueError("invalid RegionsConfig: " + "; ".join(problems))


def boundary_regions(boundary: np.ndarray, config: RegionsConfig = RegionsConfig()
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


def regions(probs: np.ndarray, boundary: np.ndarray, config: RegionsConfig = RegionsConfig()) -> np.ndarray:
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
          config: RegionsConfig) -> None:
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
