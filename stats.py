"""Confidence intervals and paired comparisons of per-image scores.

evaluate.py hands over one column of per-image statistics per model or method (evaluate.read_stats_csv: a
row per image) and gets back summary.json's content (`summarize`), the table with intervals
(`interval_table`), summary.csv and the forest plot summary.png (`write_summary`):

- Intervals. Each column's per-label median IoU (the median of (I + 1) / (U + 1) over the images whose truth
  has the label, as published) and its summary figures (SUMMARY) get a 95% percentile bootstrap interval:
  RESAMPLES resamples of the images with replacement from a fixed SEED (the same numbers on every run), the
  figure recomputed on each resample exactly as the point figure. A resample in which no image has the label
  is left out of that label's percentiles; a label in fewer than MIN_IMAGES images gets no interval.
- Paired comparisons. Each later column is compared with the first on the images both hold (matched by
  file name): per label the difference of the medians over the images whose truth has the label in both,
  with a paired bootstrap interval (the same resampled images for both columns), and a Wilcoxon
  signed-rank p-value (scipy.stats.wilcoxon with its defaults) on those images' IoU pairs; the p-values
  are Holm-corrected across the labels, and a difference is significant where the corrected p < ALPHA.
  The summary figures get the difference and its interval, and where they are medians or means of a
  per-image value (pixel, subject accuracy, mean image IoU) a Wilcoxon p, Holm-corrected among themselves.

A resample is a row of counts (how often each image was drawn), so a median over a resample is a
weighted median over the once-sorted values and sums are one matrix product: 2,000 resamples of 1,270
images x 24 labels take about a second.
"""
from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path

import numpy as np
from scipy import stats as scipy_stats

RESAMPLES = 2000
SEED = 0
CONFIDENCE = 0.95
ALPHA = 0.05         # a difference is significant where its Holm-corrected p-value is below this
MIN_IMAGES = 2       # a figure over fewer images gets no interval (one image resampled is always itself)
# The summary figures, beside the per-label medians: the published table's two (medians over the images of
# the per-image pixel accuracy and subject accuracy), the summed confusion matrix's mIoU and pixel accuracy,
# and TopFormer's mean per-image IoU (absent = 0) over the labels but background.
SUMMARY = ("pixel accuracy", "subject accuracy", "mIoU", "data-set pixel accuracy", "mean image IoU")
PER_IMAGE = ("pixel accuracy", "subject accuracy", "mean image IoU")   # those with a per-image value to test


# ---- the bootstrap ---------------------------------------------------------------------------------

def resample_counts(n: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """(resamples, n) int64: how often each of n images is drawn in each resample of n draws with replacement."""
    if n == 0:
        return np.zeros((resamples, 0), dtype=np.int64)
    draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))               # (R, n)
    flat = (draws + n * np.arange(resamples)[:, None]).ravel()
    return np.bincount(flat, minlength=resamples * n).reshape(resamples, n)


def weighted_medians(values: np.ndarray, present: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per column k, the median of values[:, k] over the images with present[:, k], image i counted
    weights[r, i] times. values, present: (N, K); weights: (R, N) -> (R, K), NaN where a row weighs no
    such image. With weights of ones it is np.median over those images, bit for bit."""
    out = np.full((weights.shape[0], values.shape[1]), np.nan)
    by_image = np.ascontiguousarray(weights.T, dtype=np.int32)     # (N, R): sums run down columns, fast
    for k in range(values.shape[1]):
        rows = np.flatnonzero(present[:, k])
        if rows.size == 0:
            continue
        order = rows[np.argsort(values[rows, k], kind="stable")]
        ordered = values[order, k]                                                          # (m,)
        cumulative = np.cumsum(by_image[order], axis=0, dtype=np.int32)                     # (m, R)
        total = cumulative[-1]
        # the sorted multiset's middle draws (0-based; the same one for an odd count) fall in the first
        # value whose cumulative count passes their position
        lower = np.minimum((cumulative <= (total - 1) // 2).sum(0), rows.size - 1)
        upper = np.minimum((cumulative <= total // 2).sum(0), rows.size - 1)
        out[:, k] = np.where(total > 0, (ordered[lower] + ordered[upper]) / 2, np.nan)
    return out


def per_image_values(stats: dict) -> dict[str, np.ndarray]:
    """PER_IMAGE figures of each image, (N,) each; NaN where an image has none."""
    inter, union = stats["intersection"], stats["union"]                                   # (N, L)
    image_iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    return {"pixel accuracy": stats["pixel accuracy"], "subject accuracy": stats["model pixel accuracy"],
            "mean image IoU": image_iou[:, 1:].mean(1)}


def summary_figures(stats: dict, weights: np.ndarray) -> np.ndarray:
    """(R, len(SUMMARY)): each summary figure of one column with image i counted weights[r, i] times."""
    values = per_image_values(stats)
    accuracies = np.stack([values["pixel accuracy"], values["subject accuracy"]], 1)        # (N, 2)
    medians = weighted_medians(accuracies, ~np.isnan(accuracies), weights)                 # (R, 2)
    w = weights.astype(np.float64)
    summed_inter, summed_union = w @ stats["intersection"], w @ stats["union"]             # (R, L)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)                    # an all-NaN row stays NaN
        miou = np.nanmean(np.where(summed_union > 0, summed_inter / summed_union, np.nan), 1)
        pixels = (w @ stats["intersection"].sum(1)) / (w @ stats["true mass"].sum(1))
        image_iou = (w @ values["mean image IoU"]) / w.sum(1)
    return np.column_stack([medians, miou, pixels, image_iou])


def percentile_interval(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(R, K) resampled figures -> the CONFIDENCE percentile interval's ends, (K,) each, over the
    resamples where the figure exists (NaN where none does)."""
    tail = 100 * (1 - CONFIDENCE) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)                    # all-NaN columns stay NaN
        low, high = np.nanpercentile(samples, [tail, 100 - tail], axis=0)
    return np.atleast_1d(low), np.atleast_1d(high)


# ---- tests ------------------------------------------------------------------------------------------

def wilcoxon_p(first: np.ndarray, later: np.ndarray) -> float:
    """The two-sided Wilcoxon signed-rank p-value of paired values (scipy.stats.wilcoxon(later, first), its
    defaults: zero differences dropped). Every pair equal: 1 (nothing to test; scipy warns or refuses). No
    pairs: NaN."""
    if len(first) == 0:
        return math.nan
    if np.array_equal(first, later):
        return 1.0
    return float(scipy_stats.wilcoxon(later, first).pvalue)


def holm(p: np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (NaN ones are not in the family and stay NaN):
    the k-th smallest of m becomes max over j <= k of min(1, (m - j + 1) p_(j))."""
    p = np.asarray(p, dtype=np.float64)
    tested = np.flatnonzero(~np.isnan(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    m = len(order)
    adjusted = np.full_like(p, np.nan)
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return adjusted


# ---- one column, and a later one against the first ----------------------------------------------------

def _entry(point: float, low: float, high: float, n: int, key: str) -> dict:
    wide = n >= MIN_IMAGES and not math.isnan(point)
    return {key: point, "ci_low": low if wide else math.nan, "ci_high": high if wide else math.nan, "n": n}


def column_summary(stats: dict, resamples: int = RESAMPLES, seed: int = SEED) -> tuple[dict, dict]:
    """One column's ({label: {"median", "ci_low", "ci_high", "n"}}, {figure: {"value", ...}})."""
    n = len(stats["files"])
    weights, ones = resample_counts(n, resamples, seed), np.ones((1, n), dtype=np.int64)
    present = stats["true mass"] > 0                                                       # (N, L)
    point = weighted_medians(stats["iou score"], present, ones)[0]
    low, high = percentile_interval(weighted_medians(stats["iou score"], present, weights))
    labels = {name: _entry(point[j], low[j], high[j], int(present[:, j].sum()), "median")
              for j, name in enumerate(stats["labels"])}
    point = summary_figures(stats, ones)[0]
    low, high = percentile_interval(summary_figures(stats, weights))
    return labels, {name: _entry(point[k], low[k], high[k], n, "value") for k, name in enumerate(SUMMARY)}


def common_images(first: dict, later: dict, names: tuple[str, str]) -> tuple[dict, dict]:
    """Both columns cut to the images they both hold (by file name), in the first one's order."""
    for stats, name in zip((first, later), names):
        if len(set(stats["files"])) < len(stats["files"]):
            raise ValueError(f"{name}: a file is named in two rows; a paired comparison matches images by name")
    where = {f: i for i, f in enumerate(later["files"])}
    rows = [(i, where[f]) for i, f in enumerate(first["files"]) if f in where]
    if not rows:
        raise ValueError(f"{names[1]} and {names[0]} hold no image in common (by the file column): nothing to pair")
    a, b = (np.array(r) for r in zip(*rows))
    return _images(first, a), _images(later, b)


def _images(stats: dict, index: np.ndarray) -> dict:
    """A column's rows `index` (every per-image array and the file names; the label names stay)."""
    return {k: v[index] if isinstance(v, np.ndarray) else tuple(v[i] for i in index) if k == "files" else v
            for k, v in stats.items()}


def paired_summary(first: dict, later: dict, resamples: int = RESAMPLES, seed: int = SEED) -> tuple[dict, dict]:
    """A later column against the first on common images (common_images): ({label: {"diff", "ci_low",
    "ci_high", "p", "p_holm", "significant", "n"}}, the same for each summary figure)."""
    n = len(first["files"])
    weights, ones = resample_counts(n, resamples, seed), np.ones((1, n), dtype=np.int64)
    present = (first["true mass"] > 0) & (later["true mass"] > 0)                          # (N, L)
    point, resampled = [weighted_medians(later["iou score"], present, w)              # (1, L), (R, L): the
                        - weighted_medians(first["iou score"], present, w) for w in (ones, weights)]   # same draws
    point, (low, high) = point[0], percentile_interval(resampled)
    p = np.array([wilcoxon_p(first["iou score"][present[:, j], j], later["iou score"][present[:, j], j])
                  for j in range(present.shape[1])])
    labels = _paired_entries(first["labels"], point, low, high, p, present.sum(0))
    point = summary_figures(later, ones)[0] - summary_figures(first, ones)[0]
    low, high = percentile_interval(summary_figures(later, weights) - summary_figures(first, weights))
    values = [per_image_values(s) for s in (first, later)]
    p = np.array([_wilcoxon_of_values(values[0][name], values[1][name]) if name in PER_IMAGE else math.nan
                  for name in SUMMARY])
    return labels, _paired_entries(SUMMARY, point, low, high, p, np.full(len(SUMMARY), n))


def _wilcoxon_of_values(first: np.ndarray, later: np.ndarray) -> float:
    both = ~np.isnan(first) & ~np.isnan(later)
    return wilcoxon_p(first[both], later[both])


def _paired_entries(names, point: np.ndarray, low: np.ndarray, high: np.ndarray, p: np.ndarray,
                    counts: np.ndarray) -> dict:
    """{name: {"diff", "ci_low", "ci_high", "p", "p_holm", "significant", "n"}}, Holm's correction over the
    names with a p-value; "significant" None where there is none."""
    adjusted = holm(p)
    entries = {}
    for j, name in enumerate(names):
        entry = _entry(point[j], low[j], high[j], int(counts[j]), "diff")
        tested = not math.isnan(adjusted[j])
        entries[name] = entry | {"p": p[j], "p_holm": adjusted[j],
                                 "significant": bool(adjusted[j] < ALPHA) if tested else None}
    return entries


def summarize(columns: dict[str, dict], resamples: int = RESAMPLES, seed: int = SEED) -> dict:
    """summary.json's content for named columns of per-image statistics (evaluate.read_stats_csv: "files",
    "labels", "iou score", "true mass", "intersection", "union" (N, L), "pixel accuracy", "model pixel
    accuracy" (N,)). NaN stands for a missing figure (json_ready writes null)."""
    names = list(columns)
    first = columns[names[0]]
    for name in names[1:]:
        if columns[name]["labels"] != first["labels"]:
            raise ValueError(f"{name} has the labels {', '.join(columns[name]['labels'])}; {names[0]} has "
                             f"{', '.join(first['labels'])}: compare columns of one label set")
    summary = {"columns": names, "labels": {label: {} for label in first["labels"]},
               "summary": {figure: {} for figure in SUMMARY}, "paired": {}, "paired_summary": {},
               "resamples": resamples, "seed": seed, "confidence": CONFIDENCE, "alpha": ALPHA}
    for name, stats in columns.items():
        labels, figures = column_summary(stats, resamples, seed)
        for label, entry in labels.items():
            summary["labels"][label][name] = entry
        for figure, entry in figures.items():
            summary["summary"][figure][name] = entry
    for name in names[1:]:
        a, b = common_images(first, columns[name], (names[0], name))
        summary["paired"][name], summary["paired_summary"][name] = paired_summary(a, b, resamples, seed)
    return summary


# ---- tables and files ---------------------------------------------------------------------------------

def json_ready(value):
    """summary -> plain JSON: numpy numbers as Python ones, NaN as null."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(value) else float(value)
    return value.item() if isinstance(value, np.generic) else value


def interval(entry: dict, digits: int = 3, sign: str = "") -> str:
    """An entry's interval as text: "[low, high]", or why there is none."""
    if math.isnan(entry["ci_low"]):
        return f"(n = {entry['n']}: no interval)"
    return f"[{entry['ci_low']:{sign}.{digits}f}, {entry['ci_high']:{sign}.{digits}f}]"


def _value_cell(entry: dict, key: str) -> str:
    if math.isnan(entry[key]):
        return "–"
    sign, digits = ("+", 4) if key == "diff" else ("", 3)      # differences are often under 0.001
    return f"{entry[key]:{sign}.{digits}f} {interval(entry, digits, sign)}" + (" *" if entry.get("significant") else "")


def _p_cell(p: float) -> str:
    return "–" if math.isnan(p) else "<0.0001" if p < 1e-4 else f"{p:.4f}"


def interval_table(summary: dict, rows: list[tuple[str, str, str]]) -> str:
    """Markdown: a row per (label, proportion, frequency) of `rows` (the caller's order and formatting) and
    then one per summary figure: each column's figure with its interval, and per later column the paired
    difference from the first with its interval (* where significant) and the Holm-corrected p; a legend."""
    names, later = summary["columns"], summary["columns"][1:]
    header = ["label", "proportion", "frequency", *names]
    for name in later:
        header += [f"{name} − {names[0]}", "p (Holm)" if len(later) == 1 else f"p (Holm), {name}"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    blocks = [(rows, "labels", "paired", "median"),
              ([(f, "", "") for f in SUMMARY], "summary", "paired_summary", "value")]
    for block, single, paired, key in blocks:
        for label, proportion, frequency in block:
            cells = [label, proportion, frequency]
            cells += [_value_cell(summary[single][label][name], key) for name in names]
            for name in later:
                entry = summary[paired][name][label]
                cells += [_value_cell(entry, "diff"), _p_cell(entry["p_holm"])]
            lines.append("| " + " | ".join(cells) + " |")
    percent = round(100 * summary["confidence"])
    lines.append(f"\n[low, high]: {percent}% percentile bootstrap interval ({summary['resamples']} resamples of the "
                 f"images, seed {summary['seed']}); no interval under {MIN_IMAGES} images.")
    if later:
        lines.append(f"Differences: later column minus {names[0]} on the images both hold, per label those whose "
                     f"truth has it in both; paired bootstrap interval (the same resampled images for both); "
                     f"p: Wilcoxon signed-rank on the per-image pairs, Holm-corrected across the labels (and "
                     f"across the summary figures apart); * significant, p (Holm) < {summary['alpha']}. "
                     f"mIoU and data-set pixel accuracy have no per-image pairs: their interval is the test.")
    return "\n".join(lines)


def write_summary(summary: dict, out: Path) -> None:
    """summary.json, summary.csv (a row per label, then per summary figure; a column per figure and interval
    end) and summary.png (plot_summary) in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(json_ready(summary), indent=1) + "\n")
    names, later = summary["columns"], summary["columns"][1:]
    header = ["label"] + [f"{n} {k}" if k else n for n in names for k in ("", "ci_low", "ci_high", "n")]
    header += [f"{n} - {names[0]} {k}".rstrip() for n in later
               for k in ("", "ci_low", "ci_high", "p", "p_holm", "significant", "n")]
    rows = [header]
    for single, paired, key in (("labels", "paired", "median"), ("summary", "paired_summary", "value")):
        for label, entries in summary[single].items():
            row = [label] + [entries[n][k] for n in names for k in (key, "ci_low", "ci_high", "n")]
            row += [summary[paired][n][label][k] for n in later
                    for k in ("diff", "ci_low", "ci_high", "p", "p_holm", "significant", "n")]
            rows.append(["" if v is None or isinstance(v, float) and math.isnan(v) else v for v in row])
    with open(out / "summary.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    plot_summary(summary, out / "summary.png")


def plot_summary(summary: dict, path: Path) -> None:
    """The forest plot: a row per label (those in any image, by frequency in the first column, most first)
    and per summary figure; left, each column's figure with its interval; then per later column its
    difference from the first with the paired interval against zero, significant ones in red with a *."""
    import matplotlib
    matplotlib.use("Agg")                                   # files only, no display
    import matplotlib.pyplot as plt

    names, later = summary["columns"], summary["columns"][1:]
    first = {label: entries[names[0]] for label, entries in summary["labels"].items()}
    labels = sorted((label for label in first if any(e["n"] for e in summary["labels"][label].values())),
                    key=lambda label: -first[label]["n"])
    rows = [("labels", "paired", "median", label, f"{label} ({first[label]['n']})") for label in labels]
    rows += [("summary", "paired_summary", "value", figure, figure) for figure in SUMMARY]
    y = -np.arange(len(rows)) - np.r_[np.zeros(len(labels)), np.ones(len(SUMMARY))]   # a gap before the figures
    fig, axes = plt.subplots(1, 1 + len(later), sharey=True, squeeze=False,
                             figsize=(5.5 + 4.5 * len(later), 1.2 + 0.27 * len(rows)))
    axes = axes[0]
    offsets = ((len(names) - 1) / 2 - np.arange(len(names))) * min(0.2, 0.6 / len(names))   # the first on top
    for c, name in enumerate(names):
        entries = [summary[single][key_][name] for single, _, _, key_, _ in rows]
        _forest(axes[0], [e[key] for e, (_, _, key, _, _) in zip(entries, rows)], entries, y + offsets[c],
                f"C{c}", name)
    axes[0].set_title(f"median IoU / figure\nwith its {round(100 * summary['confidence'])}% interval", fontsize=10)
    for ax, name in zip(axes[1:], later):
        entries = [summary[paired][name][key_] for _, paired, _, key_, _ in rows]
        verdict = [e["significant"] for e in entries]
        ax.axvline(0, color="black", linewidth=0.8)
        for value, colour, text in ((False, "grey", "not significant"), (True, "red", "significant"),
                                    (None, "black", "no per-image test: read the interval")):
            _forest(ax, [e["diff"] if v is value else math.nan for e, v in zip(entries, verdict)], entries, y,
                    colour, text)
        for e, yy in zip(entries, y):
            if e["significant"]:
                ax.annotate("*", (1, yy), xycoords=("axes fraction", "data"), ha="right", va="center", color="red")
        common = summary["paired_summary"][name][SUMMARY[0]]["n"]
        ax.set_title(f"{name} − {names[0]}\n(paired, on the {common} images in common)", fontsize=10)
    axes[0].set_yticks(y, [text for *_, text in rows], fontsize=8)
    for ax in axes:
        ax.grid(axis="x", alpha=0.3)
        ax.set_ylim(y.min() - 0.8, 0.8)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.04), ncol=2, fontsize=8, frameon=False)
    fig.suptitle(f"label (images with it in the first column); {summary['resamples']} bootstrap resamples, "
                 f"* Holm-corrected Wilcoxon p < {summary['alpha']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _forest(ax, points: list[float], entries: list[dict], y: np.ndarray, colour: str, label: str) -> None:
    """Points with horizontal interval bars on one axis; a point without an interval hollow."""
    points = np.array(points, dtype=np.float64)
    low = np.array([e["ci_low"] for e in entries], dtype=np.float64)
    high = np.array([e["ci_high"] for e in entries], dtype=np.float64)
    bars = ~np.isnan(points) & ~np.isnan(low)          # a percentile interval need not hold its point:
    ax.hlines(y[bars], low[bars], high[bars], color=colour, linewidth=1.2)   # bars, not errorbar's +-
    ax.plot(points[bars], y[bars], "o", color=colour, markersize=3.5, label=label)
    bare = ~np.isnan(points) & np.isnan(low)
    ax.plot(points[bare], y[bare], "o", markerfacecolor="none", color=colour, markersize=4)
