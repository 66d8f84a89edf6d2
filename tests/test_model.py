"""unet.py and attention.py: shapes, gradients, local attention against a plain computation,
the staged-recipe operations and checkpoint round trips."""
import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attention import HEADS, GlobalAttention, LocalAttention, position_encoding
from unet import (PRESETS, UNet, UNetConfig, add_local_attention, load_model, lossy_upsample, model_checkpoint,
                  read_checkpoint, stage_parameters, swap_bottleneck)

ROOT = Path(__file__).resolve().parent.parent


def shrink(config: UNetConfig) -> UNetConfig:
    """The same architecture with b = 4 (widths 8 to 128), so tests run in seconds."""
    return dataclasses.replace(config, base_features=4)


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
    assert (PRESETS["512_96"].base_features, PRESETS["512_96"].bottleneck) == (48, "attention")
    assert PRESETS["512_96"].encoder_widths == (96, 96, 192, 384, 768)    # the paper's feature scaling
    assert PRESETS["512_96"].bottleneck_width == 1536
    assert (PRESETS["512_64_xl"].base_features, PRESETS["512_64_xl"].attention_blocks) == (64, 6)
    la = PRESETS["256_64_la"]
    assert la.encoder_widths[:2] == (64, 64) and la.local_attention_levels == (0, 1, 2, 3, 4)
    assert la.image_size == 256
    assert UNet(shrink(la)).decoder[0].local_attention is not None
    for config in PRESETS.values():
        assert (config.mean, config.std) == ((0, 0, 0), (1, 1, 1))      # published input: x / 255


def test_published_initialisation():
    torch.manual_seed(0)
    model = add_local_attention(UNet(dataclasses.replace(PRESETS["tiny"], base_features=16)), (1,))
    conv = model.decoder[2].conv1.weight
    assert abs(conv.std().item() - 0.1) < 0.005 and abs(model.decoder[2].conv1.bias.std().item() - 0.1) < 0.05
    kq = model.bottleneck.blocks[0].attention1.kq_proj
    assert abs(kq.weight.std().item() - math.sqrt(2 / sum(kq.weight.shape))) < 0.002   # Xavier-normal
    assert torch.all(kq.bias == 0.01)
    attention = model.decoder[1].local_attention
    assert torch.allclose(attention.out_proj.bias, torch.full_like(attention.out_proj.bias, 1e-4))
    bias = attention.position_bias.reshape(HEADS, 8, 8)          # [h, dx + 4, dy + 4]
    assert bias[0, 4, 4] == 0 and bias[0, 4 + 3, 4 - 2] == (9 + 4) / 16 and bias[0, 0, 0] == 2.0
    assert torch.all(model.label_head.norm.weight == 3.0)


def test_lossy_upsample_spreads_channel_pairs_over_2x2_patches():
    x = torch.arange(2 * 8 * 2 * 3).reshape(2, 8, 2, 3)
    y = lossy_upsample(x)
    assert y.shape == (2, 4, 4, 6)
    expected = (x.reshape(2, 4, 4, 3).transpose(-1, -2).reshape(2, 2, 6, 4).transpose(-1, -2))
    assert torch.equal(y[:, :2], expected) and torch.equal(y[:, 2:], expected)


def test_every_parameter_gets_a_finite_gradient():
    config = dataclasses.replace(shrink(PRESETS["256_64_la"]), bottleneck="attention")
    model = UNet(config)
    out = model(torch.randn(2, 3, 32, 64))
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
    a = position_encoding(16, 4, 6)
    b = position_encoding(16, 8, 6)
    assert a.shape == (16, 4, 6) and b.shape == (16, 8, 6)
    assert torch.allclose(a, b[:, :4])            # same positions, same code
    assert torch.all(a[8:] == 0)                  # only 8 channels carry it
    assert torch.allclose(a[:4, 2, 5], torch.tensor([math.sin(5), math.cos(5), math.sin(0.05), math.cos(0.05)]))
    assert torch.allclose(a[4:8, 3, 0], torch.tensor([math.sin(3), math.cos(3), math.sin(0.03), math.cos(0.03)]))


def plain_local_attention(module: LocalAttention, x: torch.Tensor) -> torch.Tensor:
    """The definition, one query pixel at a time: the 2x2 block of pixel (y, x) attends to the
    6x6 window around it, keys outside the image left out, the bias of offset (dx, dy) subtracted."""
    b, c, h, w = x.shape
    d = module.head_dim
    q, k, v = module.in_proj(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).chunk(3, dim=1)
    bias = module.position_bias.reshape(HEADS, 8, 8)             # [head, dx + 4, dy + 4]
    rows = []
    for y in range(h):
        for xx in range(w):
            y0, x0 = 2 * (y // 2) - 2, 2 * (xx // 2) - 2
            keys = [(ky, kx) for ky in range(y0, y0 + 6) for kx in range(x0, x0 + 6)
                    if 0 <= ky < h and 0 <= kx < w]
            per_head = []
            for hd in range(HEADS):
                sl = slice(hd * d, (hd + 1) * d)
                qv = q[:, sl, y, xx]                                           # (B, d)
                kv = torch.stack([k[:, sl, ky, kx] for ky, kx in keys], 1)     # (B, n, d)
                vv = torch.stack([v[:, sl, ky, kx] for ky, kx in keys], 1)
                bb = torch.stack([bias[hd, kx - xx + 4, ky - y + 4] for ky, kx in keys])
                scores = (kv @ qv[:, :, None])[..., 0] / math.sqrt(d) - bb     # (B, n)
                per_head.append((scores.softmax(-1)[:, :, None] * vv).sum(1))  # (B, d)
            rows.append(torch.cat(per_head, 1))
    attended = torch.stack(rows, 1).reshape(b, h, w, HEADS * d)
    return module.out_proj(attended).permute(0, 3, 1, 2)


@pytest.mark.parametrize("size", [(6, 10), (12, 20), (16, 24)])   # tiles of 2 and 4 pixels; the last has inner tiles
def test_local_attention_equals_the_plain_definition(size):
    torch.manual_seed(0)
    module = LocalAttention(8, 6, head_dim=3).double()
    with torch.no_grad():   # make every part matter: random bias, full-size output projection
        module.position_bias.normal_()
        module.out_proj.weight.normal_(std=0.5)
    x1 = torch.randn(2, 8, *size, dtype=torch.float64, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    fast = module(x1)
    grads_fast = torch.autograd.grad(fast.square().sum(), [x1, *module.parameters()])
    plain = plain_local_attention(module, x2)
    grads_plain = torch.autograd.grad(plain.square().sum(), [x2, *module.parameters()])
    assert fast.shape == (2, 6, *size)
    assert torch.allclose(fast, plain, atol=1e-10)
    for gf, gp in zip(grads_fast, grads_plain):
        assert torch.allclose(gf, gp, atol=1e-9)


def test_local_attention_does_not_look_outside_its_window():
    torch.manual_seed(0)
    module = LocalAttention(8, 8, head_dim=4).eval()
    with torch.no_grad():
        module.out_proj.weight.normal_()
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
    # the published start (output projection at 1/100) moves the logits by about 1-2% of their range
    change = (after_out - before_out).abs().max() / before_out.abs().max()
    assert 0 < change < 5e-2
    assert (after_out.argmax(1) == before_out.argmax(1)).float().mean() > 0.99
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
    x = torch.randn(1, 3, 32, 64)
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
    ckpt["model"] = model_checkpoint(add_local_attention(UNet(dataclasses.replace(
        shrink(PRESETS["tiny"]), base_features=8)), (1,)))["model"]
    torch.save(ckpt, wrong)
    with pytest.raises(ValueError, match=r"(?s)wrong.pt: weights do not fit.*unexpected: .*shape mismatch"):
        load_model(wrong)


def test_unet_command_describes_a_preset():
    out = subprocess.run([sys.executable, "unet.py", "--preset", "512_96"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert "parameters: 143.2 M" in out     # the released 512_96 (b = 48, attention bottleneck)
    assert "GFLOPs" in out and "paper: 560 MB" in out


def test_older_checkpoints_are_refused_with_the_reason(tmp_path):
    model = UNet(shrink(PRESETS["tiny"]))
    torch.save({**model_checkpoint(model), "format_version": 1}, tmp_path / "old.pt")
    with pytest.raises(ValueError, match="old.pt: checkpoint format version 1 holds this project's earlier"):
        read_checkpoint(tmp_path / "old.pt")


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_global_attention_runs_on_a_fused_kernel_in_either_layout(layout):
    """Flash attention needs q, k and v of one width with a unit last stride; the math fallback is slow."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    torch.manual_seed(0)
    attention = GlobalAttention(64).eval()
    x = torch.randn(2, 64, 4, 6).contiguous(memory_format=layout)
    with torch.no_grad():
        plain = attention(x)
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):    # raises "No available kernel" otherwise
            fused = attention(x)
    torch.testing.assert_close(fused, plain)
