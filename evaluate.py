"""Evaluate a checkpoint as published: per-label median IoU, pixel and subject accuracy, raw and
with boundary post-processing, on the held-out test split.

    python evaluate.py --checkpoint checkpoints/tiny/model.pt --data_dir data/synthetic
    python evaluate.py --checkpoint checkpoints/tiny/model.pt --data_dir data/synthetic --postprocess published regions
    python evaluate.py --summarize reference/published-stats/512_96.csv reference/published-stats/512_96_pp.csv

Raw scores the per-pixel argmax; --postprocess names the post-processing scored beside it
(postprocess.METHODS: `published`, the released algorithm, by default; `regions`; several at once;
`none`). Published figures (paper 1.3) are medians over images: per label, the median over the images
whose ground truth contains it of (intersection + 1) / (union + 1); pixel accuracy and subject
accuracy (pixels whose truth is not background), each the median of the per-image values. The
per-image CSV has exactly the columns of the published per-image statistics, so runs compare
row by row; `--summarize` rebuilds the table from such CSVs. Every figure comes with a 95% bootstrap
interval, and each later column (a method, or a later CSV) is compared with the first image by image:
the difference with a paired interval and a Holm-corrected Wilcoxon test (stats.py). Beyond the
published table: data-set-level IoU and mIoU from the summed confusion matrix, TopFormer's metric (per
label the mean over all images of the per-image IoU, an image without the label counting 0) and a
boundary F-score. --label_map NAME|FILE (labels.load_label_map: u2net = topformer, atr, lip, fashn, the
<set>-to-upper-lower-full maps, or a file) scores the predictions in a mapped label set: masks of the
model's label set are mapped with it too (the 4-class upper/lower/full-body figures beside U2NET's and
TopFormer's), masks already of its target set are scored as they are (a DeepFashion-MultiModal model on
LIP in LIP's labels), and --truth_map maps masks of a third set into the same one (two label sets
scored in a shared one); labels.scoring_maps has the rules. Data sets of other layouts (--data_layout)
are read as run.py trained on them, their masks in --labels, else the layout's label set.
Outputs (in --out): per_image.csv (raw), per_image_postprocessed.csv (the first --postprocess
method; each further one in per_image_postprocessed_<method>.csv), table.md, table.csv (the point
figures), summary.json, summary.csv, summary.png (intervals, paired comparisons, the forest plot),
metrics.json, panels/, backwards/; `--summarize ... --out DIR` writes the tables and summary files.

    python evaluate.py --checkpoint checkpoints/tiny/model.pt --data_dir data/synthetic --label_map u2net
    python evaluate.py --checkpoint checkpoints/512_96/3_full/model.pt --data_dir LIP --data_layout lip --label_map lip
    python evaluate.py --checkpoint checkpoints/512_96/3_full/model.pt --data_dir LIP --data_layout lip \\
        --label_map u2net --truth_map lip-to-upper-lower-full
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from scipy import ndimage
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm import tqdm

from dataset import LAYOUTS, FashionDataset, find_pairs, get_layout, outfit_overlap
from images import boundary_target, prepare_batch, prepare_images
from labels import (DEEPFASHION_MM, IGNORE_INDEX, LABELS, DataError, LabelMap, LabelSet, load_label_map,
                    load_label_set, scoring_maps, shipped_names)
import postprocess
import stats

# Left out of the published table: labels under this share (in %) of the labelled pixels
# (neckwear, gloves, earrings and tie in the published test set).
RARE_PROPORTION = 0.001
# The boundary F-score counts a pixel as predicted boundary from this probability on.
BOUNDARY_THRESHOLD = 0.5
CSV_BLOCKS = ("intersection", "union", "predicted mass", "true mass", "iou score")


def csv_header(labels: tuple[str, ...] = LABELS) -> list[str]:
    """The published per-image CSV's columns, for any label set's names."""
    return (["file"] + [f"{name} {block}" for block in CSV_BLOCKS for name in labels]
            + ["pixel accuracy", "model pixel accuracy"]
            + [f"{name} iou score" for name in labels] + [f"{name} true mass" for name in labels])


CSV_HEADER = csv_header(LABELS)   # DeepFashion-MultiModal's, as published


# ---- data-set-level metrics (summed confusion matrix; run.py validates with these) -------------

def confusion_matrix(pred: Tensor, target: Tensor, num_labels: int,
                     ignore_index: int = IGNORE_INDEX) -> Tensor:
    """(num_labels, num_labels) int64 counts, rows = ground truth, columns = prediction.

    pred, target: integer label maps of the same shape; target pixels equal to ignore_index
    are left out.
    """
    valid = target != ignore_index
    index = target[valid].long() * num_labels + pred[valid].long()
    return torch.bincount(index, minlength=num_labels ** 2).reshape(num_labels, num_labels)


def pixel_accuracy(cm: Tensor) -> float:
    return (cm.diag().sum() / cm.sum().clamp(min=1)).item()


def subject_accuracy(cm: Tensor) -> float:
    """Pixel accuracy over the pixels whose truth is not background (label 0); NaN if there are none."""
    subject = cm[1:].sum()
    return (cm.diag()[1:].sum() / subject).item() if subject else float("nan")


def iou_per_label(cm: Tensor) -> Tensor:
    """(num_labels,) float IoU; NaN for labels neither present nor predicted."""
    cm = cm.double()
    inter = cm.diag()
    union = cm.sum(0) + cm.sum(1) - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.nan)


def mean_iou(cm: Tensor) -> float:
    """Mean IoU over the labels that occur in the ground truth or the prediction."""
    return iou_per_label(cm).nanmean().item()


def boundary_counts(pred: np.ndarray, truth: np.ndarray, tolerance: int = 1) -> np.ndarray:
    """[predicted px near a true boundary, predicted px, true px near a predicted one, true px].

    pred, truth: (H, W) bool boundary maps; "near" = within `tolerance` pixels (chessboard).
    """
    grow = np.ones((2 * tolerance + 1,) * 2, dtype=bool)
    near_truth = ndimage.binary_dilation(truth, grow)
    near_pred = ndimage.binary_dilation(pred, grow)
    return np.array([(pred & near_truth).sum(), pred.sum(), (truth & near_pred).sum(), truth.sum()])


def boundary_f_score(counts: np.ndarray) -> float:
    precision = counts[0] / max(counts[1], 1)
    recall = counts[2] / max(counts[3], 1)
    return float(2 * precision * recall / max(precision + recall, 1e-12))


# ---- per-image statistics, as published ---------------------------------------------------------

def image_stats(cm: Tensor) -> dict[str, np.ndarray | float]:
    """The published per-image figures from one image's (L, L) confusion matrix."""
    cm = cm.double().numpy()
    inter, predicted, true = np.diag(cm), cm.sum(0), cm.sum(1)
    union = predicted + true - inter
    subject_total = true[1:].sum()
    return {"intersection": inter, "union": union, "predicted mass": predicted, "true mass": true,
            "iou score": (inter + 1) / (union + 1),
            "pixel accuracy": inter.sum() / max(cm.sum(), 1),
            "model pixel accuracy": inter[1:].sum() / subject_total if subject_total else float("nan")}


def _cell(value: float) -> str:
    return "" if np.isnan(value) else f"{value:.15g}"


def csv_row(file: str, stats: dict) -> list[str]:
    """One row under CSV_HEADER; the trailing repeats are blank where the label is absent."""
    row = [file] + [_cell(v) for block in CSV_BLOCKS for v in stats[block]]
    row += [_cell(stats["pixel accuracy"]), _cell(stats["model pixel accuracy"])]
    present = stats["true mass"] > 0
    row += [_cell(v) if p else "" for v, p in zip(stats["iou score"], present)]
    row += [_cell(v) if p else "" for v, p in zip(stats["true mass"], present)]
    return row


def read_stats_csv(path: str | Path) -> dict[str, np.ndarray]:
    """A per-image CSV -> arrays: "intersection", "union", "iou score", "true mass" (N, L), "pixel
    accuracy" and "model pixel accuracy" (N,), "files" (the N names, which pair images across CSVs) and
    "labels" (the L names, read off the header, so a CSV of any label set reads). Empty cells are 0;
    repeated columns are read once."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or "file" not in rows[0]:
        raise ValueError(f"{path}: not a per-image statistics CSV (no 'file' column)")
    column = {}
    for i, name in enumerate(rows[0]):
        column.setdefault(name, i)
    labels = tuple(n.removesuffix(" iou score") for n in column if n.endswith(" iou score"))
    missing = [n for n in csv_header(labels) if n not in column] if labels else ["<label> iou score"]
    if missing:
        raise ValueError(f"{path}: missing columns {missing[:5]}{' ...' if len(missing) > 5 else ''}")

    def values(names: list[str]) -> np.ndarray:
        return np.array([[float(r[column[n]] or 0) for n in names] for r in rows[1:]])

    return {**{block: values([f"{n} {block}" for n in labels]) for block in CSV_BLOCKS if block != "predicted mass"},
            "pixel accuracy": values(["pixel accuracy"])[:, 0],
            "model pixel accuracy": values(["model pixel accuracy"])[:, 0], "labels": labels,
            "files": tuple(r[column["file"]] for r in rows[1:])}


def mean_image_iou(stats: dict[str, np.ndarray]) -> np.ndarray:
    """TopFormer's metric, per label: the mean over all images of intersection / union, an image
    where the label is neither true nor predicted counting 0. -> (L,)"""
    inter, union = stats["intersection"], stats["union"]                     # (N, L)
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0).mean(0)


def label_table(stats: dict[str, np.ndarray]) -> dict[str, np.ndarray | float]:
    """Per label: proportion (% of labelled pixels), frequency (images containing it), median IoU, and
    TopFormer's mean per-image IoU (where the CSV has intersections and unions)."""
    present = stats["true mass"] > 0                                          # (N, L)
    iou = np.where(present, stats["iou score"], np.nan)
    with np.errstate(all="ignore"):
        median = np.array([np.median(iou[present[:, j], j]) if present[:, j].any() else np.nan
                           for j in range(present.shape[1])])
    extra = {"mean image iou": mean_image_iou(stats)} if "union" in stats else {}
    return {"labels": stats.get("labels", LABELS), **extra,
            "proportion": 100 * stats["true mass"].sum(0) / stats["true mass"].sum(),
            "frequency": present.sum(0), "median iou": median,
            "pixel accuracy": float(np.nanmedian(stats["pixel accuracy"])),
            "subject accuracy": float(np.nanmedian(stats["model pixel accuracy"]))}


def format_tables(tables: dict[str, dict], summary: dict | None = None) -> tuple[str, list[list[str]]]:
    """Side-by-side columns (one per name) as Markdown and as CSV rows (table.csv: the point figures),
    labels by proportion. With `summary` (stats.summarize) the Markdown rows carry each figure's interval
    and the paired comparisons (stats.interval_table); table.csv keeps the point figures alone."""
    first = next(iter(tables.values()))
    names = first.get("labels", LABELS)
    order = np.argsort(-first["proportion"], kind="stable")
    common = [j for j in order if first["proportion"][j] >= RARE_PROPORTION]
    rare = [names[j] for j in order if 0 < first["frequency"][j] and first["proportion"][j] < RARE_PROPORTION]
    rows = [["label", "proportion", "frequency", *tables]]
    for j in common:
        rows.append([names[j], f"{first['proportion'][j]:.4f}", str(first["frequency"][j]),
                     *(f"{t['median iou'][j]:.3f}" for t in tables.values())])
    for key in ("pixel accuracy", "subject accuracy"):
        rows.append([key, "", "", *(f"{t[key]:.3f}" for t in tables.values())])
    if summary is not None:
        md = [stats.interval_table(summary, [tuple(r[:3]) for r in rows[1:1 + len(common)]])]
    else:
        md = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
        md += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    if rare:
        md.append(f"\nLeft out as rare (under {RARE_PROPORTION}% of labelled pixels): {', '.join(rare)}")
    return "\n".join(md), rows


def format_image_iou(tables: dict[str, dict]) -> str:
    """TopFormer's metric beside each other (one column per name) as Markdown: per label the mean over
    all images of the per-image IoU (0 where the label is absent), and their mean over every label but
    background (label 0), the figure of its upper/lower/whole-body table."""
    names = next(iter(tables.values())).get("labels", LABELS)
    md = ["| label (mean per-image IoU, absent = 0) | " + " | ".join(tables) + " |", "|" + "---|" * (len(tables) + 1)]
    md += [f"| {name} | " + " | ".join(f"{t['mean image iou'][j]:.3f}" for t in tables.values()) + " |"
           for j, name in enumerate(names)]
    md.append("| mean over the labels but background | "
              + " | ".join(f"{t['mean image iou'][1:].mean():.3f}" for t in tables.values()) + " |")
    return "\n".join(md)


def write_tables(tables: dict[str, dict], out: Path, summary: dict | None = None, note: str = "") -> str:
    """table.md (ending in `note`, where given), table.csv and, with `summary`, summary.json, summary.csv
    and summary.png in `out`."""
    markdown, rows = format_tables(tables, summary)
    if all("mean image iou" in t for t in tables.values()):
        markdown += "\n\n" + format_image_iou(tables)
    if note:
        markdown += "\n" + note
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(markdown + "\n")
    with open(out / "table.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    if summary is not None:
        stats.write_summary(summary, out)
    return markdown


# ---- pictures -------------------------------------------------------------------------------------

def save_panel(path: Path, image: np.ndarray, maps: dict[str, np.ndarray], boundary: np.ndarray,
               label_set: LabelSet = DEEPFASHION_MM) -> None:
    """Side by side: the photo, each label map in colour, the boundary probability; a legend below.

    image: (H, W, 3) uint8; maps: title -> (H, W) label ids of label_set (others drawn black);
    boundary: (H, W) in [0, 1].
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    draw_panel([(image, maps, boundary)], label_set).save(path)


def draw_panel(rows: list[tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]],
               label_set: LabelSet = DEEPFASHION_MM) -> Image.Image:
    """One row per (image, maps, boundary) as save_panel lays it out, all the same size and maps
    under column titles; one legend below of every label shown."""
    h, w = rows[0][0].shape[:2]
    count, colours = len(label_set), np.concatenate([label_set.colours, np.zeros((1, 3), np.uint8)])
    titles = ["image", *rows[0][1], "boundary"]
    present = sorted(set().union(*(np.unique(m[m < count]).tolist() for _, maps, _ in rows
                                   for m in maps.values())))
    legend_rows = (len(present) + 3) // 4
    canvas = Image.new("RGB", (w * len(titles), h * len(rows) + 16 + 14 * legend_rows), "white")
    draw = ImageDraw.Draw(canvas)
    for i, title in enumerate(titles):
        draw.text((i * w + 3, 2), title, fill="black")
    for r, (image, maps, boundary) in enumerate(rows):
        tiles = [image] + [colours[np.where(m < count, m, count)] for m in maps.values()]
        tiles.append(np.repeat((boundary * 255).astype(np.uint8)[..., None], 3, axis=2))
        for i, tile in enumerate(tiles):
            canvas.paste(Image.fromarray(tile), (i * w, 16 + r * h))
    column = canvas.width // 4
    for k, label in enumerate(present):
        x, y = (k % 4) * column + 3, h * len(rows) + 18 + (k // 4) * 14
        draw.rectangle([x, y, x + 10, y + 10], fill=tuple(int(c) for c in colours[label]), outline="black")
        draw.text((x + 14, y), label_set.labels[label], fill="black")
    return canvas


def to_rgb(image: Tensor, mean: tuple, std: tuple) -> np.ndarray:
    """Normalised (3, H, W) -> (H, W, 3) uint8."""
    rgb = image.float().cpu() * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    return (rgb.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def run_backwards(model, image: Tensor, target: Tensor, mean: tuple, std: tuple, steps: int = 100,
                  lr: float = 1e-3) -> tuple[Tensor, list[float]]:
    """Paper 1.10: fix the network, optimise the input so the output becomes `target`.

    image: (1, 3, H, W) normalised; target: (1, H, W) label ids. Adam works on the photo's
    [0, 1] pixel values. Returns the new normalised image and pixel accuracy before and after.
    """
    m = torch.tensor(mean, device=image.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=image.device).view(1, 3, 1, 1)
    pixels = (image * s + m).clamp(0, 1).detach().requires_grad_(True)
    optimizer = torch.optim.Adam([pixels], lr=lr)
    for p in model.parameters():
        p.requires_grad_(False)
    accuracy = []
    for step in range(steps + 1):
        logits = model((pixels - m) / s).mask_logits                        # (1, L, H, W)
        if step in (0, steps):
            valid = target != IGNORE_INDEX
            accuracy.append((logits.argmax(1) == target)[valid].float().mean().item())
        if step == steps:
            break
        loss = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            pixels.clamp_(0, 1)
    return ((pixels - m) / s).detach(), accuracy


def save_backwards(out: Path, name: str, before: np.ndarray, after: np.ndarray) -> None:
    """before/after (H, W, 3) uint8, and their difference stretched to full range to be visible."""
    out.mkdir(parents=True, exist_ok=True)
    diff = np.abs(after.astype(np.int16) - before.astype(np.int16)).max(axis=2)
    stretched = (diff * (255.0 / max(int(diff.max()), 1))).astype(np.uint8)
    Image.fromarray(before).save(out / f"{name}_before.png")
    Image.fromarray(after).save(out / f"{name}_after.png")
    Image.fromarray(stretched).save(out / f"{name}_difference.png")


# ---- the evaluation run ---------------------------------------------------------------------------

def evaluate(model, dataset: FashionDataset, out: Path, device: torch.device, batch_size: int = 8,
             num_workers: int = 2, methods: tuple[str, ...] = ("published",), panels: int = 8,
             dtype: torch.dtype | None = None, label_map: LabelMap | None = None,
             truth_map: LabelMap | None = None) -> dict:
    """Run the model over `dataset`, scoring the argmax ("raw") and each post-processing of
    `methods` (postprocess.METHODS names); write the per-image CSVs and panels; return the summaries.
    dtype: the autocast dtype (device.pick_precision), None for fp32. With label_map the predictions are
    scored in its target label set, the masks (of dataset.labels) mapped there as labels.scoring_maps
    says: with truth_map, by label_map when of the model's set, as annotated when already of the target
    set. Truth pixels of unmapped labels, and of labels no label of the model's maps to, are not scored;
    a prediction of an unmapped label is wrong everywhere (an extra confusion-matrix column, dropped
    from every per-label figure)."""
    model.eval().to(device)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()
    scoring = scoring_maps(model.label_set, dataset.labels, label_map, truth_map)
    label_set, truth_table = scoring.labels, scoring.truth_table()                    # (256,) mask id -> scored id
    count = len(label_set)
    size = count + (label_map is not None)                  # + "unmapped" for mapped predictions
    variants = ["raw", *methods]
    rows = {v: [] for v in variants}
    cms = {v: torch.zeros(size, size, dtype=torch.int64) for v in variants}
    edges = np.zeros(4, dtype=np.int64)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    for batch in tqdm(loader, desc="evaluating", unit="batch"):
        image = prepare_images(batch, model.config.mean, model.config.std, device)   # (B, 3, H, W)
        with torch.inference_mode(), autocast:
            output = model(image)
        probs = output.mask_logits.float().softmax(1).cpu()                 # (B, L, H, W)
        edge_probs = output.boundary_logits.float().sigmoid().cpu()          # (B, H, W)
        for i, index in enumerate(batch["index"].tolist()):
            h, w = batch["valid_hw"][i].tolist() if "valid_hw" in batch else batch["mask"].shape[1:]
            mask = batch["mask"][i, :h, :w]
            truth = torch.from_numpy(truth_table[mask.numpy()])                            # (h, w) scored ids
            prob, edge = probs[i, :, :h, :w].numpy(), edge_probs[i, :h, :w].numpy()
            maps = {"raw": prob.argmax(0)}
            for method in methods:
                maps[method] = postprocess.run(method, prob, edge)
            edges += boundary_counts(edge >= BOUNDARY_THRESHOLD, boundary_target(mask).numpy() > 0)
            if label_map is not None:
                maps = {v: label_map.apply(m, unmapped=count) for v, m in maps.items()}
            name = dataset.pairs[index].mask.name
            for v, labels in maps.items():
                cm = confusion_matrix(torch.from_numpy(labels.astype(np.int64)), truth, size)
                cms[v] += cm
                rows[v].append(csv_row(name, trimmed_stats(cm, count)))
            if panels > 0 and len(rows["raw"]) <= panels:
                save_panel(out / "panels" / f"{Path(name).stem}.png",
                           batch["image"][i, :, :h, :w].permute(1, 2, 0).numpy(),
                           {"truth": truth.numpy(), **maps}, edge, label_set)
    out.mkdir(parents=True, exist_ok=True)
    for v in variants:
        with open(out / per_image_csv(v, methods), "w", newline="") as f:
            csv.writer(f).writerows([csv_header(label_set.labels), *rows[v]])
    return {v: dataset_metrics(cms[v], label_set.labels) for v in variants} | \
           {"boundary F-score": boundary_f_score(edges), "labels": label_set.name} | \
           ({"label_map": label_map.name} if label_map else {}) | \
           ({"truth_map": truth_map.name} if truth_map else {}) | \
           ({"not scored": list(scoring.not_scored)} if scoring.not_scored else {})


def trimmed_stats(cm: Tensor, count: int) -> dict[str, np.ndarray | float]:
    """image_stats of a (count + k)-square confusion matrix, per-label arrays cut to the first `count`
    labels (the rest: columns for predictions outside the label set, which only count as wrong)."""
    stats = image_stats(cm)
    return {k: v[:count] if isinstance(v, np.ndarray) else v for k, v in stats.items()}


def dataset_metrics(cm: Tensor, labels: tuple[str, ...]) -> dict:
    """Pixel accuracy, mIoU and per-label IoU of a summed confusion matrix, over `labels` (the first
    len(labels) rows and columns; an extra column of unmapped predictions counts as wrong)."""
    iou = iou_per_label(cm)[:len(labels)]
    return {"pixel accuracy": pixel_accuracy(cm), "mIoU": iou.nanmean().item(), "IoU": dict(zip(labels, iou.tolist()))}


def per_image_csv(variant: str, methods: tuple[str, ...]) -> str:
    """The per-image CSV's name: per_image.csv for raw, per_image_postprocessed.csv for the first method."""
    if variant == "raw":
        return "per_image.csv"
    return "per_image_postprocessed.csv" if variant == methods[0] else f"per_image_postprocessed_{variant}.csv"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (over 60 lines: one flag after another, each with its help, read as a list)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--summarize", nargs="+", metavar="CSV",
                   help="rebuild the table from per-image CSVs, a column each (named by the file's stem), with 95%% "
                        "bootstrap intervals; each later one is compared with the first on the images both hold "
                        "(--out DIR: table.md, table.csv, summary.json, summary.csv, summary.png)")
    p.add_argument("--checkpoint", help="model to evaluate")
    p.add_argument("--data_dir", help="data set root (DeepFashion-MultiModal: images/, segm/)")
    p.add_argument("--data_layout", choices=list(LAYOUTS),
                   help="how --data_dir keeps photos and masks (default: the one the checkpoint trained on, "
                        "else deepfashion-mm)")
    p.add_argument("--mask_pattern", help="--data_layout folders: a photo's mask name, e.g. '{stem}_mask.png' "
                                          "(default: the checkpoint's, else {stem}.png)")
    p.add_argument("--split", default="test", choices=["test", "val", "train", "all"])
    p.add_argument("--test_split", help="file naming the test images (default: the layout's: the published 1,270 "
                                        "for deepfashion-mm, the data set's own test part for lip and cihp, "
                                        "else a hash)")
    p.add_argument("--test_fraction", type=float,
                   help="hashed test split's share (default: the checkpoint's, else 0.1)")
    p.add_argument("--mode", default="auto", choices=["auto", "center_strip", "whole", "letterbox"],
                   help="auto: the layout's (center_strip for deepfashion-mm, letterbox elsewhere); "
                        "center_strip: the published square strip; whole: the whole photo, padded; "
                        "letterbox: the whole photo fitted into the training square")
    p.add_argument("--labels", help="label set of the masks (a shipped name or a file; default: the layout's, "
                                     "else the model's)")
    p.add_argument("--label_map", metavar="NAME|FILE",
                   help="score in a mapped label set: the model's predictions go through this map (from its "
                        "label set; shipped: " + ", ".join(shipped_names("maps")) + ", topformer, or a map file). "
                        "Masks of the model's label set are mapped with it too, masks of its target set are "
                        "scored as annotated (e.g. a DeepFashion-MultiModal model on LIP: --label_map lip "
                        "--data_layout lip); target labels nothing maps to are not scored")
    p.add_argument("--truth_map", metavar="NAME|FILE",
                   help="map the masks (from their label set, --labels) into the set the predictions are scored "
                        "in, to score two label sets in a third: e.g. a DeepFashion-MultiModal model on LIP in "
                        "the 4 classes: --label_map u2net --truth_map lip-to-upper-lower-full --data_layout lip")
    p.add_argument("--out", help="output folder (default: next to the checkpoint, eval-<split>[-<map>])")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--num_workers", type=int, default=2)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="autocast dtype: auto = bf16 on GPUs that run it natively, fp16 on older GPUs, fp32 "
                        "on the CPU, as run.py trains (default: auto)")
    p.add_argument("--postprocess", nargs="+", default=["published"], metavar="METHOD",
                   choices=[*postprocess.METHODS, "none"],
                   help="post-processing scored beside the raw argmax: published (the released "
                        "algorithm, default), regions, both (--postprocess published regions), or none")
    p.add_argument("--no-postprocess", dest="postprocess", action="store_const", const=["none"],
                   help="score the raw argmax only (= --postprocess none)")
    p.add_argument("--panels", type=int, default=8, help="colour panels to save")
    p.add_argument("--backwards", type=int, default=0, metavar="N",
                   help="run the network backwards (paper 1.10) on the first N images")
    p.add_argument("--backwards_steps", type=int, default=100)
    p.add_argument("--backwards_lr", type=float, default=1e-3)
    args = p.parse_args(argv)
    if not args.summarize and not (args.checkpoint and args.data_dir):
        p.error("give --checkpoint and --data_dir, or --summarize CSV...")
    if "none" in args.postprocess and len(args.postprocess) > 1:
        p.error("--postprocess none scores the raw argmax only: give it alone")
    if len(set(args.postprocess)) < len(args.postprocess):
        p.error(f"--postprocess names a method twice: {' '.join(args.postprocess)}")
    args.postprocess = tuple(m for m in args.postprocess if m != "none")
    return args


def report(results: dict, out: Path, methods: tuple[str, ...]) -> str:
    """The tables of an `evaluate` run from its per-image CSVs, written to `out` (table.md, table.csv,
    summary.json, summary.csv, summary.png: each variant with intervals, each method paired with raw);
    TopFormer's mean per-image IoU joins `results` per variant. -> the text to print."""
    columns = {v: read_stats_csv(out / per_image_csv(v, methods)) for v in ("raw", *methods)}
    tables = {v: label_table(s) for v, s in columns.items()}
    summary = stats.summarize(columns)
    note = (f"Not scored (no label of the model's maps to them; their truth pixels are ignored): "
            f"{', '.join(results['not scored'])}" if results.get("not scored") else "")
    lines = [write_tables(tables, out, summary, note)]
    for v, table in tables.items():
        per_label, ci = table["mean image iou"], {k: stats.interval(e[v], 4) for k, e in summary["summary"].items()}
        results[v]["mean image IoU"] = dict(zip(table["labels"], per_label.tolist()))
        results[v]["mean image IoU, labels but background"] = float(per_label[1:].mean())
        lines.append(f"{v}: data-set pixel accuracy {results[v]['pixel accuracy']:.4f} {ci['data-set pixel accuracy']}, "
                     f"mIoU {results[v]['mIoU']:.4f} {ci['mIoU']}, mean per-image IoU (absent = 0) over the labels "
                     f"but background {per_label[1:].mean():.4f} {ci['mean image IoU']}")
    lines.append(f"boundary F-score: {results['boundary F-score']:.4f} (over all pixels at once: no interval)")
    return "\n".join(lines)


def setup(args: argparse.Namespace):
    """(device, autocast dtype, model, data set, label map, truth map) for an evaluation run (the maps None
    where not given, checked by labels.scoring_maps before any data is read); the layout, mask names and
    test fraction default to those the checkpoint trained with."""
    from device import keep_freed_memory, pick_device, pick_precision   # --summarize
    from unet import model_from_checkpoint, read_checkpoint                # needs none
    device = pick_device(args.device)
    keep_freed_memory(device)
    dtype = pick_precision(args.precision, device)
    ckpt = read_checkpoint(args.checkpoint)
    model = model_from_checkpoint(ckpt, args.checkpoint)
    trained = ckpt.get("train_config", {})
    layout = get_layout(args.data_layout or trained.get("data_layout", "deepfashion-mm"),
                        args.mask_pattern if args.mask_pattern is not None else trained.get("mask_pattern", ""))
    truth_set = load_label_set(args.labels or layout.labels) if args.labels or layout.labels else model.label_set
    label_map = load_label_map(args.label_map, model.label_set) if args.label_map else None
    truth_map = load_label_map(args.truth_map) if args.truth_map else None
    scoring_maps(model.label_set, truth_set, label_map, truth_map)
    config = model.config
    mode = layout.eval_mode if args.mode == "auto" else args.mode
    dataset = FashionDataset(args.data_dir, args.split, image_size=config.image_size, mode=mode,
                             size_multiple=config.size_multiple, test_split=args.test_split, layout=layout,
                             labels=truth_set, fit=config.fit,
                             test_fraction=args.test_fraction or trained.get("test_fraction", 0.1))
    return device, dtype, model, dataset, label_map, truth_map


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.summarize:
        names = [Path(p).stem for p in args.summarize]
        try:
            if len(set(names)) < len(names):
                raise ValueError(f"columns are named by file stem, and two files are named alike: {' '.join(names)}")
            columns = {name: read_stats_csv(p) for name, p in zip(names, args.summarize)}
            summary = stats.summarize(columns)
        except (OSError, ValueError) as e:
            sys.exit(f"error: {e}")
        tables = {name: label_table(s) for name, s in columns.items()}
        print(write_tables(tables, Path(args.out), summary) if args.out else format_tables(tables, summary)[0])
        return
    try:
        device, dtype, model, dataset, label_map, truth_map = setup(args)
    except ValueError as e:                         # DataError and CheckpointError included
        sys.exit(f"error: {e}")
    config = model.config
    suffix = f"-{(label_map or truth_map).name}" if label_map or truth_map else ""
    out = Path(args.out) if args.out else Path(args.checkpoint).parent / f"eval-{args.split}{suffix}"
    try:
        results = evaluate(model, dataset, out, device, args.batch_size, args.num_workers, args.postprocess,
                           args.panels, dtype, label_map, truth_map)
    except DataError as e:                          # a photo or mask that cannot be read as the data set's
        sys.exit(f"error: {e}")
    results["precision"] = str(dtype or torch.float32).removeprefix("torch.")
    print(report(results, out, args.postprocess))
    if args.split == "test" and dataset.layout.test_rule == "published":   # another view of a test outfit
        all_stems = [p.stem for p in find_pairs(args.data_dir, layout=dataset.layout)]   # flatters the scores
        overlap = outfit_overlap([p.stem for p in dataset.pairs], all_stems)
        results["test_outfit_overlap"] = overlap
        print(f"test images sharing an outfit with a training or validation image: {overlap['images']} "
              f"of {overlap['of']}")
    (out / "metrics.json").write_text(json.dumps(results, indent=2))
    for i in range(min(args.backwards, len(dataset))):
        batch = {k: v[None] for k, v in dataset[i].items()}  # a batch of one
        image, target, _ = prepare_batch(batch, config.mean, config.std, device)   # (1, 3, H, W), (1, H, W)
        after, accuracy = run_backwards(model, image, target, config.mean, config.std,
                                        args.backwards_steps, args.backwards_lr)
        save_backwards(out / "backwards", dataset.pairs[i].stem, batch["image"][0].permute(1, 2, 0).numpy(),
                       to_rgb(after[0], config.mean, config.std))
        print(f"backwards {dataset.pairs[i].stem}: pixel accuracy against the target "
              f"{accuracy[0]:.4f} -> {accuracy[1]:.4f}")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
