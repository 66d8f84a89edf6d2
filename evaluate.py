"""Evaluate a checkpoint as published: per-label median IoU, pixel and subject accuracy, raw and
with boundary post-processing, on the held-out test split.

    python evaluate.py --checkpoint runs/tiny/model.pt --data_dir data/synthetic
    python evaluate.py --checkpoint runs/tiny/model.pt --data_dir data/synthetic --postprocess published regions
    python evaluate.py --summarize reference/published-stats/512_96.csv reference/published-stats/512_96_pp.csv

Raw scores the per-pixel argmax; --postprocess names the post-processing scored beside it
(postprocess.METHODS: `published`, the released algorithm, by default; `regions`; several at once;
`none`). Published figures (paper 1.3) are medians over images: per label, the median over the images
whose ground truth contains it of (intersection + 1) / (union + 1); pixel accuracy and subject
accuracy (pixels whose truth is not background), each the median of the per-image values. The
per-image CSV has exactly the columns of the published per-image statistics, so runs compare
row by row; `--summarize` rebuilds the table from such CSVs. Beyond the published table:
data-set-level IoU and mIoU from the summed confusion matrix, and a boundary F-score.
Outputs (in --out): per_image.csv (raw), per_image_postprocessed.csv (the first --postprocess
method; each further one in per_image_postprocessed_<method>.csv), table.md, table.csv,
metrics.json, panels/, backwards/.
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

from dataset import (IGNORE_INDEX, LABELS, NUM_LABELS, PALETTE, FashionDataset, boundary_target, find_pairs,
                     outfit_overlap, prepare_batch, prepare_images)
import postprocess

# Left out of the published table: labels under this share (in %) of the labelled pixels
# (neckwear, gloves, earrings and tie in the published test set).
RARE_PROPORTION = 0.001
# The boundary F-score counts a pixel as predicted boundary from this probability on.
BOUNDARY_THRESHOLD = 0.5
CSV_BLOCKS = ("intersection", "union", "predicted mass", "true mass", "iou score")
CSV_HEADER = (["file"] + [f"{name} {block}" for block in CSV_BLOCKS for name in LABELS]
              + ["pixel accuracy", "model pixel accuracy"]
              + [f"{name} iou score" for name in LABELS] + [f"{name} true mass" for name in LABELS])


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
    """A per-image CSV -> arrays: "iou score", "true mass" (N, 24), "pixel accuracy" and
    "model pixel accuracy" (N,). Empty cells are 0; repeated columns are read once."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or "file" not in rows[0]:
        raise ValueError(f"{path}: not a per-image statistics CSV (no 'file' column)")
    column = {}
    for i, name in enumerate(rows[0]):
        column.setdefault(name, i)
    missing = [n for n in CSV_HEADER if n not in column]
    if missing:
        raise ValueError(f"{path}: missing columns {missing[:5]}{' ...' if len(missing) > 5 else ''}")

    def values(names: list[str]) -> np.ndarray:
        return np.array([[float(r[column[n]] or 0) for n in names] for r in rows[1:]])

    return {"iou score": values([f"{n} iou score" for n in LABELS]),
            "true mass": values([f"{n} true mass" for n in LABELS]),
            "pixel accuracy": values(["pixel accuracy"])[:, 0],
            "model pixel accuracy": values(["model pixel accuracy"])[:, 0]}


def label_table(stats: dict[str, np.ndarray]) -> dict[str, np.ndarray | float]:
    """Per label: proportion (% of labelled pixels), frequency (images containing it), median IoU."""
    present = stats["true mass"] > 0                                          # (N, 24)
    iou = np.where(present, stats["iou score"], np.nan)
    with np.errstate(all="ignore"):
        median = np.array([np.median(iou[present[:, j], j]) if present[:, j].any() else np.nan
                           for j in range(NUM_LABELS)])
    return {"proportion": 100 * stats["true mass"].sum(0) / stats["true mass"].sum(),
            "frequency": present.sum(0), "median iou": median,
            "pixel accuracy": float(np.nanmedian(stats["pixel accuracy"])),
            "subject accuracy": float(np.nanmedian(stats["model pixel accuracy"]))}


def format_tables(tables: dict[str, dict]) -> tuple[str, list[list[str]]]:
    """Side-by-side columns (one per name) as Markdown and as CSV rows, labels by proportion."""
    first = next(iter(tables.values()))
    order = np.argsort(-first["proportion"], kind="stable")
    common = [j for j in order if first["proportion"][j] >= RARE_PROPORTION]
    rare = [LABELS[j] for j in order if 0 < first["frequency"][j] and first["proportion"][j] < RARE_PROPORTION]
    rows = [["label", "proportion", "frequency", *tables]]
    for j in common:
        rows.append([LABELS[j], f"{first['proportion'][j]:.4f}", str(first["frequency"][j]),
                     *(f"{t['median iou'][j]:.3f}" for t in tables.values())])
    for key in ("pixel accuracy", "subject accuracy"):
        rows.append([key, "", "", *(f"{t[key]:.3f}" for t in tables.values())])
    md = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    md += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    if rare:
        md.append(f"\nLeft out as rare (under {RARE_PROPORTION}% of labelled pixels): {', '.join(rare)}")
    return "\n".join(md), rows


def write_tables(tables: dict[str, dict], out: Path) -> str:
    markdown, rows = format_tables(tables)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(markdown + "\n")
    with open(out / "table.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return markdown


# ---- pictures -------------------------------------------------------------------------------------

def save_panel(path: Path, image: np.ndarray, maps: dict[str, np.ndarray], boundary: np.ndarray) -> None:
    """Side by side: the photo, each label map in colour, the boundary probability; a legend below.

    image: (H, W, 3) uint8; maps: title -> (H, W) label ids; boundary: (H, W) in [0, 1].
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    draw_panel([(image, maps, boundary)]).save(path)


def draw_panel(rows: list[tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]]) -> Image.Image:
    """One row per (image, maps, boundary) as save_panel lays it out, all the same size and maps
    under column titles; one legend below of every label shown."""
    h, w = rows[0][0].shape[:2]
    titles = ["image", *rows[0][1], "boundary"]
    present = sorted(set().union(*(np.unique(m[m < NUM_LABELS]).tolist() for _, maps, _ in rows
                                   for m in maps.values())))
    legend_rows = (len(present) + 3) // 4
    canvas = Image.new("RGB", (w * len(titles), h * len(rows) + 16 + 14 * legend_rows), "white")
    draw = ImageDraw.Draw(canvas)
    for i, title in enumerate(titles):
        draw.text((i * w + 3, 2), title, fill="black")
    for r, (image, maps, boundary) in enumerate(rows):
        tiles = [image] + [PALETTE[np.where(m < NUM_LABELS, m, 0)] for m in maps.values()]
        tiles.append(np.repeat((boundary * 255).astype(np.uint8)[..., None], 3, axis=2))
        for i, tile in enumerate(tiles):
            canvas.paste(Image.fromarray(tile), (i * w, 16 + r * h))
    column = canvas.width // 4
    for k, label in enumerate(present):
        x, y = (k % 4) * column + 3, h * len(rows) + 18 + (k // 4) * 14
        draw.rectangle([x, y, x + 10, y + 10], fill=tuple(int(c) for c in PALETTE[label]), outline="black")
        draw.text((x + 14, y), LABELS[label], fill="black")
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
             dtype: torch.dtype | None = None) -> dict:
    """Run the model over `dataset`, scoring the argmax ("raw") and each post-processing of
    `methods` (postprocess.METHODS names); write the per-image CSVs and panels; return the summaries.
    dtype: the autocast dtype (unet.pick_precision), None for fp32."""
    model.eval().to(device)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()
    variants = ["raw", *methods]
    rows = {v: [] for v in variants}
    cms = {v: torch.zeros(NUM_LABELS, NUM_LABELS, dtype=torch.int64) for v in variants}
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
            truth = batch["mask"][i, :h, :w]
            prob, edge = probs[i, :, :h, :w].numpy(), edge_probs[i, :h, :w].numpy()
            maps = {"raw": prob.argmax(0)}
            for method in methods:
                maps[method] = postprocess.run(method, prob, edge)
            name = dataset.pairs[index].mask.name
            for v, labels in maps.items():
                cm = confusion_matrix(torch.from_numpy(labels.astype(np.int64)), truth, NUM_LABELS)
                cms[v] += cm
                rows[v].append(csv_row(name, image_stats(cm)))
            edges += boundary_counts(edge >= BOUNDARY_THRESHOLD, boundary_target(truth).numpy() > 0)
            if panels > 0 and len(rows["raw"]) <= panels:
                save_panel(out / "panels" / f"{Path(name).stem}.png",
                           batch["image"][i, :, :h, :w].permute(1, 2, 0).numpy(),
                           {"truth": truth.numpy(), **maps}, edge)
    out.mkdir(parents=True, exist_ok=True)
    for v in variants:
        with open(out / per_image_csv(v, methods), "w", newline="") as f:
            csv.writer(f).writerows([CSV_HEADER, *rows[v]])
    return {v: {"pixel accuracy": pixel_accuracy(cms[v]), "mIoU": mean_iou(cms[v]),
                "IoU": dict(zip(LABELS, iou_per_label(cms[v]).tolist()))} for v in variants} | \
           {"boundary F-score": boundary_f_score(edges)}


def per_image_csv(variant: str, methods: tuple[str, ...]) -> str:
    """The per-image CSV's name: per_image.csv for raw, per_image_postprocessed.csv for the first method."""
    if variant == "raw":
        return "per_image.csv"
    return "per_image_postprocessed.csv" if variant == methods[0] else f"per_image_postprocessed_{variant}.csv"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--summarize", nargs="+", metavar="CSV", help="rebuild the table from per-image CSVs")
    p.add_argument("--checkpoint", help="model to evaluate")
    p.add_argument("--data_dir", help="DeepFashion-MultiModal root (images/, segm/)")
    p.add_argument("--split", default="test", choices=["test", "val", "train", "all"])
    p.add_argument("--test_split", help="file naming the test images (default: the published 1,270)")
    p.add_argument("--mode", default="center_strip", choices=["center_strip", "whole"],
                   help="center_strip: the published square strip; whole: the whole photo, padded")
    p.add_argument("--out", help="output folder (default: next to the checkpoint, eval-<split>)")
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


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.summarize:
        try:
            tables = {Path(p).stem: label_table(read_stats_csv(p)) for p in args.summarize}
        except (OSError, ValueError) as e:
            sys.exit(f"error: {e}")
        print(write_tables(tables, Path(args.out)) if args.out else format_tables(tables)[0])
        return
    from unet import load_model, pick_device, pick_precision   # here: --summarize needs no model code
    try:
        device = pick_device(args.device)
        dtype = pick_precision(args.precision, device)
        model = load_model(args.checkpoint)
        config = model.config
        dataset = FashionDataset(args.data_dir, args.split, image_size=config.image_size, mode=args.mode,
                                 size_multiple=config.size_multiple, test_split=args.test_split)
    except ValueError as e:                         # DataError and CheckpointError included
        sys.exit(f"error: {e}")
    out = Path(args.out) if args.out else Path(args.checkpoint).parent / f"eval-{args.split}"
    results = evaluate(model, dataset, out, device, args.batch_size, args.num_workers, args.postprocess,
                       args.panels, dtype)
    results["precision"] = str(dtype or torch.float32).removeprefix("torch.")
    tables = {v: label_table(read_stats_csv(out / per_image_csv(v, args.postprocess)))
              for v in ("raw", *args.postprocess)}
    print(write_tables(tables, out))
    for v in tables:
        print(f"{v}: data-set pixel accuracy {results[v]['pixel accuracy']:.4f}, mIoU {results[v]['mIoU']:.4f}")
    print(f"boundary F-score: {results['boundary F-score']:.4f}")
    if args.split == "test":   # another view of a test outfit in training flatters the scores
        overlap = outfit_overlap([p.stem for p in dataset.pairs], [p.stem for p in find_pairs(args.data_dir)])
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
