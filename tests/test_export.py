"""Tests for `predict.py --export-onnx` and for predicting with the exported file on onnxruntime, with a
small untrained model on the CPU. One export (about 17 s) serves every test.
Run: `python -m pytest tests/test_export.py -q`."""

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from PIL import Image

import predict
import unet
from labels import LABELS, PALETTE

# Every kind of block, local attention included, as few and as narrow as possible: each one slows the
# export. Local attention at level 4 (1/16 of the input) gets 4x4 tiles for even block counts and 2x2
# tiles for odd ones, the case the export example is chosen for; level 1 always gets 4x4 tiles.
CONFIG = unet.UNetConfig(base_features=4, attention_blocks=1, local_attention_levels=(1, 4), image_size=64)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    """(checkpoint, ONNX file) of one small model, exported through the command line."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("export")
    checkpoint, onnx_file = folder / "small.pt", folder / "onnx" / "small.onnx"
    model = unet.UNet(CONFIG)
    with torch.no_grad():  # untrained, it starts near 0: give it weight, or a wrong graph would pass
        for level in CONFIG.local_attention_levels:
            attention = model.decoder[level].local_attention
            attention.out_proj.weight.normal_(0, 0.5)
            attention.position_bias.normal_()
    torch.save(unet.model_checkpoint(model), checkpoint)
    assert predict.main(["--checkpoint", str(checkpoint), "--export-onnx", str(onnx_file)]) == 0
    return checkpoint, onnx_file


def _photo(width: int, height: int, seed: int) -> Image.Image:
    """Smooth colour blobs plus noise, so the model sees some structure."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    base = np.stack([np.sin(6 * x + seed), np.cos(5 * y), np.sin(4 * (x + y))], -1) * 100 + 128
    return Image.fromarray(np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8))


def test_onnx_matches_pytorch_at_other_batch_sizes_and_image_sizes(exported):
    checkpoint, onnx_file = exported
    model = unet.load_model(checkpoint).eval()
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    # the export example was (2, 3, 96, 160): these differ from it in every dynamic dimension, with
    # even and odd block counts at level 4
    for batch, height, width in [(1, 64, 96), (3, 128, 64)]:
        x = torch.randn(batch, 3, height, width)
        with torch.no_grad():
            expected = model(x)
        mask_logits, boundary_logits = session.run(["mask_logits", "boundary_logits"], {"image": x.numpy()})
        assert mask_logits.shape == (batch, len(LABELS), height, width)
        assert boundary_logits.shape == (batch, height, width)
        # float32 reordering, amplified by this narrow model's one-channel GroupNorms and the label
        # LayerNorm: 2e-3, the tolerance the released model's fixtures are held to
        np.testing.assert_allclose(mask_logits, expected.mask_logits.numpy(), rtol=1e-4, atol=2e-3)
        np.testing.assert_allclose(boundary_logits, expected.boundary_logits.numpy(), rtol=1e-4, atol=2e-3)


def test_the_file_describes_itself(exported):
    _, onnx_file = exported
    assert list(onnx_file.parent.iterdir()) == [onnx_file]  # the weights are inside, not beside it
    model = onnx.load(str(onnx_file))
    meta = {prop.key: json.loads(prop.value) for prop in model.metadata_props}
    assert meta == {"mean": list(CONFIG.mean), "std": list(CONFIG.std), "image_size": 64, "size_multiple": 32,
                    "labels": list(LABELS), "palette": PALETTE.tolist(), "label_set": "deepfashion-mm",
                    "fit": "short_side"}
    (image,) = model.graph.input
    dims = image.type.tensor_type.shape.dim
    assert image.name == "image" and dims[1].dim_value == 3
    assert all(dims[i].dim_param for i in (0, 2, 3))  # batch, height and width are symbolic
    assert [output.name for output in model.graph.output] == ["mask_logits", "boundary_logits"]


def test_predict_with_onnx_equals_pytorch(exported, tmp_path, monkeypatch):
    checkpoint, onnx_file = exported
    src = tmp_path / "in"
    src.mkdir()
    _photo(100, 150, 1).save(src / "tall.png")  # model inputs 64x96 and 96x64: two shapes, two batches
    _photo(150, 100, 2).save(src / "wide.jpg")
    _photo(100, 150, 3).save(src / "tall2.png")
    common = ["--probabilities", "--batch_size", "2", "--device", "cpu", str(src)]
    assert predict.main(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "pt"), *common]) == 0

    def no_torch_model(*args, **kwargs):
        raise AssertionError("the ONNX path loaded a PyTorch model")

    monkeypatch.setattr(unet, "load_model", no_torch_model)
    assert predict.main(["--checkpoint", str(onnx_file), "--out", str(tmp_path / "onnx"), *common]) == 0
    for name in ("tall", "wide", "tall2"):
        pt_labels, onnx_labels = (np.asarray(Image.open(tmp_path / run / f"{name}.png")) for run in ("pt", "onnx"))
        assert np.array_equal(pt_labels, onnx_labels)
        assert (tmp_path / "pt" / f"{name}.json").read_text() == (tmp_path / "onnx" / f"{name}.json").read_text()
        with np.load(tmp_path / "pt" / f"{name}_probs.npz") as pt, np.load(tmp_path / "onnx" / f"{name}_probs.npz") as ox:
            assert np.allclose(pt["probabilities"], ox["probabilities"], atol=2e-3)
            assert np.allclose(pt["boundary"], ox["boundary"], atol=2e-3)


def test_onnx_file_without_metadata_is_refused(exported, tmp_path, capsys):
    model = onnx.load(str(exported[1]))
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    _photo(40, 60, 0).save(tmp_path / "p.png")
    with pytest.raises(SystemExit):
        predict.main(["--checkpoint", str(bare), "--out", str(tmp_path / "out"), str(tmp_path / "p.png")])
    err = capsys.readouterr().err
    assert str(bare) in err and "metadata_props" in err and "image_size" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif("CUDAExecutionProvider" in onnxruntime.get_available_providers(),
                    reason="this onnxruntime has CUDA")
def test_onnx_on_cuda_without_a_cuda_onnxruntime_is_an_error(exported, tmp_path, capsys):
    _photo(40, 60, 0).save(tmp_path / "p.png")
    with pytest.raises(SystemExit):
        predict.main(["--checkpoint", str(exported[1]), "--out", str(tmp_path / "out"), "--device", "cuda",
                      str(tmp_path / "p.png")])
    assert "no CUDA provider" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["--checkpoint", "m.pt", "--export-onnx", "m.onnx", "photo.jpg"],        # export takes no INPUT
    ["--checkpoint", "m.pt", "--export-onnx", "m.onnx", "--out", "folder"],  # nor --out
    ["--checkpoint", "m.pt", "photo.jpg"],                                   # predicting needs --out
    ["--checkpoint", "m.pt", "--out", "folder"],                             # and INPUT
])
def test_command_line_modes_are_checked(argv):
    with pytest.raises(SystemExit):
        predict.parse_args(argv)
