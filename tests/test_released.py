"""The published model, exactly: a state dict in the released code's format, rebuilt from
tests/fixtures/released/keys.json, goes through `unet.py convert`, `load_model` and the project's own
input preparation, and must give the released code's outputs (tests/fixtures/released/*.npz)."""
import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

import unet
from images import normalize

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "released"
KEYS = json.loads((FIXTURES / "keys.json").read_text())


def released_state_dict(variant: str) -> dict[str, torch.Tensor]:
    """The released-format state dict of a fixture variant, buffers included (zeros: converters drop them)."""
    spec = KEYS[variant]
    state = {}
    for p in spec["parameters"]:
        g = torch.Generator().manual_seed(zlib.crc32(p["key"].encode()))
        state[p["key"]] = p["mean"] + p["std"] * torch.randn(p["shape"], generator=g)
    for b in spec["buffers"]:
        state[b["key"]] = torch.zeros(b["shape"])
    return state


def outputs(model: unet.UNet, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(24, H, W) label logits and (H, W) boundary probability for an (H, W, 3) uint8 photo."""
    config = model.config
    x = normalize(torch.from_numpy(image).permute(2, 0, 1)[None], config.mean, config.std)
    with torch.no_grad():
        out = model.eval()(x)
    return out.mask_logits[0].numpy(), out.boundary_logits[0].sigmoid().numpy()


def mismatch(seg: np.ndarray, boundary: np.ndarray, fixture) -> list[str]:
    """What differs from the released outputs beyond the tolerances of the issue."""
    problems = []
    seg_diff = np.abs(seg[:, ::4, ::4] - fixture["seg_sub4"]).max()
    if seg_diff > 2e-3:
        problems.append(f"label logits differ by up to {seg_diff:.3g}")
    boundary_diff = np.abs(boundary[::4, ::4] - fixture["boundary_sub4"]).max()
    if boundary_diff > 1e-4:
        problems.append(f"boundary probability differs by up to {boundary_diff:.3g}")
    agree = (seg.argmax(0) == fixture["seg_argmax"]).mean()
    if agree < 0.9999:
        problems.append(f"argmax agrees on {agree:.4%} of pixels")
    return problems


@pytest.fixture(scope="module")
def convert(tmp_path_factory):
    """variant -> the model load_model gives for its converted released state dict (each converted once)."""
    models = {}

    def get(variant: str) -> unet.UNet:
        if variant not in models:
            folder = tmp_path_factory.mktemp(variant)
            torch.save(released_state_dict(variant), folder / "released.pt")
            assert unet.main(["convert", str(folder / "released.pt"), str(folder / "converted.pt")]) == 0
            models[variant] = unet.load_model(folder / "converted.pt")
        return models[variant]
    return get


@pytest.mark.parametrize("variant", sorted(KEYS))
def test_converted_weights_give_the_released_outputs(convert, variant):
    model = convert(variant)
    spec = KEYS[variant]
    assert model.config.base_features == spec["base_features"]
    assert model.config.bottleneck == {"default": "simple", "attention": "attention"}[spec["bottleneck"]]
    assert model.config.local_attention_levels == ((0, 1, 2, 3, 4) if spec["local_attention"] else ())
    assert sum(p.numel() for p in model.parameters()) == spec["parameter_count"]
    fixture = np.load(FIXTURES / f"{variant}.npz")
    seg, boundary = outputs(model, fixture["image"])
    assert mismatch(seg, boundary, fixture) == []
    assert np.isclose(seg.sum(dtype=np.float64), fixture["seg_sum"], rtol=1e-4)
    assert np.isclose(boundary.sum(dtype=np.float64), fixture["boundary_sum"], rtol=1e-6)


def _swap_query_and_key(model: unet.UNet) -> None:
    attention = model.bottleneck.blocks[0].attention1.kq_proj
    for t in (attention.weight, attention.bias):
        t.copy_(torch.cat(t.chunk(2)[::-1]))


def _negate_position_bias(model: unet.UNet) -> None:
    model.decoder[0].local_attention.position_bias.neg_()


def _transpose_bias_table(model: unet.UNet) -> None:   # (dx, dy) read as (dy, dx)
    bias = model.decoder[0].local_attention.position_bias
    bias.copy_(bias.reshape(-1, 8, 8).transpose(1, 2).reshape(bias.shape))


def _swap_head_split(model: unet.UNet) -> None:         # heads interleaved instead of contiguous
    proj = model.decoder[0].local_attention.in_proj
    w = proj.weight.reshape(3, 4, -1, proj.weight.shape[1])
    proj.weight.copy_(w.transpose(1, 2).reshape(proj.weight.shape))


@pytest.mark.parametrize("mistake", [_swap_query_and_key, _negate_position_bias, _transpose_bias_table,
                                     _swap_head_split])
def test_a_conversion_mistake_is_caught(convert, mistake):
    """The comparison above is sharp enough to see each of these slips."""
    variant = "base16_attention_local"
    model = convert(variant)
    fixture = np.load(FIXTURES / f"{variant}.npz")
    broken = unet.UNet(model.config)
    broken.load_state_dict(model.state_dict())
    with torch.no_grad():
        mistake(broken)
    assert mismatch(*outputs(broken, fixture["image"]), fixture) != []


def test_a_file_that_is_not_a_released_state_dict_is_refused(tmp_path):
    state = released_state_dict("base16_simple")
    cases = {
        "other": ({"weights": torch.zeros(3)}, "no downBlocks.0.layers.0.weight"),
        "missing": ({k: v for k, v in state.items() if k != "upBlocks.2.conv2.weight"},
                    r"missing: decoder\.2\.conv2\.weight"),
        "shape": ({**state, "upBlocks.1.conv3.weight": torch.zeros(128, 128, 1, 1)},
                  r"shape mismatch: upBlocks\.1\.conv3\.weight: checkpoint \(128, 128, 1, 1\)"),
        "extra": ({**state, "upBlocks.1.extra.weight": torch.zeros(1)}, "does not have: upBlocks.1.extra.weight"),
        "not_a_dict": ([torch.zeros(1)], "not a state dict"),
    }
    for name, (payload, message) in cases.items():
        path = tmp_path / f"{name}.pt"
        torch.save(payload, path)
        with pytest.raises(unet.CheckpointError, match=message):
            unet.convert_file(path, tmp_path / "out.pt")
        assert not (tmp_path / "out.pt").exists()


def test_loading_a_released_file_directly_says_to_convert_it(tmp_path):
    torch.save(released_state_dict("base16_simple"), tmp_path / "released.pt")
    with pytest.raises(unet.CheckpointError, match="python unet.py convert"):
        unet.load_model(tmp_path / "released.pt")


def test_converted_weights_start_a_training_stage_and_predict(convert, tmp_path):
    """A converted checkpoint is an ordinary one: --pretrained_model_path and predict.py take it."""
    import predict
    import run
    from synthetic import write_synthetic_dataset
    from PIL import Image

    model = convert("base16_simple")
    checkpoint = tmp_path / "converted.pt"
    torch.save(unet.model_checkpoint(model), checkpoint)
    data = tmp_path / "data"
    write_synthetic_dataset(data, 4, seed=3, width=150, height=220)
    final = run.train(run.parse_config([
        "--data_dir", str(data), "--output_dir", str(tmp_path / "stage2"), "--pretrained_model_path", str(checkpoint),
        "--upgrade_bottleneck", "--image_size", "32", "--effective_batch_size", "2", "--max_steps", "1", "--num_workers", "0",
        "--val_fraction", "0", "--warmup_steps", "1"]))
    trained = unet.load_model(final)
    assert trained.config.bottleneck == "attention" and trained.config.base_features == 16
    assert torch.equal(trained.state_dict()["encoder.0.conv1.weight"], model.state_dict()["encoder.0.conv1.weight"])
    Image.new("RGB", (40, 60), (200, 180, 160)).save(tmp_path / "photo.png")
    assert predict.main(["--checkpoint", str(final), "--out", str(tmp_path / "pred"), "--device", "cpu",
                         str(tmp_path / "photo.png")]) == 0
    assert Image.open(tmp_path / "pred" / "photo.png").size == (40, 60)
