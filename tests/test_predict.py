"""Tests for predict.py with a tiny untrained model on the CPU. Run: `python -m pytest tests/test_predict.py -q`."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import postprocess
import predict
import unet
from images import normalize, prepare_whole_image
from labels import LABELS, NUM_LABELS

PROJECT = Path(__file__).resolve().parents[1]
ORIENTATION = 0x0112  # the EXIF tag


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    cfg = dataclasses.replace(unet.PRESETS["tiny"], image_size=64)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    torch.save(unet.model_checkpoint(unet.UNet(cfg)), path)
    return path


def _photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8: smooth colour blobs plus noise, so the model sees some structure."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    base = np.stack([np.sin(6 * x + seed), np.cos(5 * y), np.sin(4 * (x + y))], -1) * 100 + 128
    return np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)


def _outputs_ok(out: Path, name: str, size: tuple[int, int]) -> dict:
    """Checks <name>.png / _overlay.jpg / .json for a photo of size (W, H); returns the JSON."""
    with Image.open(out / f"{name}.png") as png:
        assert png.mode == "P" and png.size == size
        assert np.asarray(png).max() < NUM_LABELS
    with Image.open(out / f"{name}_overlay.jpg") as jpg:
        assert jpg.size == size and jpg.mode == "RGB"
    summary = json.loads((out / f"{name}.json").read_text())
    assert (summary["width"], summary["height"]) == size
    assert sum(v["fraction"] for v in summary["labels"].values()) == pytest.approx(1.0)
    assert sum(v["pixels"] for v in summary["labels"].values()) == size[0] * size[1]
    assert all(LABELS[v["id"]] == k for k, v in summary["labels"].items())
    return summary


def test_odd_inputs_in_one_run(checkpoint, tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    rgba = np.dstack([_photo(90, 120, 1), np.full((120, 90), 255, np.uint8)])
    rgba[:30, :30, 3] = 0  # a transparent corner
    Image.fromarray(rgba).save(src / "rgba.png")
    Image.fromarray(_photo(70, 100, 2)[..., 0]).save(src / "grey.jpg")
    Image.fromarray(_photo(333, 517, 3)).save(src / "odd.jpg")
    Image.fromarray((_photo(80, 60, 4)[..., 1].astype(np.uint16) * 257)).save(src / "deep.png")  # I;16
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # stored landscape, shown rotated 90 degrees clockwise
    Image.fromarray(_photo(120, 80, 5)).save(src / "rotated.jpg", exif=exif)
    frames = [Image.new("RGB", (64, 96), colour) for colour in ("red", "blue")]
    frames[0].save(src / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    (src / "broken.jpg").write_bytes(b"\xff\xd8 this is not really a jpeg" * 10)
    order = ["rgba.png", "broken.jpg", "grey.jpg", "odd.jpg", "deep.png", "rotated.jpg", "anim.gif"]

    status = predict.main(["--checkpoint", str(checkpoint), "--out", str(out), *(str(src / f) for f in order)])

    assert status == 1
    captured = capsys.readouterr()
    assert "broken.jpg" in captured.err and "cannot read image" in captured.err
    assert "6 written, 1 skipped" in captured.out
    sizes = {"rgba": (90, 120), "grey": (70, 100), "odd": (333, 517), "deep": (80, 60), "rotated": (80, 120),
             "anim": (64, 96)}
    for name, size in sizes.items():
        summary = _outputs_ok(out, name, size)
        assert summary["postprocessed"] is True and Path(summary["file"]).stem == name
        assert summary["postprocess"] == "published"  # the default
    assert not list(out.glob("broken*"))


def test_load_photo_conversions(tmp_path):
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, 5:, 3] = 255  # left half fully transparent
    Image.fromarray(rgba).save(tmp_path / "a.png")
    photo = np.asarray(predict.load_photo(tmp_path / "a.png"))
    assert (photo[:, :5] == 255).all() and (photo[:, 5:] == (200, 0, 0)).all()

    deep = np.array([[0, 257, 32768, 65535]], np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert np.asarray(predict.load_photo(tmp_path / "deep.png"))[0, :, 0].tolist() == [0, 1, 128, 255]

    frames = [Image.new("RGB", (8, 8), colour) for colour in ("red", "blue")]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert np.asarray(predict.load_photo(tmp_path / "anim.gif"))[0, 0].tolist() == [255, 0, 0]

    Image.new("CMYK", (6, 4), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    photo = predict.load_photo(tmp_path / "cmyk.jpg")
    assert photo.mode == "RGB" and photo.size == (6, 4)

    marked = np.zeros((20, 30, 3), np.uint8)
    marked[0, :] = 255  # the stored top row; orientation 6 turns it into the right-hand column
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    Image.fromarray(marked).save(tmp_path / "r.png", exif=exif)
    upright = np.asarray(predict.load_photo(tmp_path / "r.png"))
    assert upright.shape == (30, 20, 3) and (upright[:, -1] == 255).all() and (upright[:, 0] == 0).all()


def test_folder_input_ignores_other_files_and_exits_0(checkpoint, tmp_path, capsys):
    src, out = tmp_path / "folder", tmp_path / "out"
    src.mkdir()
    for i in range(5):  # one shape: batches of 2, 2 and 1
        Image.fromarray(_photo(60, 88, i)).save(src / f"p{i}.jpg")
    (src / "notes.txt").write_text("not a photo")
    (src / "._p0.jpg").write_bytes(b"macOS resource fork")

    status = predict.main(["--checkpoint", str(checkpoint), "--out", str(out), "--batch_size", "2", str(src)])

    assert status == 0
    captured = capsys.readouterr()
    assert "notes" not in captured.err and "5 written, 0 skipped" in captured.out
    for i in range(5):
        _outputs_ok(out, f"p{i}", (60, 88))
    assert sorted(p.name for p in out.glob("*.png")) == [f"p{i}.png" for i in range(5)]


def test_no_postprocess_is_the_models_argmax(checkpoint, tmp_path):
    Image.fromarray(_photo(100, 150, 7)).save(tmp_path / "p.png")
    out = tmp_path / "out"

    assert predict.main(["--checkpoint", str(checkpoint), "--out", str(out), "--no-postprocess",
                         str(tmp_path / "p.png")]) == 0

    model = unet.load_model(checkpoint).eval()
    cfg = model.config
    photo = Image.open(tmp_path / "p.png").convert("RGB")
    pixels, (h, w) = prepare_whole_image(photo, cfg.image_size, cfg.size_multiple)  # (3, Hp, Wp) uint8
    assert (h, w) == (96, 64) and pixels.shape == (3, 96, 64)
    x = normalize(pixels[None], cfg.mean, cfg.std)  # (1, 3, Hp, Wp)
    with torch.no_grad():
        logits = model(x).mask_logits[0, :, :h, :w]  # (L, h, w)
    expected = Image.fromarray(logits.argmax(0).numpy().astype(np.uint8)).resize((100, 150), Image.Resampling.NEAREST)
    written = np.asarray(Image.open(out / "p.png"))
    assert np.array_equal(written, np.asarray(expected))
    summary = json.loads((out / "p.json").read_text())
    assert summary["postprocessed"] is False and summary["postprocess"] == "none"


@pytest.mark.parametrize("flags, method", [([], "published"), (["--postprocess", "regions"], "regions"),
                                           (["--postprocess", "none"], "none"), (["--no-postprocess"], "none")])
def test_postprocess_flag_picks_the_method(flags, method):
    assert predict.parse_args(["--checkpoint", "m.pt", "p.jpg", "--out", "o", *flags]).postprocess == method
    with pytest.raises(SystemExit):
        predict.parse_args(["--checkpoint", "m.pt", "p.jpg", "--out", "o", "--postprocess", "nope"])


def test_label_map_runs_the_chosen_method():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.full(NUM_LABELS, 0.3), size=(20, 14)).transpose(2, 0, 1).astype(np.float32)
    boundary = rng.random((20, 14)).astype(np.float32)
    for method in ("published", "regions", "none"):
        expected = Image.fromarray(postprocess.run(method, probs, boundary)).resize((28, 40), Image.Resampling.NEAREST)
        assert np.array_equal(predict.label_map(probs, boundary, (28, 40), method), np.asarray(expected))


def test_masks_and_probabilities(checkpoint, tmp_path):
    Image.fromarray(_photo(40, 60, 8)).save(tmp_path / "p.jpg")
    out = tmp_path / "out"

    assert predict.main(["--checkpoint", str(checkpoint), "--out", str(out), "--masks", "--probabilities",
                         str(tmp_path / "p.jpg")]) == 0

    labels = np.asarray(Image.open(out / "p.png"))  # (60, 40)
    present = json.loads((out / "p.json").read_text())["labels"]
    files = sorted(p.name for p in (out / "p_masks").iterdir())
    assert files == sorted(f"{name.replace(' ', '_')}.png" for name in present)
    for name, entry in present.items():
        with Image.open(out / "p_masks" / f"{name.replace(' ', '_')}.png") as mask:
            assert mask.mode == "1" and mask.size == (40, 60)
            assert np.array_equal(np.asarray(mask), labels == entry["id"])
    with np.load(out / "p_probs.npz") as npz:
        probs, boundary = npz["probabilities"], npz["boundary"]
    assert probs.dtype == boundary.dtype == np.float16
    assert probs.shape == (NUM_LABELS, 96, 64) and boundary.shape == (96, 64)  # 64 / 40 = 1.6x, unpadded
    assert np.allclose(probs.astype(np.float32).sum(0), 1, atol=1e-2)
    assert 0 <= boundary.min() and boundary.max() <= 1


def test_batched_equals_one_at_a_time(checkpoint, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        Image.fromarray(_photo(64, 80, i)).save(src / f"p{i}.png")
    for batch in ("1", "3"):
        assert predict.main(["--checkpoint", str(checkpoint), "--out", str(tmp_path / batch), "--probabilities",
                             "--batch_size", batch, str(src)]) == 0
    for i in range(3):
        one, three = np.load(tmp_path / "1" / f"p{i}_probs.npz"), np.load(tmp_path / "3" / f"p{i}_probs.npz")
        assert np.allclose(one["probabilities"], three["probabilities"], atol=2e-3)


def test_same_shape_batches_groups_by_shape():
    def job(h: int, tag: int) -> predict.Job:
        return predict.Job(Path(f"{tag}.jpg"), str(tag), Image.new("RGB", (1, 1)), torch.zeros(3, h, 16), (h, 16))

    jobs = [job(32, 0), job(48, 1), job(32, 2), job(32, 3), job(48, 4)]
    batches = [[int(j.name) for j in b] for b in predict.same_shape_batches(jobs, batch_size=2)]
    assert batches == [[0, 2], [1, 4], [3]]
    many = [job(16 * (1 + i), i) for i in range(9)]  # all shapes differ: none may wait forever
    batches = list(predict.same_shape_batches(many, batch_size=2))
    assert sorted(int(j.name) for b in batches for j in b) == list(range(9))
    assert max(len(b) for b in batches) == 1 and len(batches) == 9


def test_max_pixels_refuses_larger_images(checkpoint, tmp_path, capsys):
    Image.fromarray(_photo(100, 100, 1)).save(tmp_path / "big.png")
    Image.fromarray(_photo(40, 50, 2)).save(tmp_path / "small.png")
    out = tmp_path / "out"

    status = predict.main(["--checkpoint", str(checkpoint), "--out", str(out), "--max_pixels", "5000",
                           str(tmp_path / "big.png"), str(tmp_path / "small.png")])

    assert status == 1
    err = capsys.readouterr().err
    assert "big.png" in err and "--max_pixels 5000" in err and "small.png" not in err
    _outputs_ok(out, "small", (40, 50))
    assert not (out / "big.png").exists()


def test_decompression_bomb_is_skipped_not_fatal(checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # PIL warns above this and refuses above twice it
    names = {"warned.png": (60, 60), "refused.png": (100, 100), "fine.png": (40, 50)}
    for name, (width, height) in names.items():
        Image.fromarray(_photo(width, height)).save(tmp_path / name)
    out = tmp_path / "out"

    inputs = [str(tmp_path / name) for name in names]
    status = predict.main(["--checkpoint", str(checkpoint), "--out", str(out), *inputs])

    assert status == 1
    err = capsys.readouterr().err
    assert "warned.png: cannot read image" in err and "refused.png: cannot read image" in err
    _outputs_ok(out, "fine", (40, 50))


def test_same_stem_gets_distinct_names(checkpoint, tmp_path):
    files = ["a/me.jpg", "b/me.jpg", "a/me.png", "b/Me.png"]  # "Me" and "me" clash on macOS and Windows
    for file in files:
        (tmp_path / file).parent.mkdir(exist_ok=True)
        Image.fromarray(_photo(32, 48)).save(tmp_path / file)
    assert predict.output_names([tmp_path / f for f in files]) == ["me", "me_b", "me_a", "Me_2"]
    out = tmp_path / "out"
    inputs = [str(tmp_path / file) for file in files]
    assert predict.main(["--checkpoint", str(checkpoint), "--out", str(out), *inputs]) == 0
    assert sorted(p.name for p in out.glob("*.json")) == ["Me_2.json", "me.json", "me_a.json", "me_b.json"]
    assert json.loads((out / "me_a.json").read_text())["file"] == str(tmp_path / "a/me.png")


def test_missing_input_is_an_error_naming_it(checkpoint, tmp_path, capsys):
    Image.fromarray(_photo(32, 48)).save(tmp_path / "here.jpg")
    with pytest.raises(SystemExit) as exit_info:
        predict.main(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "out"),
                      str(tmp_path / "here.jpg"), str(tmp_path / "nowhere.jpg")])
    assert exit_info.value.code == 2
    assert "nowhere.jpg" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_refuses_to_overwrite_an_input(checkpoint, tmp_path, capsys):
    Image.fromarray(_photo(32, 48)).save(tmp_path / "me.png")
    before = (tmp_path / "me.png").read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        predict.main(["--checkpoint", str(checkpoint), "--out", str(tmp_path), str(tmp_path)])
    assert exit_info.value.code == 2 and "me.png" in capsys.readouterr().err
    assert (tmp_path / "me.png").read_bytes() == before


def test_command_line(checkpoint, tmp_path):
    Image.fromarray(_photo(48, 64)).save(tmp_path / "me.webp")
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "predict.py", "--checkpoint", str(checkpoint), str(tmp_path / "me.webp"),
                             "--out", str(out), "--device", "cpu"], cwd=PROJECT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "1 written, 0 skipped" in result.stdout
    _outputs_ok(out, "me", (48, 64))
