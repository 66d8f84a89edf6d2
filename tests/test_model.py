"""unet.py and attention.py: shapes, gradients, local attention against a plain computation,
the staged-recipe operations and checkpoint round trips."""
import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attention import LocalAttention, sinusoidal_position_encoding
from unet import (PRESETS, UNet, UNetConfig, add_local_attention, load_model, model_checkpoint,
                  read_checkpoint, stage_parameters, swap_bottleneck)

ROOT = Path(__file__).resolve().parent.parent


def shrink(config: UNetConfig) -> UNetConfig:
    """The same architecture at 1/16 of the width, so tests run in seconds."""
    return dataclasses.replace(config, features=tuple(max(8, c // 16) for c in config.features),
                               bottleneck_features=config.bottleneck_features // 16,
                               attention_head_dim=16, local_attention_head_dim=4)


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("aspect", [(1, 1), (1, 1.5)])
def test_every_preset_output_shapes(preset, aspect):
    config = shrink(PRESETS[preset])
    m = config.size_multiple
    h, w = 2 * m, int(2 * m * aspect[1])
    model = UNet(config).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, h, w))
    assert out.mask_logits.shape == (2, 24, h, w)
    assert out.boundary_logits.shape == (2, h, w)
    assert out.mask_logits.dtype == torch.float32


def test_presets_match_the_published_architectures():
    assert PRESETS["512_96"].features == (96, 96, 192, 384, 768)
    assert PRESETS["512_96"].bottleneck_features == 1536
    assert (PRESETS["512_96"].attention_blocks, PRESETS["512_96"].up_convs) == (6, 4)
    assert PRESETS["512_64_xl"].features == (64, 128, 256, 512, 1024)
    assert (PRESETS["512_64_xl"].attention_blocks, PRESETS["512_64_xl"].up_convs) == (12, 3)
    la = PRESETS["256_64_la"]
    assert la.features == (64, 128, 256, 512) and la.local_attention_levels == (0, 1, 2, 3)
    assert UNet(la).decoder[0].local_attention is not None


def test_every_parameter_gets_a_finite_gradient():
    config = dataclasses.replace(shrink(PRESETS["256_64_la"]), bottleneck="attention")
    model = UNet(config)
    out = model(torch.randn(2, 3, 32, 48))
    loss = out.mask_logits.log_softmax(1)[:, 3].mean() + out.boundary_logits.sigmoid().mean()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_input_size_error_names_the_nearest_valid_size():
    model = UNet(shrink(PRESETS["512_96"]))
    with pytest.raises(ValueError, match=r"500x760.*multiple of 32.*nearest valid size is 512x768"):
        model(torch.randn(1, 3, 500, 760))


def test_position_encoding_follows_the_input_size():
    a = sinusoidal_position_encoding(16, 4, 6)
    b = sinusoidal_position_encoding(16, 8, 6)
    assert a.shape == (16, 4, 6) and b.shape == (16, 8, 6)
    assert torch.allclose(a, b[:, :4])            # same positions, same code
    assert not torch.allclose(b[:, 0], b[:, 1])   # rows are told apart


def plain_local_attention(module: LocalAttention, x: torch.Tensor) -> torch.Tensor:
    """The definition, one query pixel at a time: the 2x2 block of pixel (y, x) attends to the
    6x6 window around it, keys outside the image left out."""
    b, c, h, w = x.shape
    heads, d = module.heads, c // module.heads
    q, k, v = module.qkv(module.norm(x)).chunk(3, dim=1)
    bias = module.position_bias.reshape(heads, 7, 7)
    rows = []
    for y in range(h):
        for xx in range(w):
            y0, x0 = 2 * (y // 2) - 2, 2 * (xx // 2) - 2
            keys = [(ky, kx) for ky in range(y0, y0 + 6) for kx in range(x0, x0 + 6)
                    if 0 <= ky < h and 0 <= kx < w]
            per_head = []
            for hd in range(heads):
                sl = slice(hd * d, (hd + 1) * d)
                qv = q[:, sl, y, xx]                                           # (B, d)
                kv = torch.stack([k[:, sl, ky, kx] for ky, kx in keys], 1)     # (B, n, d)
                vv = torch.stack([v[:, sl, ky, kx] for ky, kx in keys], 1)
                bb = torch.stack([bias[hd, ky - y + 3, kx - xx + 3] for ky, kx in keys])
                scores = (kv @ qv[:, :, None])[..., 0] / math.sqrt(d) + bb     # (B, n)
                per_head.append((scores.softmax(-1)[:, :, None] * vv).sum(1))  # (B, d)
            rows.append(torch.cat(per_head, 1))
    attended = torch.stack(rows, -1).reshape(b, c, h, w)
    return x + module.out(attended)


@pytest.mark.parametrize("size", [(6, 10), (12, 20), (16, 24)])   # tiles of 2 and 4 pixels; the last has inner tiles
def test_local_attention_equals_the_plain_definition(size):
    torch.manual_seed(0)
    module = LocalAttention(8, head_dim=4).double()
    with torch.no_grad():   # make every part matter: random bias, full-size output projection
        module.position_bias.normal_()
        module.out.weight.normal_(std=0.5)
    x1 = torch.randn(2, 8, *size, dtype=torch.float64, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    fast = module(x1)
    grads_fast = torch.autograd.grad(fast.square().sum(), [x1, *module.parameters()])
    plain = plain_local_attention(module, x2)
    grads_plain = torch.autograd.grad(plain.square().sum(), [x2, *module.parameters()])
    assert torch.allclose(fast, plain, atol=1e-10)
    for gf, gp in zip(grads_fast, grads_plain):
        assert torch.allclose(gf, gp, atol=1e-9)


def test_local_attention_does_not_look_outside_its_window():
    torch.manual_seed(0)
    module = LocalAttention(8, head_dim=4).eval()
    with torch.no_grad():
        module.out.weight.normal_()
        module.norm = torch.nn.Identity()   # GroupNorm would mix the whole image into every pixel
    x = torch.randn(1, 8, 12, 12)
    x2 = x.clone()
    x2[:, :, 8:, 8:] += 10.0                # pixels 3+ blocks away from block (0, 0)
    assert torch.allclose(module(x)[:, :, :2, :2], module(x2)[:, :, :2, :2])


def test_swap_bottleneck_keeps_every_other_weight():
    config = dataclasses.replace(shrink(PRESETS["512_96"]), bottleneck="simple")
    model = UNet(config)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    swap_bottleneck(model)
    after = model.state_dict()
    assert model.config.bottleneck == "attention"
    assert any(k.startswith("bottleneck.blocks.") for k in after)
    for k, v in before.items():
        if not k.startswith("bottleneck."):
            assert torch.equal(after[k], v), k
    names = [n for n, _ in stage_parameters(model, "bottleneck")]
    assert names and all(n.startswith("bottleneck.") for n in names)


def test_add_local_attention_keeps_weights_and_barely_changes_the_output():
    torch.manual_seed(0)
    model = UNet(shrink(PRESETS["512_96"])).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before_out = model(x).mask_logits
    before = {k: v.clone() for k, v in model.state_dict().items()}
    add_local_attention(model, (2, 3, 4))
    assert model.config.local_attention_levels == (2, 3, 4)
    after = model.state_dict()
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    with torch.no_grad():
        after_out = model(x).mask_logits
    change = (after_out - before_out).abs().max() / before_out.abs().max()
    assert 0 < change < 1e-2
    names = [n for n, _ in stage_parameters(model, "local_attention")]
    assert {n.split(".")[1] for n in names} == {"2", "3", "4"}
    assert all(".local_attention." in n for n in names)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    config = dataclasses.replace(shrink(PRESETS["256_64_la"]), local_attention_levels=(1, 2))
    model = UNet(config)
    x = torch.randn(2, 3, 32, 32)
    grads = []
    for enabled in (False, True):
        model.zero_grad()
        model.set_gradient_checkpointing(enabled)
        out = model(x)
        (out.mask_logits.square().mean() + out.boundary_logits.mean()).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6)


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    model = add_local_attention(UNet(shrink(PRESETS["tiny"])), (1,)).eval()
    path = tmp_path / "model.pt"
    torch.save(model_checkpoint(model), path)
    loaded = load_model(path).eval()
    assert loaded.config == model.config
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        assert torch.equal(model(x).mask_logits, loaded(x).mask_logits)
        assert torch.equal(model(x).boundary_logits, loaded(x).boundary_logits)


def test_wrapped_state_dict_prefixes_are_stripped(tmp_path):
    model = UNet(shrink(PRESETS["tiny"]))
    ckpt = model_checkpoint(model)
    ckpt["model"] = {"_orig_mod." + k: v for k, v in ckpt["model"].items()}
    torch.save(ckpt, tmp_path / "compiled.pt")
    load_model(tmp_path / "compiled.pt")


def test_bad_checkpoints_give_clear_errors(tmp_path):
    model = UNet(shrink(PRESETS["tiny"]))
    good = tmp_path / "good.pt"
    torch.save(model_checkpoint(model), good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(ValueError, match="truncated.pt: not a readable checkpoint"):
        read_checkpoint(truncated)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match="other.pt: not a checkpoint of this project"):
        read_checkpoint(other)
    newer = tmp_path / "newer.pt"
    torch.save({**model_checkpoint(model), "format_version": 99}, newer)
    with pytest.raises(ValueError, match="newer.pt: checkpoint format version 99 is newer"):
        read_checkpoint(newer)
    # weights of another preset under this preset's config: every mismatch is listed
    wrong = tmp_path / "wrong.pt"
    ckpt = model_checkpoint(model)
    ckpt["model"] = model_checkpoint(UNet(shrink(PRESETS["512_96"])))["model"]
    torch.save(ckpt, wrong)
    with pytest.raises(ValueError, match=r"(?s)wrong.pt: weights do not fit.*unexpected: .*shape mismatch"):
        load_model(wrong)


def test_unet_command_describes_a_preset():
    out = subprocess.run([sys.executable, "unet.py", "--preset", "512_96"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, check=True).stdout
    params = float(out.split("parameters: ")[1].split(" M")[0])
    assert 140 < params < 160      # published: 560 MB of fp32 weights, about 140 M parameters
    assert "GFLOPs" in out
