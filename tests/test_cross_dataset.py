"""Scoring across data sets (labels.scoring_maps, evaluate.py --label_map / --truth_map / --labels): a model
scored on another data set in that set's own labels, and two label sets scored in the shared 4-class one, on a
hand-made LIP pair counted by hand and end to end on synthetic LIP data.
Run: `python -m pytest tests/test_cross_dataset.py -q`."""
import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import evaluate
from dataset import FashionDataset
from labels import DEEPFASHION_MM, IGNORE_INDEX, DataError, load_label_map, load_label_set, scoring_maps
from synthetic import write_synthetic_dataset, write_synthetic_lip
from unet import PRESETS, UNet, UNetOutput, model_checkpoint

LIP = load_label_set("lip")
SIDED = ("left-arm", "right-arm", "left-leg", "right-leg", "left-shoe", "right-shoe")   # LIP's, no DF-MM label


def test_which_maps_score_what():
    lip_map, u2net, lip_ulf = load_label_map("lip"), load_label_map("u2net"), load_label_map("lip-to-upper-lower-full")
    plain = scoring_maps(DEEPFASHION_MM, DEEPFASHION_MM)
    assert plain.labels is DEEPFASHION_MM and plain.truth_map is None and plain.not_scored == ()
    same = scoring_maps(DEEPFASHION_MM, DEEPFASHION_MM, lip_map)            # DF-MM masks: mapped like predictions
    assert same.labels.name == "lip" and same.truth_map is lip_map and same.not_scored == SIDED
    own = scoring_maps(DEEPFASHION_MM, LIP, lip_map)                        # LIP masks: as annotated
    assert own.truth_map is None and own.not_scored == SIDED
    table = own.truth_table()
    assert table[[LIP.index("upper-clothes"), LIP.index("left-arm"), LIP.index("right-shoe"), 255]].tolist() == \
        [LIP.index("upper-clothes"), IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]
    shared = scoring_maps(DEEPFASHION_MM, LIP, u2net, lip_ulf)               # both into the 4 classes
    assert shared.labels.name == "upper-lower-full" and shared.truth_map is lip_ulf and shared.not_scored == ()
    assert shared.truth_table()[[LIP.index("coat"), LIP.index("jumpsuits"), LIP.index("left-arm")]].tolist() == [1, 3, 0]
    lip_model = scoring_maps(LIP, load_label_set("cihp"), lip_ulf, load_label_map("cihp-to-upper-lower-full"))
    assert lip_model.labels.name == "upper-lower-full"
    with pytest.raises(DataError, match="masks of label set lip cannot be scored against a model of deepfashion-mm "
                                        "as it predicts; shipped maps that fit: label map lip \\(into lip\\); u2net "
                                        "with truth map lip-to-upper-lower-full"):
        scoring_maps(DEEPFASHION_MM, LIP)
    with pytest.raises(DataError, match="mapped into upper-lower-full"):
        scoring_maps(DEEPFASHION_MM, LIP, u2net)                            # LIP masks need their own map
    with pytest.raises(DataError, match="truth map lip-to-upper-lower-full maps lip -> upper-lower-full; it needs "
                                        "to map the masks' atr -> upper-lower-full"):
        scoring_maps(DEEPFASHION_MM, load_label_set("atr"), u2net, lip_ulf)


# --- a hand-made LIP pair, counted by hand ----------------------------------------------------------------

class FixedModel(nn.Module):
    """Predicts the given (64, 64) label maps of its label set, one image after the other."""

    def __init__(self, predictions: list[np.ndarray], label_set=DEEPFASHION_MM):
        super().__init__()
        self.config = dataclasses.replace(PRESETS["tiny"], image_size=64)
        self.label_set, self.predictions = label_set, list(predictions)

    def forward(self, image: torch.Tensor) -> UNetOutput:
        pred = torch.from_numpy(self.predictions.pop(0)).long()                       # (64, 64)
        logits = 10.0 * nn.functional.one_hot(pred, len(self.label_set)).permute(2, 0, 1)[None].float()
        return UNetOutput(logits, torch.zeros(image.shape[0], *image.shape[2:]))


def bands(label_set, *spans: tuple[int, int, str]) -> np.ndarray:
    """(64, 64) ids of label_set: rows [start, end) of each named label, background elsewhere."""
    ids = np.zeros((64, 64), np.uint8)
    for start, end, name in spans:
        ids[start:end] = label_set.index(name)
    return ids


@pytest.fixture()
def lip_pair(tmp_path) -> FashionDataset:
    """One LIP val image (SCHP's flat folders): upper-clothes rows 0-15, left-arm 16-31, pants 32-47, background
    48-63; and a train image, which LIP's layout needs."""
    truth = bands(LIP, (0, 16, "upper-clothes"), (16, 32, "left-arm"), (32, 48, "pants"))
    for part, stem in (("val", "1_100"), ("train", "2_200")):
        (tmp_path / f"{part}_images").mkdir()
        (tmp_path / f"{part}_segmentations").mkdir()
        Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(tmp_path / f"{part}_images" / f"{stem}.jpg")
        Image.fromarray(truth).save(tmp_path / f"{part}_segmentations" / f"{stem}.png")
    return FashionDataset(tmp_path, "test", image_size=64, mode="letterbox", layout="lip", labels=LIP)


# DF-MM predictions: top 0-7, outer 8-15, skin 16-31 and 40-47, leggings 32-39, background 48-55, pants 56-63
PREDICTION = bands(DEEPFASHION_MM, (0, 8, "top"), (8, 16, "outer"), (16, 32, "skin"), (32, 40, "leggings"),
                   (40, 48, "skin"), (56, 64, "pants"))
ROW = 64                                                                                 # pixels a row


def scored(dataset, tmp_path, **maps) -> tuple[dict, dict]:
    out = tmp_path / "eval"
    results = evaluate.evaluate(FixedModel([PREDICTION]), dataset, out, torch.device("cpu"), batch_size=1,
                                num_workers=0, methods=(), panels=0, **maps)
    evaluate.report(results, out, ())
    stats = evaluate.read_stats_csv(out / "per_image.csv")
    return results, {name: {block: stats[block][0, j] for block in ("intersection", "union", "true mass")}
                     for j, name in enumerate(stats["labels"])} | {"image": stats}


def test_a_dfmm_model_on_lips_own_masks_by_hand(lip_pair, tmp_path):
    # in LIP's labels: top -> upper-clothes, outer -> coat, leggings and pants -> pants, skin -> unmapped (wrong
    # wherever it falls); LIP's left-arm has no DF-MM counterpart: rows 16-31 are not scored. The confusion
    # matrix (truth rows, prediction columns) of the 48 scored rows:
    #   upper-clothes: upper-clothes 8 rows, coat 8;  pants: pants 8, unmapped 8;  background: background 8, pants 8
    results, cells = scored(lip_pair, tmp_path, label_map=load_label_map("lip"))
    assert cells["upper-clothes"] == {"intersection": 8 * ROW, "union": 16 * ROW, "true mass": 16 * ROW}
    assert cells["coat"] == {"intersection": 0, "union": 8 * ROW, "true mass": 0}
    assert cells["pants"] == {"intersection": 8 * ROW, "union": 24 * ROW, "true mass": 16 * ROW}
    assert cells["background"] == {"intersection": 8 * ROW, "union": 16 * ROW, "true mass": 16 * ROW}
    assert cells["left-arm"] == {"intersection": 0, "union": 0, "true mass": 0}           # not scored
    raw = results["raw"]
    assert raw["pixel accuracy"] == pytest.approx(24 / 48)                                # 3 x 8 rows right
    assert raw["IoU"]["upper-clothes"] == pytest.approx(0.5) and raw["IoU"]["coat"] == 0.0
    assert raw["IoU"]["pants"] == pytest.approx(1 / 3) and raw["IoU"]["background"] == pytest.approx(0.5)
    assert raw["mIoU"] == pytest.approx((0.5 + 0 + 1 / 3 + 0.5) / 4)                     # labels true or predicted
    assert results["not scored"] == list(SIDED) and results["labels"] == "lip" and "truth_map" not in results
    image = cells["image"]
    assert image["pixel accuracy"][0] == pytest.approx(0.5) and image["model pixel accuracy"][0] == pytest.approx(0.5)
    table = {r[0]: r for r in csv.reader(open(tmp_path / "eval" / "table.csv"))}
    assert table["pants"][3] == f"{(8 * ROW + 1) / (24 * ROW + 1):.3f}"                  # (I + 1) / (U + 1)
    assert "left-arm" not in table
    assert "Not scored (no label of the model's maps to them" in (tmp_path / "eval" / "table.md").read_text()


def test_a_dfmm_model_on_lip_in_the_shared_four_classes_by_hand(lip_pair, tmp_path):
    # both into upper / lower / full body: LIP's upper-clothes -> upper, left-arm -> background (scored now),
    # pants -> lower; DF-MM's top, outer -> upper, skin -> background, leggings, pants -> lower. By rows:
    #   0-15 upper/upper, 16-31 background/background, 32-39 lower/lower, 40-47 lower/background,
    #   48-55 background/background, 56-63 background/lower
    results, cells = scored(lip_pair, tmp_path, label_map=load_label_map("u2net"),
                            truth_map=load_label_map("lip-to-upper-lower-full"))
    assert cells["background"] == {"intersection": 24 * ROW, "union": 40 * ROW, "true mass": 32 * ROW}
    assert cells["upper body"] == {"intersection": 16 * ROW, "union": 16 * ROW, "true mass": 16 * ROW}
    assert cells["lower body"] == {"intersection": 8 * ROW, "union": 24 * ROW, "true mass": 16 * ROW}
    assert cells["full body"] == {"intersection": 0, "union": 0, "true mass": 0}
    raw = results["raw"]
    assert raw["pixel accuracy"] == pytest.approx(48 / 64) and raw["mIoU"] == pytest.approx((0.6 + 1 + 1 / 3) / 3)
    assert raw["IoU"]["background"] == pytest.approx(0.6) and np.isnan(raw["IoU"]["full body"])
    assert "not scored" not in results and results["truth_map"] == "lip-to-upper-lower-full"
    assert cells["image"]["model pixel accuracy"][0] == pytest.approx(24 / 32)            # upper 16 + lower 8 of 32


# --- end to end on synthetic LIP data ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def lip_set(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lip")
    write_synthetic_lip(root, 6, seed=5, width=48, height=64, test_fraction=0.5)
    return root


def checkpoint(path: Path, label_set=DEEPFASHION_MM) -> Path:
    torch.manual_seed(0)
    config = dataclasses.replace(PRESETS["tiny"], image_size=32, num_labels=len(label_set))
    torch.save(model_checkpoint(UNet(config, label_set)), path)
    return path


FAST = ["--num_workers", "0", "--panels", "0", "--postprocess", "none"]


def test_a_dfmm_checkpoint_on_synthetic_lip_in_lips_labels_and_in_the_shared_set(lip_set, tmp_path):
    model = checkpoint(tmp_path / "dfmm.pt")
    evaluate.main(["--checkpoint", str(model), "--data_dir", str(lip_set), "--data_layout", "lip",
                   "--label_map", "lip", "--out", str(tmp_path / "own"), *FAST])
    rows = list(csv.reader(open(tmp_path / "own" / "per_image.csv")))
    assert rows[0] == evaluate.csv_header(LIP.labels) and len(rows) == 1 + 3               # LIP's val part
    masses = evaluate.read_stats_csv(tmp_path / "own" / "per_image.csv")["true mass"]
    assert masses[:, [LIP.index(n) for n in SIDED]].sum() == 0 and masses[:, LIP.index("face")].sum() > 0
    metrics = json.loads((tmp_path / "own" / "metrics.json").read_text())
    assert metrics["labels"] == "lip" and metrics["not scored"] == list(SIDED)
    assert json.loads((tmp_path / "own" / "summary.json").read_text())["columns"] == ["raw"]

    evaluate.main(["--checkpoint", str(model), "--data_dir", str(lip_set), "--data_layout", "lip", "--label_map",
                   "u2net", "--truth_map", "lip-to-upper-lower-full", "--out", str(tmp_path / "shared"), *FAST])
    stats = evaluate.read_stats_csv(tmp_path / "shared" / "per_image.csv")
    assert stats["labels"] == ("background", "upper body", "lower body", "full body")
    assert (stats["true mass"][:, 0] > 0).all()                                           # arms and legs too


def test_a_lip_checkpoint_on_deepfashion_data_in_the_shared_set(tmp_path, capsys):
    data = tmp_path / "dfmm"
    write_synthetic_dataset(data, 10, seed=3, width=48, height=64)
    model = checkpoint(tmp_path / "lip.pt", LIP)
    with pytest.raises(SystemExit, match="segm.png: label values outside label set lip"):   # a layout without
        evaluate.main(["--checkpoint", str(model), "--data_dir", str(data), "--label_map",     # its own set: the
                       "lip-to-upper-lower-full", *FAST])                                      # model's, unless --labels
    evaluate.main(["--checkpoint", str(model), "--data_dir", str(data), "--labels", "deepfashion-mm",
                   "--label_map", "lip-to-upper-lower-full", "--truth_map", "deepfashion-mm-to-upper-lower-full",
                   *FAST])
    out = tmp_path / "eval-test-lip-to-upper-lower-full"
    assert json.loads((out / "metrics.json").read_text())["truth_map"] == "u2net"
    assert evaluate.read_stats_csv(out / "per_image.csv")["labels"][1:] == ("upper body", "lower body", "full body")
