"""run.py: the staged recipe, exact resume, gradient accumulation, checkpoints, flags."""
import dataclasses
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import default_collate

import run
from dataset import FashionDataset, outfit_key
from losses import LossConfig
from synthetic import write_synthetic_dataset
from unet import PRESETS, UNet, read_checkpoint

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--image_size", "32", "--effective_batch_size", "2", "--num_workers", "0", "--val_fraction", "0.25",
        "--warmup_steps", "1", "--val_panels", "2"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(root, 16, seed=11, width=150, height=220)   # 8 training images at val 0.25
    return root


def train(data_dir: Path, out: Path, *flags: str) -> Path:
    cfg = run.parse_config(["--data_dir", str(data_dir), "--output_dir", str(out), *FAST, *flags])
    return run.train(cfg)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)["model"]


def changed(before: dict, after: dict) -> set[str]:
    return {k for k in after if k in before and not torch.equal(before[k], after[k])}


def test_the_five_stages_chain_and_train_only_what_they_should(data_dir, tmp_path):
    s1 = train(data_dir, tmp_path / "s1", "--bottleneck", "simple", "--max_steps", "2")
    assert read_checkpoint(s1)["model_config"]["bottleneck"] == "simple"

    s2 = train(data_dir, tmp_path / "s2", "--pretrained_model_path", str(s1), "--upgrade_bottleneck",
               "--max_steps", "2")
    w1, w2 = weights(s1), weights(s2)
    assert read_checkpoint(s2)["model_config"]["bottleneck"] == "attention"
    assert any(k.startswith("bottleneck.blocks.") for k in w2)
    outside = {k for k in w2 if not k.startswith("bottleneck.")}
    assert not changed(w1, w2) & outside, "stage 2 must train the bottleneck only"

    s3 = train(data_dir, tmp_path / "s3", "--pretrained_model_path", str(s2), "--max_steps", "2")
    w3 = weights(s3)
    assert any(k.startswith("encoder.") for k in changed(w2, w3))
    assert any(k.startswith("bottleneck.") for k in changed(w2, w3))

    s4 = train(data_dir, tmp_path / "s4", "--pretrained_model_path", str(s3), "--upgrade_local_attention",
               "--local_attention_levels", "1", "2", "--max_steps", "2")
    w4 = weights(s4)
    assert tuple(read_checkpoint(s4)["model_config"]["local_attention_levels"]) == (1, 2)
    new = w4.keys() - w3.keys()
    assert new and all(".local_attention." in k for k in new)
    assert not changed(w3, w4), "stage 4 must train the new local attention only"
    s4_start = {k: v for k, v in w4.items() if k in new}

    s5 = train(data_dir, tmp_path / "s5", "--pretrained_model_path", str(s4), "--model_use_local_attention",
               "--local_attention_levels", "1", "2", "--max_steps", "2")
    w5 = weights(s5)
    assert w5.keys() == w4.keys()
    assert any(k.startswith("encoder.") for k in changed(w4, w5))
    assert changed(s4_start, w5), "stage 5 trains local attention too"


@pytest.mark.parametrize("layout", [
    ["--effective_batch_size", "4", "--batch_size", "2"],   # 8 training images, 2 steps of 2x2 an epoch:
                                                            # step 3 is mid-epoch
    ["--effective_batch_size", "3"],   # steps of 3, 3, 2 images: step 3 ends an epoch on a short step
])
def test_resume_continues_exactly(data_dir, tmp_path, layout):
    flags = ["--max_steps", "6", "--checkpointing_steps", "3", "--checkpoints_total_limit", "5", *layout]
    straight = train(data_dir, tmp_path / "straight", *flags)
    middle = tmp_path / "straight" / "checkpoints" / "step-0000003.pt"
    assert read_checkpoint(middle)["step"] == 3
    resumed = train(data_dir, tmp_path / "resumed", *flags, "--resume", str(middle))
    a, b = weights(straight), weights(resumed)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_needs_a_training_state_not_just_weights(data_dir, tmp_path):
    final = train(data_dir, tmp_path / "run", "--max_steps", "1")
    with pytest.raises(SystemExit, match="holds weights only.*--pretrained_model_path"):
        run.main(["--data_dir", str(data_dir), "--output_dir", str(tmp_path / "again"), *FAST,
                  "--resume", str(final)])


def test_resume_latest_picks_the_newest_checkpoint_or_starts_fresh(data_dir, tmp_path):
    out = tmp_path / "run"
    cfg = run.parse_config(["--output_dir", str(out), "--resume", "latest"])
    assert run.resume_path(cfg) is None
    train(data_dir, out, "--max_steps", "4", "--checkpointing_steps", "1")
    assert run.resume_path(cfg).name == "step-0000004.pt"


def test_gradient_accumulation_matches_the_large_batch(data_dir):
    """Exactly with --ce_mean pixels; the released weighted mean normalises each micro-batch alone."""
    torch.manual_seed(0)
    model = UNet(dataclasses.replace(PRESETS["tiny"], image_size=32)).double()  # float64: exact math, no fp noise
    ds = FashionDataset(data_dir, "all", image_size=32, mode="random_strip")
    samples = [{**s, "image": s["image"].double()} for s in (ds[i] for i in range(4))]
    cpu = torch.device("cpu")
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    grads = []
    for split in ([samples], [samples[:2], samples[2:]], [samples[:3], samples[3:]]):
        model.zero_grad()
        parts = run.accumulate_gradients(model, [(default_collate(s), len(s) / 4) for s in split],
                                         LossConfig(ce_mean="pixels"), cpu, torch.autocast("cpu", enabled=False),
                                         scaler)
        grads.append(([p.grad.clone() for p in model.parameters()], parts["total"]))
    (big, big_loss), *others = grads
    for small, small_loss in others:
        assert torch.allclose(big_loss, small_loss, rtol=1e-12)
        for a, b in zip(big, small):
            assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


def test_processes_split_each_step_and_all_take_part():
    shares = [run.my_micro_batches([5, 6, 7, 8, 9], run.Dist(rank, 2), 2) for rank in (0, 1)]
    assert shares[0] == ([[5, 7], [9]], [0.4, 0.2])
    assert shares[1] == ([[6, 8]], [0.4])
    # the images of a process are the same at any micro-batch: step[rank::world]
    assert run.my_micro_batches([5, 6, 7, 8, 9], run.Dist(0, 2), 1) == ([[5], [7], [9]], [0.2, 0.2, 0.2])
    assert run.my_micro_batches([5], run.Dist(1, 2), 2) == ([[5]], [0.0])   # nothing left: one image, weight 0


def test_the_last_partial_step_of_an_epoch_is_kept():
    cfg = run.TrainConfig(effective_batch_size=6)
    windows = run.epoch_windows(11, cfg, epoch=0)
    assert [len(w) for w in windows] == [6, 5]
    batches, shares = run.my_micro_batches(windows[-1], run.Dist(), 2)
    assert [len(b) for b in batches] == [2, 2, 1] and shares == [0.4, 0.4, 0.2]
    assert sorted(i for w in windows for i in w) == list(range(11))
    assert run.epoch_windows(11, cfg, 0) == windows
    assert run.epoch_windows(11, cfg, 1) != windows


def test_checkpoint_limit_and_outputs(data_dir, tmp_path):
    out = tmp_path / "run"
    final = train(data_dir, out, "--max_steps", "5", "--checkpointing_steps", "1",
                  "--checkpoints_total_limit", "2")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000004.pt", "step-0000005.pt"]
    assert final == out / "model.pt" and (out / "best.pt").is_file() and (out / "config.json").is_file()
    assert list(out.glob("events.out.tfevents.*"))
    ckpt = read_checkpoint(out / "checkpoints" / "step-0000005.pt")
    for key in ("optimizer", "scaler", "train_config", "rng", "epoch", "epoch_images", "best_miou", "stage"):
        assert key in ckpt, key
    assert not list(out.rglob("*.tmp"))


def test_learning_rate_schedule():
    cfg = run.TrainConfig(learning_rate=1.0, warmup_steps=10, lr_scheduler="cosine", min_lr_ratio=0.1)
    assert run.lr_at(0, 100, cfg) == pytest.approx(0.1)
    assert run.lr_at(9, 100, cfg) == pytest.approx(1.0)
    assert run.lr_at(55, 100, cfg) == pytest.approx(0.55)
    assert run.lr_at(100, 100, cfg) == pytest.approx(0.1)
    linear = dataclasses.replace(cfg, lr_scheduler="linear")
    assert run.lr_at(55, 100, linear) == pytest.approx(0.55)
    constant = dataclasses.replace(cfg, lr_scheduler="constant")
    assert run.lr_at(80, 100, constant) == 1.0


@pytest.mark.parametrize("flags, message", [
    (["--no_such_flag"], "unrecognized arguments: --no_such_flag"),
    (["--upgrade_bottleneck"], "give --pretrained_model_path"),
    (["--pretrained_model_path", "a.pt", "--upgrade_bottleneck", "--upgrade_local_attention"], "choose one stage"),
    (["--pretrained_model_path", "a.pt", "--preset", "512_96"], "architecture comes from the checkpoint"),
    (["--local_attention_levels", "1"], "goes with --upgrade_local_attention"),
    (["--batch_size", "0"], "--batch_size must be at least 1"),
    (["--batch_size", "many"], "--batch_size must be at least 1, or auto"),
    (["--batch_size", "16"], "--batch_size 16 is more than the --effective_batch_size of 4 images a step"),
    (["--gradient_accumulation_steps", "2"], "--gradient_accumulation_steps is gone: give the images per optimizer "
                                             "step, --effective_batch_size"),   # an earlier version's flag
    (["--plan_json", "plan.json"], "--plan_json goes with --plan"),
    (["--mixed_precision", "fp8"], "invalid choice: 'fp8'"),
    (["--class_weights", "1", "2"], "class_weights needs 24 values"),
])
def test_bad_flags_are_rejected_clearly(flags, message, capsys):
    with pytest.raises(SystemExit) as e:
        run.parse_config(flags)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_an_unreadable_checkpoint_gives_a_clear_error(data_dir, tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(SystemExit) as e:
        run.main(["--data_dir", str(data_dir), "--output_dir", str(tmp_path / "out"),
                  "--pretrained_model_path", str(bad), *FAST])
    assert "broken.pt: not a readable checkpoint" in str(e.value.code)


def test_a_12_image_set_trains_with_the_default_split_flags(tmp_path, caplog):
    """12 labelled images (one of them in the published test list), --val_fraction 0.05: validation
    takes one whole outfit; with a single non-test outfit, training goes on unvalidated."""
    data = tmp_path / "twelve"
    pairs = write_synthetic_dataset(data, 12, seed=0, width=64, height=96)
    quick = ["--data_dir", str(data), "--image_size", "32", "--effective_batch_size", "2", "--num_workers", "0",
             "--max_steps", "2"]
    out = tmp_path / "run"
    cfg = run.parse_config([*quick, "--output_dir", str(out)])
    train_set, val_set = run.make_datasets(cfg, UNet(dataclasses.replace(PRESETS["tiny"], image_size=32)),
                                           run.Dist())
    val_outfits = {outfit_key(p.stem) for p in val_set.pairs}
    assert len(val_outfits) == 1 and not val_outfits & {outfit_key(p.stem) for p in train_set.pairs}
    assert run.train(cfg) == out / "model.pt" and (out / "best.pt").is_file()

    # every image but one outfit's is test: nothing to validate on, and no stop
    keep = outfit_key(pairs[-1].stem)
    split_file = tmp_path / "split.txt"
    split_file.write_text("".join(f"{p.stem}\n" for p in pairs if outfit_key(p.stem) != keep))
    alone = tmp_path / "alone"
    with caplog.at_level(logging.WARNING):
        run.main([*quick, "--output_dir", str(alone), "--test_split", str(split_file)])
    assert (alone / "model.pt").is_file() and not (alone / "best.pt").exists()
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("no validation, training goes on" in m and "val split is empty" in m for m in warned), warned
    assert "not validated (the validation split is empty, see above): no best.pt" in warned[-1]


def test_the_main_job_runs_on_a_fresh_checkout(tmp_path):
    """`python run.py --max_steps 20` in a copy of the project: draws the data, trains, saves."""
    for f in ROOT.iterdir():
        if f.suffix in (".py", ".txt"):
            shutil.copy(f, tmp_path / f.name)
    proc = subprocess.run([sys.executable, "run.py", "--max_steps", "20"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = tmp_path / "checkpoints" / "tiny" / "model.pt"
    assert f"final weights: {Path('checkpoints/tiny/model.pt')}" in proc.stdout
    assert "python evaluate.py --checkpoint" in proc.stdout
    from unet import load_model
    load_model(final)
    assert list((tmp_path / "checkpoints" / "tiny").glob("events.out.tfevents.*"))
    assert len(list((tmp_path / "data" / "synthetic" / "images").glob("*.jpg"))) == 240
