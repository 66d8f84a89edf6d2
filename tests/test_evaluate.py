"""evaluate.py: metrics against hand-computed tables, the published table from the published
per-image CSVs, and a whole evaluation run on a small synthetic set."""
import csv
import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import evaluate
from labels import IGNORE_INDEX
from synthetic import write_synthetic_dataset
from unet import PRESETS, UNet, model_checkpoint

SEED_STATS = Path(__file__).resolve().parents[1] / "reference" / "published-stats"


def test_confusion_matrix_and_dataset_metrics_by_hand():
    target = torch.tensor([[0, 0, 1], [1, 2, IGNORE_INDEX]])
    pred = torch.tensor([[0, 1, 1], [1, 1, 0]])
    cm = evaluate.confusion_matrix(pred, target, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [0, 1, 0]]
    assert evaluate.pixel_accuracy(cm) == pytest.approx(3 / 5)
    iou = evaluate.iou_per_label(cm)          # 0: 1/(2+1-1)=1/2; 1: 2/(4+2-2)=1/2; 2: 0/(0+1-0)=0
    assert iou.tolist() == pytest.approx([0.5, 0.5, 0.0])
    assert evaluate.mean_iou(cm) == pytest.approx(1 / 3)
    absent = evaluate.iou_per_label(torch.tensor([[4, 0], [0, 0]]))
    assert absent[0] == 1 and torch.isnan(absent[1])           # neither present nor predicted


def test_image_stats_follow_the_published_definitions():
    # 4 pixels: truth background, top, top, skin; prediction background, top, skin, skin
    cm = evaluate.confusion_matrix(torch.tensor([0, 1, 15, 15]), torch.tensor([0, 1, 1, 15]), 24)
    s = evaluate.image_stats(cm)
    assert s["intersection"][[0, 1, 15]].tolist() == [1, 1, 1]
    assert s["union"][[0, 1, 15]].tolist() == [1, 2, 2]
    assert s["iou score"][1] == pytest.approx((1 + 1) / (2 + 1))
    assert s["iou score"][5] == 1.0                             # absent and not predicted
    assert s["pixel accuracy"] == pytest.approx(3 / 4)
    assert s["model pixel accuracy"] == pytest.approx(2 / 3)   # truth not background: 3 px, 2 right
    row = evaluate.csv_row("x_segm.png", s)
    assert len(row) == len(evaluate.CSV_HEADER)
    assert row[evaluate.CSV_HEADER.index("top union")] == "2"
    repeat = len(evaluate.CSV_HEADER) - 48                      # the trailing "iou score" repeat
    assert row[repeat + 1] == "0.666666666666667" and row[repeat + 5] == ""


def test_median_table_by_hand(tmp_path):
    header = evaluate.CSV_HEADER
    rows = []
    for name, (top_iou, top_mass) in {"a": (0.5, 10), "b": (0.9, 30), "c": (1.0, 0), "d": (0.7, 20)}.items():
        stats = {k: np.zeros(24) for k in evaluate.CSV_BLOCKS}
        stats["iou score"][:] = 1.0
        stats["iou score"][1], stats["true mass"][1] = top_iou, top_mass
        stats["true mass"][0] = 100 - top_mass
        stats["pixel accuracy"], stats["model pixel accuracy"] = top_iou, top_iou
        rows.append(evaluate.csv_row(name, stats))
    path = tmp_path / "stats.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    table = evaluate.label_table(evaluate.read_stats_csv(path))
    assert table["frequency"][1] == 3                           # image c has no top
    assert table["median iou"][1] == pytest.approx(0.7)         # median of 0.5, 0.9, 0.7
    assert table["proportion"][1] == pytest.approx(100 * 60 / 400)
    assert table["pixel accuracy"] == pytest.approx(0.8)        # median of 0.5, 0.9, 1.0, 0.7


def test_summarize_reproduces_the_published_512_96_column(capsys):
    evaluate.main(["--summarize", str(SEED_STATS / "512_96.csv")])
    out = capsys.readouterr().out
    published = {"background": "0.996", "skin": "0.935", "top": "0.940", "pants": "0.954",
                 "dress": "0.967", "outer": "0.818", "hair": "0.833", "belt": "0.143", "ring": "0.193",
                 "pixel accuracy": "0.988", "subject accuracy": "0.960"}
    cells = {line.split(" | ")[0].strip("| "): line.split(" | ")[-1].strip(" |") for line in out.splitlines()}
    for label, value in published.items():   # the point figure, then its interval: "0.996 [0.996, 0.996]"
        assert re.fullmatch(r"(\d\.\d{3}) \[(\d\.\d{3}), (\d\.\d{3})\]", cells[label]), cells[label]
        point, low, high = re.findall(r"\d\.\d{3}", cells[label])
        assert point == value and low <= point <= high, label
    assert "| skin | 5.9680 | 1270 |" in out


def test_summarize_puts_models_side_by_side(tmp_path):
    evaluate.main(["--summarize", str(SEED_STATS / "512_96.csv"), str(SEED_STATS / "512_96_pp.csv"),
                   "--out", str(tmp_path)])
    rows = list(csv.reader(open(tmp_path / "table.csv")))
    assert rows[0] == ["label", "proportion", "frequency", "512_96", "512_96_pp"]
    assert ["leggings", "0.1015", "35", "0.763", "0.895"] in rows
    assert ["subject accuracy", "", "", "0.960", "0.963"] in rows


@pytest.mark.parametrize("flags, methods", [
    ([], ("published",)), (["--postprocess", "regions"], ("regions",)),
    (["--postprocess", "published", "regions"], ("published", "regions")),
    (["--postprocess", "none"], ()), (["--no-postprocess"], ()),
])
def test_postprocess_flag_names_the_methods(flags, methods):
    assert evaluate.parse_args(["--checkpoint", "m.pt", "--data_dir", "d", *flags]).postprocess == methods
    assert [evaluate.per_image_csv(v, methods) for v in ("raw", *methods)] == \
        ["per_image.csv", "per_image_postprocessed.csv", "per_image_postprocessed_regions.csv"][:1 + len(methods)]


@pytest.mark.parametrize("flags", [["--postprocess", "none", "published"], ["--postprocess", "nope"],
                                   ["--postprocess", "regions", "regions"]])
def test_postprocess_flag_refuses_nonsense(flags):
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--checkpoint", "m.pt", "--data_dir", "d", *flags])


def test_boundary_f_score_by_hand():
    truth = np.zeros((5, 5), bool)
    truth[2, :] = True                                           # 5 true boundary pixels
    pred = np.zeros((5, 5), bool)
    pred[3, :2] = True                                           # 1 px off: counts with tolerance 1
    pred[0, 4] = True                                            # far away: a false positive
    counts = evaluate.boundary_counts(pred, truth, tolerance=1)
    assert counts.tolist() == [2, 3, 3, 5]                       # truth px (2,0..2) lie near pred
    precision, recall = 2 / 3, 3 / 5
    assert evaluate.boundary_f_score(counts) == pytest.approx(2 * precision * recall / (precision + recall))


def test_a_whole_evaluation_run(tmp_path):
    data = tmp_path / "data"
    write_synthetic_dataset(data, 20, seed=3, width=150, height=220)
    torch.manual_seed(0)
    ckpt = tmp_path / "model.pt"
    torch.save(model_checkpoint(UNet(dataclasses.replace(PRESETS["tiny"], image_size=32))), ckpt)
    out = tmp_path / "eval"
    evaluate.main(["--checkpoint", str(ckpt), "--data_dir", str(data), "--out", str(out), "--num_workers", "0",
                   "--panels", "1", "--backwards", "1", "--backwards_steps", "3", "--postprocess", "published",
                   "regions"])
    test_images = 2                                              # 10% of 20 names are published test names
    for name in ("per_image.csv", "per_image_postprocessed.csv", "per_image_postprocessed_regions.csv"):
        rows = list(csv.reader(open(out / name)))
        assert len(rows) == 1 + test_images
        assert rows[0] == next(csv.reader(open(SEED_STATS / "512_96.csv")))       # the very same columns
        masses = [float(v or 0) for v in rows[1][1 + 72:1 + 96]]                  # true mass block
        assert sum(masses) == 32 * 32
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["raw"]["mIoU"] <= 1 and 0 <= metrics["boundary F-score"] <= 1
    assert metrics["precision"] == "float32"                     # --precision auto on the CPU
    assert metrics["test_outfit_overlap"] == {"images": 1, "of": test_images}   # one has a view outside the list
    assert (out / "table.md").read_text().startswith("| label | proportion | frequency | raw | published | regions |")
    assert {"raw", "published", "regions"} <= set(metrics)
    assert len(list((out / "panels").glob("*.png"))) == 1
    assert {p.name.rsplit("_", 1)[1] for p in (out / "backwards").iterdir()} == {"before.png", "after.png",
                                                                                  "difference.png"}


def test_running_backwards_moves_the_output_towards_the_target():
    torch.manual_seed(0)
    config = dataclasses.replace(PRESETS["tiny"], image_size=64)
    model = UNet(config).eval()
    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        target = model(image).mask_logits.argmax(1)
    target[:, 16:48, 16:48] = 5                                  # ask for a block of pants
    after, accuracy = evaluate.run_backwards(model, image, target, config.mean, config.std)   # paper: 100 x 1e-3
    with torch.no_grad():
        # an untrained network is too chaotic for its argmax to follow, but the loss it is optimised for falls
        loss_before, loss_after = (F.cross_entropy(model(x).mask_logits, target).item() for x in (image, after))
    assert loss_after < 0.95 * loss_before
    assert len(accuracy) == 2 and all(0 <= a <= 1 for a in accuracy)
    assert after.shape == image.shape and not torch.equal(after, image)
