"""Label sets and label maps: what the ids in a mask mean, and how one label set maps onto another.

A label set (`LabelSet`) is a name per id and a colour per id; DeepFashion-MultiModal's 24 are built in
(`DEEPFASHION_MM`, the default) and labels/ ships others (lip, cihp, atr, fashn, upper-lower-full), each a
JSON file naming its source. A label map (`LabelMap`, labels/maps/) sends each label of one set to one of
another, or lists it as unmapped with the reason; `load_label_map` refuses a map that leaves a label out.
`scoring_maps` says how a model of one label set is scored on masks of another (evaluate.py): in the
masks' own labels, or both mapped into a shared set (labels/maps/<set>-to-upper-lower-full.json).
Checkpoints and ONNX files carry their label set (`LabelSet.to_dict`), so every consumer names its outputs
without flags. This module imports nothing of the project's: dataset.py, unet.py, losses.py, evaluate.py,
predict.py and serve.py all read their labels from here.
"""

from __future__ import annotations

import colorsys
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class DataError(ValueError):
    """A data file or folder (a label set, a map, a photo, a mask, a split) is missing or malformed; the
    message names it and says what is wrong. dataset.py raises it too."""


# ---------------------------------------------------------------------------------- label sets

LABELS: tuple[str, ...] = (   # DeepFashion-MultiModal's 24, the default label set
    "background", "top", "outer", "skirt", "dress", "pants", "leggings", "headwear", "eyeglass",
    "neckwear", "belt", "footwear", "bag", "hair", "face", "skin", "ring", "wrist wearing", "socks",
    "gloves", "necklace", "rompers", "earrings", "tie",
)
NUM_LABELS = len(LABELS)
IGNORE_INDEX = 255   # unlabelled (padding; in the masks of other data sets, unannotated pixels)
PALETTE = np.array([  # (24, 3) uint8, row = label id
    (20, 20, 20), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128),
    (220, 190, 255), (154, 99, 36), (255, 224, 189), (190, 130, 100), (128, 128, 0), (0, 0, 128),
    (128, 128, 128), (170, 255, 195), (255, 255, 255), (128, 0, 0), (0, 90, 40), (90, 90, 255),
], dtype=np.uint8)
LABEL_DIR = Path(__file__).parent / "labels"   # shipped label sets (NAME.json) and maps (maps/NAME.json)
DEFAULT_LABELS = "deepfashion-mm"
MAP_ALIASES = {"topformer": "u2net", "upper-lower-full": "u2net",   # the same 4-class set; the
               "deepfashion-mm-to-upper-lower-full": "u2net"}    # name of the other sets' maps into it


def default_palette(count: int) -> tuple[tuple[int, int, int], ...]:
    """Colours for a label set that brings none: DeepFashion-MultiModal's 24, then evenly spread hues."""
    extra = [colorsys.hsv_to_rgb((i * 0.618034) % 1, 0.75, 0.95 - 0.3 * (i % 2)) for i in range(max(0, count - 24))]
    rows = [tuple(c) for c in PALETTE.tolist()] + [tuple(round(255 * v) for v in c) for c in extra]
    return tuple(rows[:count])


@dataclass(frozen=True)
class LabelSet:
    """What label ids mean: a name per id (0 first, usually background) and a display colour per id.

    A model's checkpoint carries its label set (`to_dict`), so every consumer names its outputs
    without flags. Files hold the same dict as JSON: {"name": ..., "labels": [...], "palette":
    [[r, g, b], ...] (optional), "source": "where the names come from" (optional)}.
    """
    name: str
    labels: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...] = ()   # () = default_palette
    source: str = ""

    def __post_init__(self):
        where = self.source or self.name or "label set"
        if not self.labels or not all(isinstance(n, str) and n.strip() for n in self.labels):
            raise DataError(f"{where}: labels must be a non-empty list of non-empty names")
        if len(self.labels) >= IGNORE_INDEX:
            raise DataError(f"{where}: {len(self.labels)} labels; masks are uint8 with {IGNORE_INDEX} "
                            f"for unlabelled, so at most {IGNORE_INDEX}")
        twice = sorted({n for n in self.labels if self.labels.count(n) > 1})
        if twice:
            raise DataError(f"{where}: labels named twice: {', '.join(twice)}")
        palette = tuple(tuple(int(v) for v in c) for c in self.palette) or default_palette(len(self.labels))
        if len(palette) != len(self.labels) or any(len(c) != 3 or not all(0 <= v <= 255 for v in c)
                                                   for c in palette):
            raise DataError(f"{where}: palette needs {len(self.labels)} [r, g, b] rows of 0-255, "
                            f"got {len(palette)}")
        object.__setattr__(self, "labels", tuple(self.labels))
        object.__setattr__(self, "palette", palette)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def colours(self) -> np.ndarray:
        """(L, 3) uint8, row = label id."""
        return np.array(self.palette, dtype=np.uint8)

    def index(self, name: str) -> int:
        """The id of a label name; case, '_' and ' ' are not told apart. Unknown names list the valid ones."""
        wanted = _plain(name)
        for i, label in enumerate(self.labels):
            if _plain(label) == wanted:
                return i
        raise DataError(f"unknown label {name!r} in label set {self.name}; its labels: {', '.join(self.labels)}")

    @property
    def flip_table(self) -> tuple[int, ...] | None:
        """(256,) ids after a horizontal flip: "left-X" and "right-X" swapped (any case, with '-', '_', ' ' or
        nothing between), every other id (and IGNORE_INDEX) kept; None when no label has a side."""
        table = list(range(256))
        for i, label in enumerate(self.labels):
            if m := re.fullmatch(r"(left|right)([-_ ]?)(.+)", label, flags=re.I):
                other = {"left": "right", "right": "left"}[m.group(1).lower()]
                partner = [j for j, n in enumerate(self.labels) if _plain(n) == _plain(other + m.group(2) + m.group(3))]
                if partner:
                    table[i] = partner[0]
        return tuple(table) if table != list(range(256)) else None

    def to_dict(self) -> dict:
        return {"name": self.name, "labels": list(self.labels), "palette": [list(c) for c in self.palette],
                "source": self.source}

    @classmethod
    def from_dict(cls, d: dict, where: str = "") -> "LabelSet":
        if not isinstance(d, dict) or not isinstance(d.get("labels"), list):
            raise DataError(f"{where or 'label set'}: not a label set (a JSON object with a \"labels\" list)")
        unknown = sorted(set(d) - {"name", "labels", "palette", "source"})
        if unknown:
            raise DataError(f"{where or 'label set'}: unknown keys {unknown} (allowed: name, labels, palette, source)")
        return cls(str(d.get("name") or Path(where).stem or "labels"), tuple(d["labels"]),
                   tuple(tuple(c) for c in d.get("palette") or ()), str(d.get("source") or where))


def _plain(name: str) -> str:
    return name.strip().lower().replace("_", " ")


DEEPFASHION_MM = LabelSet(DEFAULT_LABELS, LABELS, tuple(map(tuple, PALETTE.tolist())),
                          "DeepFashion-MultiModal (github.com/yumingj/DeepFashion-MultiModal): segm label ids")


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except OSError as err:
        raise DataError(f"{path}: cannot read {what} ({err.strerror or err})") from err
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not JSON ({err})") from err


def shipped_names(kind: str = "labels") -> list[str]:
    """The label sets (kind "labels") or label maps ("maps") that ship in labels/, by name."""
    folder = LABEL_DIR if kind == "labels" else LABEL_DIR / "maps"
    names = sorted(p.stem for p in folder.glob("*.json"))
    return ([DEFAULT_LABELS] + names) if kind == "labels" else names


def load_label_set(spec: str | Path | dict | LabelSet | None = None, relative_to: Path | None = None) -> LabelSet:
    """A label set by shipped name ("" or None: DeepFashion-MultiModal's), JSON file, dict or itself."""
    if isinstance(spec, LabelSet):
        return spec
    if isinstance(spec, dict):
        return LabelSet.from_dict(spec, str(relative_to or ""))
    spec = str(spec or DEFAULT_LABELS)
    if spec == DEFAULT_LABELS:
        return DEEPFASHION_MM
    shipped = LABEL_DIR / f"{spec}.json"
    path = shipped if shipped.is_file() and "/" not in spec else Path(spec)
    if relative_to is not None and not path.is_absolute() and not path.is_file():
        path = relative_to / spec
    if not path.is_file():
        raise DataError(f"label set {spec!r}: neither a shipped one ({', '.join(shipped_names())}) nor a file")
    return LabelSet.from_dict(_read_json(path, "label set"), str(path))


# ---------------------------------------------------------------------------------- label maps

UNMAPPED = -1


@dataclass(frozen=True)
class LabelMap:
    """Source label ids -> target label ids; a source label with no counterpart maps to UNMAPPED.

    A file (JSON) names both sets and every source label once: {"name", "source" (a label set as for
    load_label_set; default the model's), "target" (the same), "map": {source: target, ...},
    "unmapped": {source: why, ...}, "no_counterpart": {target: why, ...} (every target label nothing maps
    to), "notes": {label: why, ...} (optional), "description" (optional)}.
    """
    name: str
    source: LabelSet
    target: LabelSet
    targets: tuple[int, ...]                 # per source id: the target id or UNMAPPED
    why: tuple[tuple[str, str], ...] = ()    # (label, reason) for unmapped, no-counterpart and noted labels
    description: str = ""

    def table(self, unmapped: int = IGNORE_INDEX) -> np.ndarray:
        """(256,) int64 lookup: source id -> target id, UNMAPPED sources -> `unmapped`, 255 stays 255."""
        table = np.full(256, IGNORE_INDEX, dtype=np.int64)
        table[:len(self.targets)] = [t if t != UNMAPPED else unmapped for t in self.targets]
        return table

    def apply(self, labels: np.ndarray, unmapped: int = IGNORE_INDEX) -> np.ndarray:
        """(...) source label ids (uint8/int) -> the same shape of target ids, unmapped pixels `unmapped`."""
        return self.table(unmapped)[labels].astype(labels.dtype if unmapped <= 255 else np.int64)

    def markdown(self) -> str:
        """The map as a table: every target label with the source labels it takes, then the unmapped ones."""
        notes = dict(self.why)
        rows = ["| " + self.target.name + " | from " + self.source.name + " | note |", "| --- | --- | --- |"]
        for t, target in enumerate(self.target.labels):
            sources = [self.source.labels[s] for s, to in enumerate(self.targets) if to == t]
            remarks = [notes[target]] if target in notes else []
            remarks += [f"{n}: {notes[n]}" if len(sources) > 1 else notes[n]
                        for n in sources if n in notes and n != target]
            rows.append(f"| {target} | {', '.join(sources) or '(no counterpart)'} | {'; '.join(remarks)} |")
        for s, to in enumerate(self.targets):
            if to == UNMAPPED:
                rows.append(f"| (unmapped) | {self.source.labels[s]} | {notes.get(self.source.labels[s], '')} |")
        return "\n".join(rows)


def load_label_map(spec: str | Path, source: LabelSet | None = None) -> LabelMap:
    """A shipped map by name (labels/maps/NAME.json; "topformer" = "u2net") or a map file, checked: every
    source label maps to a target label or is listed as unmapped, and every target label that nothing
    maps to is listed as having no counterpart. `source`: the model's label set, which the map's must equal."""
    spec = str(spec)
    shipped = LABEL_DIR / "maps" / f"{MAP_ALIASES.get(spec, spec)}.json"
    path = shipped if shipped.is_file() and "/" not in spec else Path(spec)
    if not path.is_file():
        raise DataError(f"label map {spec!r}: neither a shipped one ({', '.join(shipped_names('maps'))}, "
                        f"{', '.join(MAP_ALIASES)}) nor a file")
    d = _read_json(path, "label map")
    unknown = sorted(set(d) - {"name", "description", "source", "target", "map", "unmapped", "no_counterpart", "notes"})
    if unknown or "target" not in d or not isinstance(d.get("map"), dict):
        raise DataError(f"{path}: a label map needs \"target\" and a \"map\" object"
                        + (f"; unknown keys {unknown}" if unknown else ""))
    src = load_label_set(d["source"], path.parent) if d.get("source") else (source or DEEPFASHION_MM)
    dst = load_label_set(d["target"], path.parent)
    if source is not None and src.labels != source.labels:
        raise DataError(f"{path}: maps from label set {src.name} ({len(src)} labels), but the model's is "
                        f"{source.name} ({len(source)} labels)")
    mapped, unmapped = d["map"], d.get("unmapped") or {}
    no_counterpart, notes = d.get("no_counterpart") or {}, d.get("notes") or {}
    problems = [f"{n!r} is not a {src.name} label" for n in [*mapped, *unmapped] if n not in src.labels]
    problems += [f"{mapped[n]!r} (for {n!r}) is not a {dst.name} label" for n in mapped if mapped[n] not in dst.labels]
    problems += [f"{n!r} is both mapped and unmapped" for n in mapped if n in unmapped]
    problems += [f"{n!r} is neither mapped nor listed as unmapped" for n in src.labels
                 if n not in mapped and n not in unmapped]
    reached = set(mapped.values())
    problems += [f"{dst.name} label {n!r} is reached by nothing and not listed under no_counterpart"
                 for n in dst.labels if n not in reached and n not in no_counterpart]
    problems += [f"no_counterpart lists {n!r}, which is not an unreached {dst.name} label" for n in no_counterpart
                 if n not in dst.labels or n in reached]
    if problems:
        raise DataError(f"{path}: " + "; ".join(problems))
    targets = tuple(dst.labels.index(mapped[n]) if n in mapped else UNMAPPED for n in src.labels)
    why = tuple((str(k), str(v)) for part in (unmapped, no_counterpart, notes) for k, v in part.items() if v)
    return LabelMap(str(d.get("name") or path.stem), src, dst, targets, why, str(d.get("description", "")))


# ---------------------------------------------------------------------------------- scoring across label sets

@dataclass(frozen=True)
class Scoring:
    """How a model's predictions are scored against masks of a label set (`scoring_maps`)."""
    labels: LabelSet                   # the label set scored in
    truth_map: LabelMap | None         # the masks' labels -> `labels`; None: scored as annotated
    not_scored: tuple[str, ...] = ()   # labels no label of the model's maps to: their truth pixels are not scored

    def truth_table(self) -> np.ndarray:
        """(256,) int64 lookup: mask id -> scored id; IGNORE_INDEX where a pixel is not scored."""
        table = self.truth_map.table() if self.truth_map else np.arange(256)
        keep = np.arange(256)
        keep[[self.labels.labels.index(n) for n in self.not_scored]] = IGNORE_INDEX
        return keep[table]


def scoring_maps(model: LabelSet, truth: LabelSet, prediction_map: LabelMap | None = None,
                 truth_map: LabelMap | None = None) -> Scoring:
    """Which label set a model of label set `model` is scored in on masks of label set `truth`, and how.

    The predictions go through prediction_map (from the model's set) if given. The masks go through
    truth_map if given (from their set into the same set as the predictions: two label sets scored in a
    third); else, with masks of the model's set, through prediction_map too; else, with masks already of
    prediction_map's target set, they are scored as annotated. Labels of the scored set that no label of the
    model's reaches are not scored (truth pixels ignored) and listed. Anything else is a DataError that
    names the shipped maps which would fit."""
    scored = prediction_map.target if prediction_map else model
    if prediction_map is not None and prediction_map.source.labels != model.labels:
        raise DataError(f"label map {prediction_map.name} maps from {prediction_map.source.name}; the model's "
                        f"label set is {model.name}")
    if truth_map is not None:
        if truth_map.source.labels != truth.labels or truth_map.target.labels != scored.labels:
            raise DataError(f"truth map {truth_map.name} maps {truth_map.source.name} -> {truth_map.target.name}; "
                            f"it needs to map the masks' {truth.name} -> {scored.name}, the set the predictions "
                            f"are scored in" + _fitting_maps(model, truth))
        chosen = truth_map
    elif truth.labels == model.labels:
        chosen = prediction_map                    # the masks in the model's labels: mapped like its predictions
    elif prediction_map is not None and truth.labels == scored.labels:
        chosen = None                              # the masks already in the mapped labels: as annotated
    else:
        raise DataError(f"masks of label set {truth.name} cannot be scored against a model of {model.name} "
                        + (f"mapped into {scored.name}" if prediction_map else "as it predicts")
                        + _fitting_maps(model, truth))
    reached = set(prediction_map.targets) if prediction_map else set(range(len(scored)))
    return Scoring(scored, chosen, tuple(n for i, n in enumerate(scored.labels) if i not in reached))


def _fitting_maps(model: LabelSet, truth: LabelSet) -> str:
    """The shipped maps that would score a model of `model` on masks of `truth`, as a sentence's end."""
    maps = [load_label_map(name) for name in shipped_names("maps")]
    direct = [m.name for m in maps if m.source.labels == model.labels and m.target.labels == truth.labels]
    shared = [f"{a.name} with truth map {b.name} (into {a.target.name})" for a in maps for b in maps
              if a.source.labels == model.labels and b.source.labels == truth.labels
              and a.target.labels == b.target.labels]
    if not direct and not shared:
        return f"; no shipped map fits: write one from {model.name} to {truth.name}, or two into a shared set"
    return "; shipped maps that fit: " + "; ".join([f"label map {n} (into {truth.name})" for n in direct] + shared)
