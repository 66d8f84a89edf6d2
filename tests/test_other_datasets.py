"""Another data set end to end: a synthetic set in LIP's layout with LIP's 20 labels trains, evaluates and
predicts with LIP's names; a DeepFashion-MultiModal model fine-tunes onto it; the staged recipe goes
on; predict.py --classes and --label_map on a real photo (matplotlib's sample of Grace Hopper).
Run: `python -m pytest tests/test_other_datasets.py -q`."""
import csv
import dataclasses
import json
import logging
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

import evaluate
import predict
import run
from dataset import find_pairs
from labels import DEEPFASHION_MM, IGNORE_INDEX, load_label_set
from synthetic import write_synthetic_lip
from unet import PRESETS, UNet, load_model, model_checkpoint, read_checkpoint

PHOTO = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"   # 512x600, a real photo
FAST = ["--image_size", "32", "--effective_batch_size", "2", "--num_workers", "0", "--max_steps", "2",
        "--checkpointing_steps", "2", "--val_fraction", "0.2"]


@pytest.fixture(scope="module")
def lip_set(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lip")
    write_synthetic_lip(root, 10, seed=4, width=64, height=96)
    return root


@pytest.fixture(scope="module")
def dfmm_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("dfmm") / "dfmm.pt"
    torch.save(model_checkpoint(UNet(dataclasses.replace(PRESETS["tiny"], image_size=32))), path)
    return path


@pytest.fixture(scope="module")
def lip_model(lip_set, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lip-run")
    run.main(["--data_dir", str(lip_set), "--data_layout", "lip", "--output_dir", str(out), *FAST])
    return out / "model.pt"


def test_a_lip_set_trains_evaluates_and_predicts_with_lips_names(lip_set, lip_model, tmp_path):
    model = load_model(lip_model)
    assert model.label_set == load_label_set("lip") and model.config.num_labels == 20
    assert model.config.fit == "long_side"                          # trained on letterboxes
    assert list(read_checkpoint(lip_model)["train_config"]["loss"]["class_weights"]) == [1.0] * 20

    out = tmp_path / "eval"                                          # the layout comes from the checkpoint
    evaluate.main(["--checkpoint", str(lip_model), "--data_dir", str(lip_set), "--out", str(out),
                   "--num_workers", "0", "--panels", "1", "--postprocess", "none"])
    rows = list(csv.reader(open(out / "per_image.csv")))
    val_ids = (lip_set / "TrainVal_images" / "val_id.txt").read_text().split()
    assert "left-arm iou score" in rows[0] and len(rows) == 1 + len(val_ids)   # LIP's val part is the test set
    assert json.loads((out / "metrics.json").read_text())["labels"] == "lip"
    assert "| face |" in (out / "table.md").read_text()

    photo = find_pairs(lip_set, layout="lip")[0].image
    predict.main(["--checkpoint", str(lip_model), str(photo), "--out", str(tmp_path / "pred"), "--masks"])
    summary = json.loads((tmp_path / "pred" / f"{photo.stem}.json").read_text())
    assert summary["label_set"] == "lip"
    assert set(summary["labels"]) <= set(load_label_set("lip").labels)
    names = {p.stem for p in (tmp_path / "pred" / f"{photo.stem}_masks").iterdir()}
    assert names == set(summary["labels"])


def test_a_deepfashion_model_fine_tunes_onto_lip(lip_set, dfmm_checkpoint, tmp_path, caplog):
    flags = ["--data_dir", str(lip_set), "--data_layout", "lip", "--pretrained_model_path", str(dfmm_checkpoint),
             "--output_dir", str(tmp_path / "ft"), *FAST]
    model, stage = run.build_model(run.parse_config(flags))
    before = read_checkpoint(dfmm_checkpoint)["model"]
    after = model.state_dict()
    assert set(after) == set(before) and stage == "all"
    for key, value in before.items():
        if key.startswith("label_head."):
            assert after[key].shape[0] == 20 and value.shape[0] == 24        # fresh, for LIP's 20
        else:
            assert torch.equal(after[key], value), key                      # every other weight loaded
    assert model.label_set.name == "lip"
    with caplog.at_level(logging.INFO, logger="run"):
        run.main(flags)
    assert any("label head starts fresh" in r.getMessage() and "every other weight is loaded" in r.getMessage()
               for r in caplog.records)
    tuned = tmp_path / "ft" / "model.pt"
    assert load_model(tuned).label_set.name == "lip"

    # the staged recipe goes on from there: the label set comes with the checkpoint
    run.main(["--data_dir", str(lip_set), "--data_layout", "lip", "--pretrained_model_path", str(tuned),
              "--upgrade_local_attention", "--local_attention_levels", "4", "--output_dir", str(tmp_path / "s4"),
              *FAST])
    staged = load_model(tmp_path / "s4" / "model.pt")
    assert staged.label_set.name == "lip" and staged.config.local_attention_levels == (4,)
    # a head-frozen stage cannot start a fresh head
    with pytest.raises(SystemExit, match="its fresh label head must train"):
        run.main([*flags[:6], "--upgrade_bottleneck", "--output_dir", str(tmp_path / "no"), *FAST])


def test_class_weights_and_labels_flags_are_checked_early():
    with pytest.raises(SystemExit):
        run.parse_config(["--data_layout", "lip", "--class_weights", *["1"] * 24])
    with pytest.raises(SystemExit):
        run.parse_config(["--label_weights", "left-arm=2"])           # not a DF-MM label
    cfg = run.parse_config(["--data_layout", "lip", "--label_weights", "left-arm=2"])
    assert list(cfg.loss.label_weights) == ["left-arm=2"]
    with pytest.raises(SystemExit):
        run.parse_config(["--mask_pattern", "{stem}_m.png"])          # only for --data_layout folders


@pytest.fixture(scope="module")
def dfmm_photo_model(tmp_path_factory) -> Path:
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("photo-model") / "tiny.pt"
    torch.save(model_checkpoint(UNet(dataclasses.replace(PRESETS["tiny"], image_size=64))), path)
    return path


def test_classes_on_a_real_photo_write_masks_and_exact_cutouts(dfmm_photo_model, tmp_path, capsys):
    first = tmp_path / "first"
    predict.main(["--checkpoint", str(dfmm_photo_model), str(PHOTO), "--out", str(first), "--no-postprocess"])
    found = json.loads((first / "grace_hopper.json").read_text())["labels"]
    chosen = sorted(found, key=lambda n: -found[n]["pixels"])[:2]    # the two largest predicted classes
    out = tmp_path / "out"
    predict.main(["--checkpoint", str(dfmm_photo_model), str(PHOTO), "--out", str(out), "--no-postprocess",
                  "--classes", ",".join(chosen)])
    labels = np.asarray(Image.open(out / "grace_hopper.png"))
    rgb = np.asarray(Image.open(PHOTO).convert("RGB"))
    folder = out / "grace_hopper_classes"
    for name in chosen:
        selected = labels == DEEPFASHION_MM.index(name)
        mask = np.asarray(Image.open(folder / f"{predict.file_name(name)}.png"))
        cutout = Image.open(folder / f"{predict.file_name(name)}_cutout.png")
        assert cutout.mode == "RGBA" and cutout.size == (512, 600) and selected.any()
        alpha = np.asarray(cutout)[..., 3]
        assert np.array_equal(mask, selected)
        assert np.array_equal(alpha == 0, ~selected) and (alpha[selected] == 255).all()   # exactly the unselected
        assert np.array_equal(np.asarray(cutout)[..., :3][selected], rgb[selected])        # original colours

    merged = tmp_path / "merged"
    predict.main(["--checkpoint", str(dfmm_photo_model), str(PHOTO), "--out", str(merged), "--no-postprocess",
                  "--classes", ",".join(chosen), "--merge"])
    both = np.isin(labels, [DEEPFASHION_MM.index(n) for n in chosen])
    name = "+".join(predict.file_name(n) for n in chosen)
    files = {p.name for p in (merged / "grace_hopper_classes").iterdir()}
    assert files == {f"{name}.png", f"{name}_cutout.png"}
    alpha = np.asarray(Image.open(merged / "grace_hopper_classes" / f"{name}_cutout.png"))[..., 3]
    assert np.array_equal(alpha == 0, ~both)

    with pytest.raises(SystemExit):
        predict.main(["--checkpoint", str(dfmm_photo_model), str(PHOTO), "--out", str(tmp_path / "x"),
                      "--classes", "top,trousers"])
    err = capsys.readouterr().err
    assert "unknown class(es) 'trousers'" in err and "background, top, outer, skirt" in err


def test_label_map_in_predict_on_a_real_photo(dfmm_photo_model, tmp_path):
    out = tmp_path / "mapped"
    predict.main(["--checkpoint", str(dfmm_photo_model), str(PHOTO), "--out", str(out), "--no-postprocess",
                  "--label_map", "lip", "--classes", "upper-clothes,skin", "--masks"])
    model_out = tmp_path / "plain"
    predict.main(["--checkpoint", str(dfmm_photo_model), str(PHOTO), "--out", str(model_out), "--no-postprocess"])
    plain = np.asarray(Image.open(model_out / "grace_hopper.png"))
    mapped = np.asarray(Image.open(out / "grace_hopper.png"))
    from labels import load_label_map
    assert np.array_equal(mapped, load_label_map("lip").apply(plain))
    summary = json.loads((out / "grace_hopper.json").read_text())
    assert summary["label_set"] == "lip" and summary["label_map"] == "lip"
    assert summary["unmapped"]["pixels"] == int((mapped == IGNORE_INDEX).sum())
    assert sum(v["pixels"] for v in summary["labels"].values()) + summary["unmapped"]["pixels"] == 512 * 600
    folder = out / "grace_hopper_classes"                            # a mapped name and a model's name
    assert np.array_equal(np.asarray(Image.open(folder / "upper-clothes.png")), mapped == 5)
    assert np.array_equal(np.asarray(Image.open(folder / "skin.png")), plain == DEEPFASHION_MM.index("skin"))
