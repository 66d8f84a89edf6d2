"""Label sets, label maps and data layouts (dataset.py), and label-mapped scoring (evaluate.py) on a
known prediction/truth pair. Run: `python -m pytest tests/test_labels.py -q`."""
import csv
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import evaluate
import predict
from dataset import DataError, FashionDataset, find_pairs, get_layout, split_pairs
from images import read_mask
from labels import (DEEPFASHION_MM, IGNORE_INDEX, LABEL_DIR, LABELS, LabelSet, load_label_map, load_label_set,
                    shipped_names)
from synthetic import write_synthetic_lip
from unet import PRESETS, UNet, UNetOutput, load_model, model_checkpoint

LIP = ("background", "hat", "hair", "glove", "sunglasses", "upper-clothes", "dress", "coat", "socks", "pants",
       "jumpsuits", "scarf", "skirt", "face", "left-arm", "right-arm", "left-leg", "right-leg", "left-shoe",
       "right-shoe")


# --- label sets ----------------------------------------------------------------------------------

def test_shipped_label_sets_hold_the_published_lists():
    sets = {name: load_label_set(name) for name in shipped_names()}
    assert set(sets) == {"deepfashion-mm", "lip", "cihp", "atr", "fashn", "upper-lower-full"}
    assert sets["deepfashion-mm"] is DEEPFASHION_MM and sets["deepfashion-mm"].labels == LABELS
    assert sets["lip"].labels == LIP
    assert sets["cihp"].labels == LIP[:10] + ("torso-skin",) + LIP[11:]
    assert sets["atr"].labels == ("background", "hat", "hair", "sunglasses", "upper-clothes", "skirt", "pants",
                                  "dress", "belt", "left-shoe", "right-shoe", "face", "left-leg", "right-leg",
                                  "left-arm", "right-arm", "bag", "scarf")
    assert sets["fashn"].labels == ("background", "face", "hair", "top", "dress", "skirt", "pants", "belt", "bag",
                                    "hat", "scarf", "glasses", "arms", "hands", "legs", "feet", "torso", "jewelry")
    assert sets["upper-lower-full"].labels == ("background", "upper body", "lower body", "full body")
    for label_set in sets.values():
        assert label_set.source and label_set.colours.shape == (len(label_set), 3)
    flip = sets["lip"].flip_table                                   # left-X <-> right-X, the rest kept
    assert [flip[i] for i in range(20)] == list(range(14)) + [15, 14, 17, 16, 19, 18] and flip[255] == 255
    assert DEEPFASHION_MM.flip_table is None and sets["fashn"].flip_table is None


def test_a_label_set_file_of_ones_own(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"name": "mine", "labels": ["background", "shirt", "Left Sleeve", "right sleeve"]}))
    mine = load_label_set(str(path))
    assert mine.name == "mine" and len(mine) == 4 and mine.palette[:2] == DEEPFASHION_MM.palette[:2]
    assert mine.index("left_sleeve") == 2 and mine.flip_table[2:4] == (3, 2)
    assert LabelSet.from_dict(mine.to_dict()) == dataclasses.replace(mine, source=mine.source)
    with pytest.raises(DataError, match="unknown label 'tie' in label set mine; its labels: background, shirt"):
        mine.index("tie")
    for content, message in [('{"labels": ["a", "a"]}', "labels named twice: a"),
                             ('{"labels": ["a", "b"], "palette": [[0, 0, 0]]}', "palette needs 2"),
                             ('{"labels": ["a"], "colours": []}', "unknown keys"),
                             ("not json", "not JSON"), ('{"names": []}', "not a label set")]:
        path.write_text(content)
        with pytest.raises(DataError, match=message):
            load_label_set(str(path))
    with pytest.raises(DataError, match="neither a shipped one"):
        load_label_set("no-such-set")


def test_a_checkpoint_carries_its_label_set_and_old_ones_load_as_deepfashion_mm(tmp_path):
    lip = load_label_set("lip")
    model = UNet(dataclasses.replace(PRESETS["tiny"], base_features=4, image_size=32, num_labels=20), lip)
    torch.save(model_checkpoint(model), tmp_path / "lip.pt")
    assert load_model(tmp_path / "lip.pt").label_set == lip
    old = model_checkpoint(UNet(dataclasses.replace(PRESETS["tiny"], base_features=4, image_size=32)))
    del old["labels"]                                                # format 2, written before label sets
    torch.save(old, tmp_path / "old.pt")
    assert load_model(tmp_path / "old.pt").label_set is DEEPFASHION_MM
    with pytest.raises(ValueError, match="label set lip has 20 labels, the model 24"):
        UNet(dataclasses.replace(PRESETS["tiny"], base_features=4), lip)


def test_onnx_metadata_gives_the_label_set():
    lip = load_label_set("lip")
    props = {"mean": "[0, 0, 0]", "std": "[1, 1, 1]", "image_size": "32", "size_multiple": "32",
             "labels": json.dumps(list(lip.labels)), "palette": json.dumps([list(c) for c in lip.palette]),
             "label_set": '"lip"', "fit": '"long_side"'}
    meta = predict.read_onnx_metadata(Path("m.onnx"), props)
    assert meta["label_set"].labels == lip.labels and meta["label_set"].palette == lip.palette
    assert meta["fit"] == "long_side"
    older = {k: v for k, v in props.items() if k in predict.ONNX_METADATA}
    older["labels"] = json.dumps(list(LABELS))                     # a file from before label sets
    assert predict.read_onnx_metadata(Path("m.onnx"), older)["label_set"] is DEEPFASHION_MM


# --- label maps ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["u2net", "atr", "lip", "fashn"])
def test_every_source_label_of_a_shipped_map_maps_somewhere_or_is_listed_as_unmapped(name):
    raw = json.loads((LABEL_DIR / "maps" / f"{name}.json").read_text())
    source, target = load_label_set(raw["source"]), load_label_set(raw["target"])
    assert source is DEEPFASHION_MM
    for label in source.labels:
        assert (label in raw["map"]) != (label in raw["unmapped"]), label
        assert label in raw["map"] and raw["map"][label] in target.labels or raw["unmapped"][label], label
    reached = set(raw["map"].values())
    assert {t for t in target.labels if t not in reached} == set(raw["no_counterpart"])
    assert all(raw["no_counterpart"].values())                      # each says why
    mapping = load_label_map(name)
    table = mapping.markdown()
    assert all(f"| {t} |" in table for t in target.labels)
    assert all(f"| (unmapped) | {s} |" in table for s in raw["unmapped"])


@pytest.mark.parametrize("source, garments", [
    ("lip", {"upper-clothes": "upper body", "coat": "upper body", "pants": "lower body", "skirt": "lower body",
             "dress": "full body", "jumpsuits": "full body"}),
    ("cihp", {"upper-clothes": "upper body", "coat": "upper body", "pants": "lower body", "skirt": "lower body",
              "dress": "full body"}),
    ("atr", {"upper-clothes": "upper body", "pants": "lower body", "skirt": "lower body", "dress": "full body"}),
    ("fashn", {"top": "upper body", "pants": "lower body", "skirt": "lower body", "dress": "full body"}),
])
def test_each_other_sets_map_into_upper_lower_full_is_complete(source, garments):
    name = f"{source}-to-upper-lower-full"
    raw = json.loads((LABEL_DIR / "maps" / f"{name}.json").read_text())
    src, target = load_label_set(raw["source"]), load_label_set(raw["target"])
    assert src.name == source and target.name == "upper-lower-full" and raw["name"] == name
    for label in src.labels:
        assert (label in raw["map"]) != (label in raw["unmapped"]), label
        assert label in raw["map"] and raw["map"][label] in target.labels or raw["unmapped"][label], label
    reached = set(raw["map"].values())
    assert {t for t in target.labels if t not in reached} == set(raw["no_counterpart"])
    assert all(raw["no_counterpart"].values()) and all(raw["notes"].values())
    mapping = load_label_map(name)
    assert all(f"| {t} |" in mapping.markdown() for t in target.labels)
    # garments only, as the u2net map: the rest (accessories, footwear, hair, face, skin) is background
    assert {n: t for n, t in raw["map"].items() if t != "background"} == garments
    assert load_label_map("deepfashion-mm-to-upper-lower-full").name == "u2net"    # the family's name for it


def test_shipped_maps_by_hand():
    u2net = load_label_map("topformer")                             # the same 4-class set
    assert u2net.name == "u2net" and u2net.target.name == "upper-lower-full"
    ids = np.array([LABELS.index(n) for n in ("top", "outer", "pants", "skirt", "dress", "rompers", "skin", "bag")])
    assert u2net.apply(ids).tolist() == [1, 1, 2, 2, 3, 3, 0, 0]
    lip = load_label_map("lip")
    assert lip.apply(np.array([LABELS.index("skin"), LABELS.index("outer"), IGNORE_INDEX])).tolist() == \
        [IGNORE_INDEX, LIP.index("coat"), IGNORE_INDEX]
    assert lip.apply(np.array([LABELS.index("footwear")]), unmapped=20).tolist() == [20]


def test_a_map_file_of_ones_own_is_checked(tmp_path):
    (tmp_path / "coarse.json").write_text(json.dumps({"name": "coarse", "labels": ["background", "clothes", "person"]}))
    rules = {"map": {n: "clothes" for n in LABELS[1:7]} | {"background": "background", "hair": "person",
                                                            "face": "person", "skin": "person"},
             "unmapped": {n: "an accessory" for n in LABELS if n not in LABELS[:7] + ("hair", "face", "skin")}}
    path = tmp_path / "coarse-map.json"
    path.write_text(json.dumps({"target": "coarse.json", **rules}))  # relative to the map file
    mapping = load_label_map(str(path))
    assert mapping.name == "coarse-map" and mapping.apply(np.array([5, 13, 11])).tolist() == [1, 2, 255]
    broken = {"target": "coarse.json", "map": {**rules["map"], "tie": "tie"}, "unmapped": dict(rules["unmapped"])}
    del broken["unmapped"]["belt"]
    broken["unmapped"]["tie"] = "twice"
    path.write_text(json.dumps(broken))
    with pytest.raises(DataError) as caught:
        load_label_map(str(path))
    message = str(caught.value)
    assert "'tie' (for 'tie') is not a coarse label" in message and "'belt' is neither mapped nor listed" in message
    assert "'tie' is both mapped and unmapped" in message
    with pytest.raises(DataError, match="maps from label set deepfashion-mm .* the model's is lip"):
        load_label_map("u2net", load_label_set("lip"))


# --- layouts ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lip_set(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lip")
    write_synthetic_lip(root, 10, seed=2, width=64, height=96)
    return root


def test_lip_layout_as_its_archives_unpack(lip_set):
    pairs = find_pairs(lip_set, layout="lip")
    assert len(pairs) == 10 and {p.part for p in pairs} == {"train", "test"}
    test = split_pairs(pairs, "test", layout="lip")
    assert {p.stem for p in test} == set((lip_set / "TrainVal_images" / "val_id.txt").read_text().split())
    train, val = (split_pairs(pairs, s, layout="lip", val_fraction=0.2) for s in ("train", "val"))
    assert len(train) + len(val) + len(test) == 10 and val and not {p.stem for p in val} & {p.stem for p in train}
    lip = load_label_set("lip")
    present = set().union(*(np.unique(read_mask(p.mask, lip, True)).tolist() for p in pairs))
    assert {LIP.index(n) for n in ("left-arm", "right-arm", "left-shoe", "right-shoe", "face", "hair")} <= present
    assert present <= set(range(20)) | {IGNORE_INDEX}
    flat = lip_set.parent / "lip-flat"                               # SCHP's layout: the folders side by side
    for part in ("train", "val"):
        shutil.copytree(lip_set / "TrainVal_images" / f"{part}_images", flat / f"{part}_images")
        shutil.copytree(lip_set / "TrainVal_parsing_annotations" / f"{part}_segmentations",
                        flat / f"{part}_segmentations")
    assert [p.stem for p in find_pairs(flat, layout="lip")] == [p.stem for p in pairs]


def test_cihp_and_folders_layouts(lip_set, tmp_path):
    pairs = find_pairs(lip_set, layout="lip")
    cihp = tmp_path / "CIHP" / "instance-level_human_parsing"
    for pair in pairs:
        part = "Validation" if pair.part == "test" else "Training"
        for kind, src in (("Images", pair.image), ("Category_ids", pair.mask)):
            (cihp / part / kind).mkdir(parents=True, exist_ok=True)
            shutil.copy(src, cihp / part / kind / src.name)
    found = find_pairs(tmp_path / "CIHP", layout="cihp")
    assert [(p.stem, p.part) for p in found] == [(p.stem, p.part) for p in pairs]

    own = tmp_path / "own"
    (own / "images").mkdir(parents=True)
    (own / "masks").mkdir()
    for pair in pairs:
        Image.open(pair.image).save(own / "images" / f"{pair.stem}.png")
        shutil.copy(pair.mask, own / "masks" / f"{pair.stem}_mask.png")
    folders = get_layout("folders", "{stem}_mask.png")
    stems = [p.stem for p in find_pairs(own, layout=folders)]
    assert stems == [p.stem for p in pairs]
    test, train = (split_pairs(find_pairs(own, layout=folders), s, layout=folders, test_fraction=0.3, val_fraction=0)
                   for s in ("test", "train"))
    assert 1 <= len(test) <= 5 and len(test) + len(train) == 10
    again = split_pairs(find_pairs(own, layout=folders), "test", layout=folders, test_fraction=0.3)
    assert [p.stem for p in again] == [p.stem for p in test]        # a hash of the names, not a draw
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(own / "masks" / "stray_mask.png")
    with pytest.raises(DataError, match="masks: 1 mask\\(s\\) without a photo in images/: stray_mask.png"):
        find_pairs(own, layout=folders)
    with pytest.raises(DataError, match="folder missing .*layout folders expects images/<stem>"):
        find_pairs(own / "images", layout=folders)


def test_a_mask_value_outside_the_label_set_names_the_file_and_the_value(lip_set, tmp_path):
    pair = find_pairs(lip_set, layout="lip")[0]
    bad = tmp_path / "bad.png"
    ids = read_mask(pair.mask, load_label_set("lip"), True).copy()
    ids[:2, :3] = 20                                                 # LIP's ids end at 19; 255 is unlabelled
    Image.fromarray(ids).save(bad)
    with pytest.raises(DataError, match=r"bad.png: label values outside label set lip \(ids 0-19, 255 = "
                                        r"unlabelled\): 20 \(6 px\)"):
        read_mask(bad, load_label_set("lip"), unlabelled_255=True)
    with pytest.raises(DataError, match=r"bad.png: label values outside label set deepfashion-mm \(ids 0-23\): 255"):
        read_mask(bad, DEEPFASHION_MM)


def test_letterbox_samples_fit_the_whole_photo_and_flips_swap_sides(lip_set):
    lip = load_label_set("lip")
    common = dict(image_size=32, layout="lip", labels=lip, split="all")
    plain = FashionDataset(lip_set, mode="letterbox", **common)
    sample = plain[0]
    width, height = Image.open(plain.pairs[0].image).size
    assert sample["image"].shape == (3, 32, 32) and sample["mask"].shape == (32, 32)
    assert sample["valid_hw"].tolist() == [32, round(width * 32 / height)]          # the long side fits
    assert (sample["mask"][:, sample["valid_hw"][1]:] == IGNORE_INDEX).all()
    rand = FashionDataset(lip_set, mode="random_letterbox", **common)
    flipped = 0
    for epoch in range(6):
        rand.set_epoch(epoch)
        s = rand[0]
        w = s["valid_hw"][1]
        if torch.equal(s["image"][:, :, :w], sample["image"][:, :, :w].flip(-1)):
            flipped += 1
            mirror = sample["mask"][:, :w].flip(-1)
            left, right = LIP.index("left-arm"), LIP.index("right-arm")
            assert torch.equal(s["mask"][:, :w] == left, mirror == right)
            assert torch.equal(s["mask"][:, :w] == right, mirror == left)
    assert flipped


# --- scoring in a mapped label set ----------------------------------------------------------------

class FixedModel(nn.Module):
    """Predicts the given (H, W) DF-MM label maps, one image after the other."""

    def __init__(self, predictions: list[np.ndarray], size: int):
        super().__init__()
        self.config = dataclasses.replace(PRESETS["tiny"], image_size=size)
        self.label_set = DEEPFASHION_MM
        self.predictions = list(predictions)

    def forward(self, image: torch.Tensor) -> UNetOutput:
        pred = torch.from_numpy(self.predictions.pop(0)).long()                   # (H, W)
        logits = 10.0 * F_one_hot(pred, len(LABELS))                              # (1, L, H, W)
        return UNetOutput(logits, torch.zeros(image.shape[0], *image.shape[2:]))


def F_one_hot(pred: torch.Tensor, count: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(pred, count).permute(2, 0, 1)[None].float()


def _known_pair(root: Path, truths: dict[str, np.ndarray]) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "segm").mkdir()
    for stem, truth in truths.items():
        Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(root / "images" / f"{stem}.jpg")
        Image.fromarray(truth.astype(np.uint8)).save(root / "segm" / f"{stem}_segm.png")
    split = root / "split.txt"
    split.write_text("".join(f"{s}\n" for s in truths))
    return split


def _rows(*bands: tuple[int, int, str]) -> np.ndarray:
    """(64, 64) DF-MM ids: rows [start, end) of label name, background elsewhere."""
    ids = np.zeros((64, 64), np.uint8)
    for start, end, name in bands:
        ids[start:end] = LABELS.index(name)
    return ids


def test_label_map_u2net_on_a_known_prediction_truth_pair(tmp_path):
    # image a: truth top over pants; predicted outer (upper body: right), skirt (lower: right) and dress
    # (full body: wrong). image b: truth a band of dress on background; predicted rompers (full body)
    # and hair (background in the 4-class set)
    truths = {"a": _rows((0, 32, "top"), (32, 64, "pants")), "b": _rows((0, 16, "dress"))}
    preds = [_rows((0, 32, "outer"), (32, 48, "skirt"), (48, 64, "dress")), _rows((0, 16, "rompers"), (16, 64, "hair"))]
    split = _known_pair(tmp_path / "data", truths)
    dataset = FashionDataset(tmp_path / "data", "test", image_size=64, mode="center_strip", test_split=split)
    out = tmp_path / "eval"
    results = evaluate.evaluate(FixedModel(preds, 64), dataset, out, torch.device("cpu"), batch_size=1,
                                num_workers=0, methods=(), panels=1, label_map=load_label_map("u2net"))
    text = evaluate.report(results, out, ())
    # the published median table: per label the median over images with it in the truth of (I + 1) / (U + 1)
    table = {r[0]: r for r in csv.reader(open(out / "table.csv"))}
    assert table["lower body"][3] == f"{1025 / 2049:.3f}"          # a: I 1024, U 2048; only a has it
    assert table["upper body"][3] == table["full body"][3] == table["background"][3] == "1.000"
    assert table["pixel accuracy"][3] == "0.875" and table["subject accuracy"][3] == "0.875"   # 0.75, 1.0
    # the data-set IoU of the summed confusion matrix
    raw = results["raw"]
    assert raw["IoU"] == pytest.approx({"background": 1.0, "upper body": 1.0, "lower body": 0.5, "full body": 0.5})
    assert raw["mIoU"] == pytest.approx(0.75) and raw["pixel accuracy"] == pytest.approx(7168 / 8192)
    # TopFormer's: per-image IoU with absent labels 0, the mean over the images
    assert raw["mean image IoU"] == pytest.approx({"background": (0 + 1) / 2, "upper body": (1 + 0) / 2,
                                                   "lower body": (0.5 + 0) / 2, "full body": (0 + 1) / 2})
    assert raw["mean image IoU, labels but background"] == pytest.approx((0.5 + 0.25 + 0.5) / 3)
    assert "| lower body | 0.250 |" in (out / "table.md").read_text() and "0.4167" in text
    header = next(csv.reader(open(out / "per_image.csv")))
    assert header == evaluate.csv_header(("background", "upper body", "lower body", "full body"))
    assert len(list((out / "panels").glob("*.png"))) == 1


def test_an_unmapped_prediction_is_wrong_and_unmapped_truth_is_not_scored(tmp_path):
    truths = {"a": _rows((0, 32, "top"), (32, 64, "skin"))}          # LIP has no skin: rows 32-63 unscored
    preds = [_rows((0, 16, "skin"), (16, 64, "top"))]                 # skin over the top: wrong
    split = _known_pair(tmp_path / "data", truths)
    dataset = FashionDataset(tmp_path / "data", "test", image_size=64, mode="center_strip", test_split=split)
    results = evaluate.evaluate(FixedModel(preds, 64), dataset, tmp_path / "eval", torch.device("cpu"),
                                batch_size=1, num_workers=0, methods=(), panels=0, label_map=load_label_map("lip"))
    raw = results["raw"]
    assert raw["pixel accuracy"] == pytest.approx(0.5)               # 1024 of the 2048 scored pixels
    assert raw["IoU"]["upper-clothes"] == pytest.approx(0.5) and np.isnan(raw["IoU"]["skirt"])
    stats = evaluate.read_stats_csv(tmp_path / "eval" / "per_image.csv")
    assert stats["labels"] == LIP and stats["union"][0, LIP.index("upper-clothes")] == 2048


def test_the_labels_page_shows_each_shipped_map_as_its_file_says():
    page = (Path(__file__).resolve().parents[1] / "docs" / "labels.md").read_text()
    for name in shipped_names("maps"):
        assert load_label_map(name).markdown() in page, name
    for heading in ("## Training on LIP, CIHP, ATR or your own folders", "## Fine-tuning onto a new label set",
                    "## Label maps", "## Categories: masks and cut-outs", '"palette": [[0, 0, 0]'):
        assert heading in page
