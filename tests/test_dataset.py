"""Tests for dataset.py on tiny written data sets. Run: `python -m pytest tests/test_dataset.py -q`."""

import hashlib
import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dataset import (DEFAULT_TEST_SPLIT, DataError, EmptySplitError, FashionDataset, Pair, check_dataset, find_pairs,
                     outfit_key, outfit_overlap, outfit_split, read_split_file, split_pairs)
from images import boundary_target, color_jitter, colorize, normalize, prepare_batch, read_image, read_mask
from labels import IGNORE_INDEX, LABELS, NUM_LABELS, PALETTE
from synthetic import write_synthetic_dataset

PROJECT = Path(__file__).resolve().parents[1]
NAME = re.compile(r"^(MEN|WOMEN)-[A-Za-z_]+-id_\d{8}-\d{2}_\d_(front|side|back|full|flat|additional)$")


def _write_pair(root: Path, stem: str, photo: np.ndarray, mask: np.ndarray, **jpeg) -> Pair:
    """photo (H, W, 3) uint8 as JPEG, mask (H, W) uint8 as an L-mode PNG, in the real layout."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "segm").mkdir(parents=True, exist_ok=True)
    pair = Pair(stem, root / "images" / f"{stem}.jpg", root / "segm" / f"{stem}_segm.png")
    Image.fromarray(photo).save(pair.image, **({"quality": 95} | jpeg))
    Image.fromarray(mask).save(pair.mask)
    return pair


def _stripes_mask(height: int, width: int) -> np.ndarray:
    """(H, W) uint8: horizontal bands of labels 0, 1, 5, 13, ... so every strip holds several labels."""
    ids = np.array([0, 1, 5, 13, 15, 3, 4])
    return ids[(np.arange(height) // 20) % len(ids)][:, None].repeat(width, 1).astype(np.uint8)


def _noise_photo(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_label_table_and_palette():
    assert len(LABELS) == NUM_LABELS == 24 and LABELS[15] == "skin" and LABELS[23] == "tie"
    assert PALETTE.shape == (24, 3) and PALETTE.dtype == np.uint8
    assert len({tuple(c) for c in PALETTE.tolist()}) == 24
    assert PALETTE[0].max() < 64  # background dark
    colours = colorize(torch.tensor([[[0, 15], [23, IGNORE_INDEX]]]))  # (1, 3, 2, 2)
    assert colours.dtype == torch.uint8 and colours.shape == (1, 3, 2, 2)
    assert colours[0, :, 0, 1].tolist() == PALETTE[15].tolist() and colours[0, :, 1, 1].tolist() == [0, 0, 0]


# --- pairing, split files, splits -------------------------------------------------------------

def test_reads_l_and_p_masks_as_label_ids(tmp_path):
    rng = np.random.default_rng(0)
    labels = _stripes_mask(140, 100)
    photo = _noise_photo(rng, 140, 100)
    l_pair = _write_pair(tmp_path / "l", "MEN-Pants-id_00000001-01_1_front", photo, labels)
    p_pair = _write_pair(tmp_path / "p", "MEN-Pants-id_00000001-01_1_front", photo, labels)
    p_image = Image.frombytes("P", (100, 140), labels.tobytes())
    p_image.putpalette([v for i in range(256) for v in (250 - i % 200, 3 * i % 256, 77)])  # colour != id
    p_image.save(p_pair.mask)
    assert Image.open(p_pair.mask).mode == "P"
    np.testing.assert_array_equal(read_mask(p_pair.mask), labels)
    np.testing.assert_array_equal(read_mask(l_pair.mask), labels)
    samples = [FashionDataset(pair.image.parents[1], pairs=[pair], image_size=64, mode="center_strip")[0]
               for pair in (l_pair, p_pair)]
    assert torch.equal(samples[0]["mask"], samples[1]["mask"])
    assert set(samples[1]["mask"].unique().tolist()) <= set(np.unique(labels).tolist())


def test_find_pairs_pairs_files_and_reports_orphans(tmp_path):
    rng = np.random.default_rng(1)
    for stem in ("b", "a", "unlabelled"):
        _write_pair(tmp_path, stem, _noise_photo(rng, 30, 20), np.zeros((30, 20), np.uint8))
    (tmp_path / "segm" / "unlabelled_segm.png").unlink()
    (tmp_path / "images" / "notes.txt").write_text("not a photo")
    (tmp_path / "segm" / ".DS_Store").write_bytes(b"\0")
    pairs = find_pairs(tmp_path)
    assert [p.stem for p in pairs] == ["a", "b"]
    assert pairs[0] == Pair("a", tmp_path / "images" / "a.jpg", tmp_path / "segm" / "a_segm.png")
    with pytest.raises(DataError, match="unlabelled.jpg"):
        find_pairs(tmp_path, require_masks=True)
    Image.fromarray(np.zeros((30, 20), np.uint8)).save(tmp_path / "segm" / "orphan_segm.png")
    with pytest.raises(DataError, match="orphan_segm.png"):
        find_pairs(tmp_path)
    with pytest.raises(DataError, match="images"):
        find_pairs(tmp_path / "segm")


def test_split_pairs_splits_by_name(tmp_path):
    stems = [f"WOMEN-Dresses-id_9{i:07d}-01_1_front" for i in range(300)]  # not published names
    pairs = [Pair(s, Path(f"{s}.jpg"), Path(f"{s}_segm.png")) for s in stems]
    split_file = tmp_path / "test.txt"
    lines = [f"{s}_segm.png" for s in stems[:10]] + [f"{s}.jpg" for s in stems[10:20]] + stems[20:30]
    split_file.write_text("# held out\n\n" + "\n".join(lines) + "\n")
    assert read_split_file(split_file) == stems[:30]
    test = split_pairs(pairs, "test", split_file)
    val = split_pairs(pairs, "val", split_file, val_fraction=0.1)
    train = split_pairs(pairs, "train", split_file, val_fraction=0.1)
    assert {p.stem for p in test} == set(stems[:30])
    assert not {p.stem for p in val} & {p.stem for p in train}
    assert sorted(test + val + train, key=lambda p: p.stem) == sorted(pairs, key=lambda p: p.stem)
    # the scheme pinned, so images never move between train and val across versions: a hash of the
    # outfit ("id_9xxxxxxx-01"), not of the whole name
    hashed = {s: int(hashlib.sha1(s[14:28].encode()).hexdigest(), 16) % 10_000 for s in stems[30:]}
    assert {p.stem for p in val} == {s for s, h in hashed.items() if h < 1_000}
    assert 5 <= len(val) <= 60
    assert split_pairs(list(reversed(pairs)), "val", split_file, val_fraction=0.1) == val[::-1]  # not order-based
    assert split_pairs(pairs, "all") == pairs
    split_file.write_text(stems[0] + "\nWOMEN-Skirts-id_99999999-01_1_front_segm.png\n")
    with pytest.raises(DataError, match="WOMEN-Skirts-id_99999999-01_1_front"):
        split_pairs(pairs, "train", split_file)
    with pytest.raises(DataError, match="test split is empty"):
        split_pairs(pairs, "test")  # none of these names is in the published list
    with pytest.raises(DataError, match="val split is empty"):
        split_pairs(pairs, "val", val_fraction=0.0)



def _pairs(stems: list[str]) -> list[Pair]:
    return [Pair(s, Path(f"{s}.jpg"), Path(f"{s}_segm.png")) for s in stems]


def test_outfit_key_follows_the_real_names():
    published = read_split_file(DEFAULT_TEST_SPLIT)
    assert all(re.fullmatch(r"id_\d{8}-\d{2}", outfit_key(name)) for name in published)
    assert outfit_key("WOMEN-Dresses-id_00000001-01_1_front") == "id_00000001-01"
    assert outfit_key("WOMEN-Rompers_Jumpsuits-id_00000001-01_7_additional") == "id_00000001-01"
    assert outfit_key("MEN-Tees_Tanks-id_00000001-02_6_flat") == "id_00000001-02"   # the next outfit
    for other in ("a", "IMG_0001", "holiday-2021_1_front", "id_00000001-01"):      # not in the scheme
        assert outfit_key(other) == other


def test_views_of_one_outfit_are_on_one_side_of_the_validation_split(tmp_path):
    views = ("1_front", "2_side", "3_back", "4_full", "7_additional")
    stems = [f"WOMEN-Dresses-id_{i:08d}-{j:02d}_{v}" for i in range(1, 80) for j in (1, 2) for v in views]
    split_file = tmp_path / "test.txt"
    split_file.write_text(stems[0] + "\n")
    for fraction in (0.05, 0.2, 0.5):
        val = {p.stem for p in split_pairs(_pairs(stems), "val", split_file, val_fraction=fraction)}
        train = {p.stem for p in split_pairs(_pairs(stems), "train", split_file, val_fraction=fraction)}
        assert not val & train and len(val | train) == len(stems) - 1
        assert not {outfit_key(s) for s in val} & {outfit_key(s) for s in train}
        assert 0.5 * fraction < len(val) / len(stems) < 2 * fraction


def test_small_sets_validate_on_one_outfit_unless_there_is_only_one(tmp_path):
    split_file = tmp_path / "test.txt"
    split_file.write_text("MEN-Pants-id_00000099-01_1_front\n")
    stems = [f"MEN-Pants-id_{i:08d}-01_{v}" for i in (1, 2, 3, 99) for v in ("1_front", "4_full", "3_back")]
    val = split_pairs(_pairs(stems), "val", split_file, val_fraction=0.05)
    train = split_pairs(_pairs(stems), "train", split_file, val_fraction=0.05)
    # 11 non-test images (outfit 99 has two views beside its test one), 4 outfits: one goes to val
    assert len({outfit_key(p.stem) for p in val}) == 1 and len(val) == 3 and len(train) == 8
    # a fraction that holds out every outfit still leaves one for training
    assert len(split_pairs(_pairs(stems), "train", split_file, val_fraction=0.99)) >= 3
    one = [s for s in stems if "id_00000001" in s] + ["MEN-Pants-id_00000099-01_1_front"]
    assert len(split_pairs(_pairs(one), "train", split_file, val_fraction=0.5)) == 3
    with pytest.raises(EmptySplitError, match="val split is empty.*1 outfit.*single outfit stays for training"):
        split_pairs(_pairs(one), "val", split_file, val_fraction=0.5)


def test_outfit_overlap_by_hand():
    test = ["WOMEN-Dresses-id_00000001-01_1_front", "WOMEN-Dresses-id_00000001-01_2_side",  # one outfit
            "WOMEN-Dresses-id_00000002-01_1_front", "MEN-Pants-id_00000003-01_4_full", "mine"]
    others = ["WOMEN-Dresses-id_00000001-01_4_full",    # a view of a test outfit: both its test views count
              "WOMEN-Dresses-id_00000002-02_1_front",    # the same person, another outfit: no overlap
              "WOMEN-Skirts-id_00000003-01_7_additional",  # the same outfit under another category
              "mine_2"]
    assert outfit_overlap(test, test + others) == {"images": 3 + 0, "of": 5}
    assert outfit_overlap(test, test) == {"images": 0, "of": 5}   # test images among themselves: none


def test_outfit_split_keeps_every_outfit_on_one_side():
    stems = [f"WOMEN-Dresses-id_{i:08d}-01_{v}" for i in range(1, 41) for v in ("1_front", "4_full")]
    stems += [f"photo_{i}" for i in range(20)]
    test = outfit_split(stems, 0.25, seed=3)
    assert test == outfit_split(list(reversed(stems)), 0.25, seed=3) != outfit_split(stems, 0.25, seed=4)
    assert 25 <= len(test) <= 27
    assert outfit_overlap(test, stems) == {"images": 0, "of": len(test)}
    assert len(outfit_split(stems[:4], 0.99)) == 2   # one outfit always stays for training
    with pytest.raises(DataError, match="at least two outfits"):
        outfit_split(stems[:2])


# --- boundary target ---------------------------------------------------------------------------

def test_boundary_target_by_hand():
    corner = torch.zeros(4, 4, dtype=torch.long)
    corner[:2, :2] = 3
    expected = torch.tensor([[0, 1, 1, 0],
                             [1, 1, 1, 0],
                             [1, 1, 0, 0],
                             [0, 0, 0, 0]], dtype=torch.float32)
    result = boundary_target(corner)
    assert result.dtype == torch.float32
    assert torch.equal(result, expected)
    uniform = torch.full((4, 4), 7, dtype=torch.long)
    assert torch.equal(boundary_target(uniform), torch.zeros(4, 4))
    padded = F.pad(corner, (0, 2, 0, 1), value=IGNORE_INDEX)  # (5, 6): padding is nobody's neighbour
    assert torch.equal(boundary_target(padded), F.pad(expected, (0, 2, 0, 1)))
    batch = torch.stack([corner, uniform, corner.T.contiguous()])  # (3, 4, 4)
    assert torch.equal(boundary_target(batch), torch.stack([expected, torch.zeros(4, 4), expected.T]))
    assert boundary_target(batch.unsqueeze(1)).shape == (3, 1, 4, 4)


# --- bad files ---------------------------------------------------------------------------------

def _plant(kind: str, pair: Pair) -> Path:
    """Break one file of a pair; return the file that the error must name."""
    if kind == "size":
        Image.fromarray(np.zeros((50, 40), np.uint8)).save(pair.mask)
        return pair.mask
    if kind == "labels":
        bad = read_mask(pair.mask).copy()
        bad[:3, :3] = 24
        bad[5, 5] = 200
        Image.fromarray(bad).save(pair.mask)
        return pair.mask
    if kind == "rgb":
        Image.fromarray(PALETTE[read_mask(pair.mask)]).save(pair.mask)
        return pair.mask
    if kind == "broken mask":
        pair.mask.write_bytes(pair.mask.read_bytes()[:60])
        return pair.mask
    data = pair.image.read_bytes()
    pair.image.write_bytes(data[: len(data) // 2] if kind == "truncated" else b"definitely not a JPEG" * 50)
    return pair.image


@pytest.mark.parametrize("kind, message", [
    ("size", "is 40x50 but its photo"), ("labels", r"24 \(9 px\), 200 \(1 px\)"), ("rgb", "RGB-coloured"),
    ("truncated", "cannot decode"), ("garbage", "cannot decode"),
])
def test_bad_files_raise_data_error_naming_the_file(tmp_path, kind, message):
    pair = _write_pair(tmp_path, "a", _noise_photo(np.random.default_rng(2), 110, 75), _stripes_mask(110, 75))
    bad_file = _plant(kind, pair)
    dataset = FashionDataset(tmp_path, pairs=[pair], image_size=32)
    with pytest.raises(DataError, match=message) as caught:
        dataset[0]
    assert str(bad_file) in str(caught.value)


def test_skip_bad_returns_next_good_sample_and_logs_once(tmp_path, caplog):
    rng = np.random.default_rng(3)
    pairs = [_write_pair(tmp_path, stem, _noise_photo(rng, 80, 60), _stripes_mask(80, 60)) for stem in "abc"]
    _plant("garbage", pairs[1])
    with pytest.raises(DataError, match="b.jpg"):
        FashionDataset(tmp_path, pairs=pairs, image_size=32)[1]
    dataset = FashionDataset(tmp_path, pairs=pairs, image_size=32, skip_bad=True)
    caplog.set_level(logging.WARNING, logger="dataset")
    assert dataset[1]["index"].item() == 2
    assert dataset[1]["index"].item() == 2
    assert dataset[0]["index"].item() == 0
    assert sum("b.jpg" in record.getMessage() for record in caplog.records) == 1
    for pair in (pairs[0], pairs[2]):
        _plant("truncated", pair)
    with pytest.raises(DataError, match="all 3 samples are unreadable"):
        dataset[0]


# --- samples -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> list[Pair]:
    return write_synthetic_dataset(tmp_path_factory.mktemp("small"), 4, seed=7, width=150, height=220)


def test_random_strip_sample_shapes_and_determinism(small_set):
    root = small_set[0].image.parents[1]
    dataset = FashionDataset(root, pairs=small_set, image_size=48, color_jitter=0.3)
    sample = dataset[2]
    assert sample["image"].shape == (3, 48, 48) and sample["image"].dtype == torch.uint8
    assert sample["mask"].shape == (48, 48) and sample["mask"].dtype == torch.uint8
    assert sample["jitter"].shape == (3,) and ((sample["jitter"] - 1).abs() <= 0.3).all()
    assert sample["index"].dtype == torch.int64 and sample["index"].item() == 2
    assert set(sample["mask"].unique().tolist()) <= set(np.unique(read_mask(small_set[2].mask)).tolist())
    again = FashionDataset(root, pairs=small_set, image_size=48, color_jitter=0.3)[2]
    assert all(torch.equal(sample[key], again[key]) for key in sample)
    changed = []
    for epoch in range(1, 6):
        dataset.set_epoch(epoch)
        changed.append(not torch.equal(dataset[2]["image"], sample["image"]))
    assert any(changed)
    center = FashionDataset(root, pairs=small_set, image_size=48, mode="center_strip")
    first = center[1]
    assert "jitter" not in first
    center.set_epoch(3)
    assert torch.equal(center[1]["image"], first["image"]) and torch.equal(center[1]["mask"], first["mask"])


def test_prepare_batch_normalises_with_given_mean_and_std(tmp_path):
    colour = np.array([200, 100, 50], np.uint8)
    photo = np.broadcast_to(colour, (90, 60, 3)).copy()
    pair = _write_pair(tmp_path, "a", photo, np.full((90, 60), 4, np.uint8), quality=100)
    sample = FashionDataset(tmp_path, pairs=[pair], image_size=24)[0]
    assert (sample["image"].int() - torch.tensor(colour).view(3, 1, 1)).abs().max() <= 3  # JPEG rounding
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    batch = torch.utils.data.default_collate([sample, sample])
    image, mask, boundary = prepare_batch(batch, mean, std, torch.device("cpu"))
    expected = (sample["image"].double() / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    assert image.dtype == torch.float32 and image.shape == (2, 3, 24, 24)
    torch.testing.assert_close(image, expected.float().expand(2, 3, 24, 24))
    assert mask.dtype == torch.int64 and torch.equal(mask, torch.full((2, 24, 24), 4))
    assert torch.equal(boundary, torch.zeros(2, 24, 24))


def test_color_jitter_factors():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 8, 8, generator=g) * 200 + 20                   # (2, 3, 8, 8) in [20, 220]
    grey_weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    grey = (image * grey_weights).sum(1, keepdim=True)                       # (2, 1, 8, 8)
    same = torch.ones(2, 3)
    torch.testing.assert_close(color_jitter(image, same), image)
    darker = color_jitter(image, torch.tensor([[0.5, 1, 1], [1, 1, 1]]))
    torch.testing.assert_close(darker, torch.stack([image[0] * 0.5, image[1]]))
    flat = color_jitter(image, torch.tensor([[1.0, 0, 1], [1, 1, 0]]))
    torch.testing.assert_close(flat[0], grey[0].mean().expand(3, 8, 8))     # no contrast: the mean grey
    torch.testing.assert_close(flat[1], grey[1].expand(3, 8, 8))            # no saturation: each pixel's grey
    assert color_jitter(image, torch.full((2, 3), 1.9)).max() <= 255


def test_whole_mode_pads_to_size_multiple(small_set):
    dataset = FashionDataset("unused", pairs=small_set, image_size=64, mode="whole", size_multiple=32)
    sample = dataset[0]
    height, width = round(220 * 64 / 150), 64  # 94 x 64 at the training scale
    assert sample["valid_hw"].tolist() == [height, width]
    assert sample["image"].shape == (3, 96, 64) and sample["mask"].shape == (96, 64)
    assert (sample["mask"][height:] == IGNORE_INDEX).all()
    assert (sample["mask"][:height] < NUM_LABELS).all()
    image, mask, boundary = prepare_batch({k: v[None] for k, v in sample.items()}, (0.5,) * 3, (0.2,) * 3,
                                          torch.device("cpu"))
    assert (image[0, :, height:] == 0).all() and (image[0, :, :height] != 0).any()  # padding = the mean colour
    assert torch.equal(boundary[0], F.pad(boundary_target(mask[0, :height]), (0, 0, 0, 96 - height)))
    assert torch.equal(normalize(sample["image"][None], (0.5,) * 3, (0.2,) * 3, sample["valid_hw"][None]), image)


def test_random_strip_crop_keeps_photo_and_mask_aligned(tmp_path):
    """Flat colour per label in 40 px blocks: inside each region the photo colour must name the label."""
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255], [255, 0, 255]])
    rng = np.random.default_rng(4)
    blocks = rng.integers(0, len(colours), (11, 8))
    labels = (blocks.repeat(40, 0).repeat(40, 1)[:440, :300] + 1).astype(np.uint8)  # (440, 300) ids 1..6
    pair = _write_pair(tmp_path, "a", colours[labels - 1].astype(np.uint8), labels, subsampling=0)
    assert read_image(pair.image, 64).scale == 0.25  # the draft decode is what is being tested
    dataset = FashionDataset(tmp_path, pairs=[pair], image_size=64)
    for epoch in range(4):
        dataset.set_epoch(epoch)
        sample = dataset[0]
        edges = boundary_target(sample["mask"])
        near_edge = F.max_pool2d(edges[None, None], 5, stride=1, padding=2)[0, 0] > 0  # (64, 64)
        rgb = sample["image"].permute(1, 2, 0).reshape(-1, 1, 3).float()  # (64*64, 1, 3)
        nearest = (rgb - torch.tensor(colours, dtype=torch.float32)).norm(dim=-1).argmin(1).view(64, 64) + 1
        inside = ~near_edge
        assert inside.sum() > 500
        assert (nearest[inside] == sample["mask"][inside]).float().mean() > 0.99


# --- synthetic data and checks -----------------------------------------------------------------

def test_synth_command_writes_a_readable_real_size_set(tmp_path):
    out = tmp_path / "synth"
    subprocess.run([sys.executable, "synthetic.py", str(out), "--count", "20"], cwd=PROJECT, check=True,
                   capture_output=True)
    images = sorted((out / "images").glob("*.jpg"))
    masks = sorted((out / "segm").glob("*_segm.png"))
    assert len(images) == len(masks) == 20
    assert all(NAME.match(path.stem) for path in images)
    assert all(Image.open(path).size == (750, 1101) for path in images + masks)
    present = [set(np.unique(read_mask(path)).tolist()) for path in masks]
    assert all(len(labels) >= 5 for labels in present) and len(set().union(*present)) >= 15
    published = set(read_split_file(DEFAULT_TEST_SPLIT))
    assert sum(path.stem in published for path in images) == 2
    assert len(FashionDataset(out, split="test")) == 2
    train = FashionDataset(out, split="train", image_size=64)
    sample = train[0]
    assert sample["image"].shape == (3, 64, 64) and len(sample["mask"].unique()) >= 3


def test_synthetic_set_is_deterministic(tmp_path):
    first = write_synthetic_dataset(tmp_path / "a", 6, seed=3, width=150, height=220)
    second = write_synthetic_dataset(tmp_path / "b", 6, seed=3, width=150, height=220)
    other = write_synthetic_dataset(tmp_path / "c", 6, seed=4, width=150, height=220)
    assert [p.stem for p in first] == [p.stem for p in second]
    assert all(a.mask.read_bytes() == b.mask.read_bytes() and a.image.read_bytes() == b.image.read_bytes()
               for a, b in zip(first, second))
    assert [p.stem for p in first] != [p.stem for p in other]


def test_check_finds_every_planted_problem(tmp_path):
    root = tmp_path / "set"
    pairs = write_synthetic_dataset(root, 10, seed=1, width=150, height=220)
    good = subprocess.run([sys.executable, "dataset.py", "check", str(root)], cwd=PROJECT, capture_output=True,
                          text=True)
    assert good.returncode == 0, good.stdout + good.stderr
    kinds = ("size", "labels", "rgb", "broken mask", "truncated", "garbage")
    planted = [_plant(kind, pair) for kind, pair in zip(kinds, pairs)]
    (root / "images" / "notes.txt").write_text("not a photo")
    (root / "segm" / ".DS_Store").write_bytes(b"\0")
    Image.fromarray(np.zeros((220, 150), np.uint8)).save(root / "segm" / "MEN-Pants-id_00000002-01_1_front_segm.png")
    _write_pair(root, "MEN-Pants-id_00000003-01_1_front", _noise_photo(np.random.default_rng(5), 220, 150),
                np.zeros((220, 150), np.uint8))
    (root / "segm" / "MEN-Pants-id_00000003-01_1_front_segm.png").unlink()  # unlabelled photo: fine
    split_file = tmp_path / "split.txt"
    split_file.write_text(f"{pairs[6].stem}_segm.png\nWOMEN-Skirts-id_99999999-01_1_front_segm.png\n")
    problems = check_dataset(root, split_file)
    named = [str(p) for p in planted] + ["notes.txt", ".DS_Store", "MEN-Pants-id_00000002-01_1_front_segm.png",
                                         "WOMEN-Skirts-id_99999999-01_1_front"]
    assert len(problems) == len(named), "\n".join(problems)
    for name in named:
        assert sum(name in line for line in problems) == 1, (name, problems)
    assert not any("id_00000003" in line for line in problems)
    bad = subprocess.run([sys.executable, "dataset.py", "check", str(root)], cwd=PROJECT, capture_output=True,
                         text=True)
    assert bad.returncode == 1
    assert all(str(path) in bad.stdout for path in planted)


def test_split_command_writes_an_outfit_disjoint_split_the_loader_takes(tmp_path):
    root, split_file = tmp_path / "set", tmp_path / "split.txt"
    stems = [p.stem for p in write_synthetic_dataset(root, 20, seed=4, width=64, height=96)]
    assert all(NAME.match(s) for s in stems) and len({outfit_key(s) for s in stems}) <= 12  # views of outfits
    published = set(read_split_file(DEFAULT_TEST_SPLIT))
    assert outfit_overlap([s for s in stems if s in published], stems) == {"images": 2, "of": 2}
    default = subprocess.run([sys.executable, "dataset.py", "check", str(root)], cwd=PROJECT,
                             capture_output=True, text=True)
    assert "deepfashion-mm-test-split.txt: 2 of its 2 images" in default.stderr
    assert "share an outfit with a labelled image outside it" in default.stderr

    made = subprocess.run([sys.executable, "dataset.py", "split", "--by-outfit", str(root), "--out", str(split_file),
                           "--fraction", "0.2", "--seed", "1"], cwd=PROJECT, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    common = dict(image_size=32, test_split=split_file, val_fraction=0.1)
    test, train, val = (FashionDataset(root, split, **common) for split in ("test", "train", "val"))
    outfits = [{outfit_key(p.stem) for p in ds.pairs} for ds in (test, train, val)]
    assert not outfits[0] & outfits[1] and not outfits[0] & outfits[2] and not outfits[1] & outfits[2]
    assert len(test) + len(train) + len(val) == 20 and len(test) >= 4
    assert test[0]["image"].shape == (3, 32, 32)
    checked = subprocess.run([sys.executable, "dataset.py", "check", str(root), "--test-split", str(split_file)],
                             cwd=PROJECT, capture_output=True, text=True)
    assert checked.returncode == 0 and f"split.txt: 0 of its {len(test)} images" in checked.stderr
