"""Surviving kills, signals, numerical faults, running out of memory, full disks and hostile files
without losing work."""
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import predict
import run
from synthetic import write_synthetic_dataset
from unet import PRESETS, UNet, model_checkpoint, read_checkpoint

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--image_size", "32", "--effective_batch_size", "2", "--num_workers", "0", "--val_fraction", "0.25",
        "--warmup_steps", "1", "--val_panels", "0", "--max_steps", "10", "--checkpointing_steps", "1"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(root, 16, seed=4, width=150, height=220)
    return root


def command(data_dir: Path, out: Path, *flags: str) -> list[str]:
    return [sys.executable, "run.py", "--data_dir", str(data_dir), "--output_dir", str(out), *FAST, *flags]


def wait_for_checkpoint(out: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not list((out / "checkpoints").glob("step-*.pt")):
        assert proc.poll() is None, "training ended before its first checkpoint"
        assert time.time() < deadline
        time.sleep(0.05)


def same_weights(a: Path, b: Path) -> None:
    wa, wb = read_checkpoint(a)["model"], read_checkpoint(b)["model"]
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_sigkill_at_a_random_moment_then_resume_latest_gives_the_same_weights(data_dir, tmp_path):
    steps = ["--max_steps", "30"]     # long enough that the kill lands before the end
    straight = run.train(run.parse_config(command(data_dir, tmp_path / "straight", *steps)[2:]))
    out = tmp_path / "killed"
    proc = subprocess.Popen(command(data_dir, out, *steps, "--resume", "latest"), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_checkpoint(out, proc)
    time.sleep(random.Random(os.getpid()).uniform(0, 1.0))   # anywhere: mid-step or mid-write
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "model.pt").exists(), "killed too late to test anything"
    done = subprocess.run(command(data_dir, out, *steps, "--resume", "latest"), cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    same_weights(straight, out / "model.pt")


def test_a_half_written_checkpoint_is_never_picked_up(data_dir, tmp_path):
    out = tmp_path / "run"
    run.train(run.parse_config(command(data_dir, out, "--max_steps", "2")[2:]))
    good = out / "checkpoints" / "step-0000002.pt"
    # what a kill in the middle of writing step 3 leaves behind
    (out / "checkpoints" / "step-0000003.pt.tmp").write_bytes(good.read_bytes()[:5000])
    cfg = run.parse_config(["--output_dir", str(out), "--resume", "latest"])
    assert run.resume_path(cfg) == good
    assert read_checkpoint(good)["step"] == 2


def test_sigterm_saves_a_checkpoint_before_exiting(data_dir, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(command(data_dir, out, "--max_steps", "1000", "--checkpointing_steps", "1000"),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list(out.glob("events.*")):                    # training has started
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    time.sleep(1.0)                                          # a few steps in
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "stopped by a signal at step" in err and "--resume latest" in err
    saved = list((out / "checkpoints").glob("step-*.pt"))
    assert len(saved) == 1
    step = read_checkpoint(saved[0])["step"]
    assert 0 < step < 1000


def test_non_finite_losses_skip_steps_then_stop_with_a_clear_message(data_dir, tmp_path, monkeypatch):
    real = run.segmentation_loss
    calls = {"n": 0}

    def poisoned(*args):
        calls["n"] += 1
        total, parts = real(*args)
        if calls["n"] > 3:                                   # steps 1-3 fine, then NaN for good
            total = total * float("nan")
            parts = {**parts, "total": total.detach()}
        return total, parts

    monkeypatch.setattr(run, "segmentation_loss", poisoned)
    out = tmp_path / "run"
    cfg = run.parse_config(command(data_dir, out, "--max_steps", "20", "--max_bad_steps", "3",
                                   "--val_fraction", "0")[2:])
    with pytest.raises(FloatingPointError, match=r"step 6: 3 steps in a row .*total nan.*last good checkpoint"):
        run.train(cfg)
    last = sorted((out / "checkpoints").glob("step-*.pt"))[-1]
    weights = read_checkpoint(last)["model"]
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def out_of_memory_above(monkeypatch, largest: int, when=lambda: True) -> None:
    """The model's forward raises torch.OutOfMemoryError (CUDA's is the same class) for a batch of more
    than `largest` images whenever when() holds, as a GPU that holds `largest` would."""
    real = UNet.forward

    def forward(self, image):
        if len(image) > largest and when():
            raise torch.OutOfMemoryError(f"simulated: {len(image)} images do not fit")
        return real(self, image)

    monkeypatch.setattr(UNet, "forward", forward)


def test_out_of_memory_halves_the_micro_batch_repeats_the_step_and_a_resume_keeps_it(data_dir, tmp_path,
                                                                                      monkeypatch, caplog):
    steps = ["--effective_batch_size", "8", "--ce_mean", "pixels", "--max_steps", "4", "--checkpointing_steps", "2"]
    from_the_start = run.train(run.parse_config(command(data_dir, tmp_path / "two", *steps, "--batch_size", "2")[2:]))
    out_of_memory_above(monkeypatch, 2)
    halved = tmp_path / "halved"
    with caplog.at_level(logging.WARNING):
        run.train(run.parse_config(command(data_dir, halved, *steps, "--batch_size", "8")[2:]))
    assert "step 1: out of memory at micro-batch 8; repeated at micro-batch 4" in caplog.text
    assert "step 1: out of memory at micro-batch 4; repeated at micro-batch 2" in caplog.text
    a, b = read_checkpoint(from_the_start)["model"], read_checkpoint(halved / "model.pt")["model"]
    for k in a:   # the same images in the same micro-batches of 2: at most float noise apart
        assert torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-7), k
    middle = read_checkpoint(halved / "checkpoints" / "step-0000002.pt")
    assert middle["micro_batch"] == 2 and middle["out_of_memory"] == [[1, 4], [1, 2]]

    monkeypatch.undo()                         # a resume on a GPU where 8 would fit again keeps 2
    caplog.clear()
    resumed = tmp_path / "resumed"
    with caplog.at_level(logging.INFO):
        run.train(run.parse_config(command(data_dir, resumed, *steps, "--batch_size", "8", "--resume",
                                           str(halved / "checkpoints" / "step-0000002.pt"))[2:]))
    assert "micro-batch 2 (the checkpoint's, since running out of memory at step 1)" in caplog.text
    same_weights(halved / "model.pt", resumed / "model.pt")


def test_validation_out_of_memory_halves_its_batch(data_dir, monkeypatch):
    cfg = run.parse_config(command(data_dir, Path("unused"), "--val_fraction", "0.5")[2:])
    torch.manual_seed(0)
    model, _ = run.build_model(cfg)
    _, val_set = run.make_datasets(cfg, model, run.Dist())
    assert len(val_set) >= 3
    cpu, fp32 = torch.device("cpu"), torch.autocast("cpu", enabled=False)
    whole, _ = run.validate(model, val_set, cfg, cpu, fp32, run.Dist(), 1)
    out_of_memory_above(monkeypatch, 1)
    halved, _ = run.validate(model, val_set, cfg, cpu, fp32, run.Dist(), 4)
    assert halved["mIoU"] == whole["mIoU"] and halved["IoU"] == whole["IoU"]
    assert halved["loss"] == pytest.approx(whole["loss"], rel=1e-6)


def test_out_of_memory_at_micro_batch_1_stops_saying_what_would_help_and_keeps_the_last_checkpoint(
        data_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    last = out / "checkpoints" / "step-0000002.pt"
    out_of_memory_above(monkeypatch, 0, when=last.exists)   # from step 3 on not even one image fits
    with pytest.raises(SystemExit) as stop:
        run.main(command(data_dir, out, "--checkpoints_total_limit", "5")[2:])
    message = str(stop.value.code)
    assert message.startswith("error: step 3: out of memory at micro-batch 1; what would help: "
                              "--gradient_checkpointing"), message
    assert "a smaller preset" in message and f"The last checkpoint stays in {out / 'checkpoints'}" in message
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000001.pt", "step-0000002.pt"]
    assert read_checkpoint(last)["step"] == 2 and not (out / "model.pt").exists()


def test_a_full_disk_loses_no_earlier_checkpoint(data_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    run.train(run.parse_config(command(data_dir, out, "--max_steps", "2")[2:]))
    before = (out / "checkpoints" / "step-0000002.pt").read_bytes()
    real_save = torch.save

    def disk_full(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match=r"could not write .*step-0000003.pt \(No space left on device\); "
                                      r"earlier checkpoints are untouched"):
        run.train(run.parse_config(command(data_dir, out, "--max_steps", "3", "--resume", "latest",
                                           "--val_fraction", "0")[2:]))
    assert (out / "checkpoints" / "step-0000002.pt").read_bytes() == before
    assert not list((out / "checkpoints").glob("*.tmp"))


def test_an_output_folder_that_cannot_be_written_is_a_clear_error(data_dir, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    proc = subprocess.run(command(data_dir, blocker / "run"), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and "a_file" in proc.stderr


def test_bad_data_stops_before_training_or_is_skipped_once_when_asked(tmp_path):
    root = tmp_path / "data"
    write_synthetic_dataset(root, 16, seed=5, width=150, height=220)
    orphan = root / "segm" / "WOMEN-Dresses-id_09999999-01_1_front_segm.png"
    orphan.write_bytes((root / "segm").glob("*.png").__next__().read_bytes())
    proc = subprocess.run(command(root, tmp_path / "out"), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and orphan.name in proc.stderr
    assert not (tmp_path / "out" / "checkpoints").exists()     # before any training
    orphan.unlink()

    broken = sorted((root / "images").glob("*.jpg"))[0]
    broken.write_bytes(broken.read_bytes()[:300])                # truncated JPEG
    # 2 workers, 12 steps of 2 over ~14 images: every epoch meets the broken file again
    proc = subprocess.run(command(root, tmp_path / "skip", "--skip_bad_samples", "--max_steps", "12",
                                  "--val_fraction", "0", "--num_workers", "2"),
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.count(f"{broken.name}: cannot decode photo") == 1, proc.stderr[-3000:]


def test_predict_survives_hostile_files(tmp_path, capsys):
    from PIL import Image
    ckpt = tmp_path / "model.pt"
    torch.save(model_checkpoint(UNet(PRESETS["tiny"].__class__(**{**PRESETS["tiny"].__dict__, "image_size": 32}))), ckpt)
    good = tmp_path / "good.png"
    Image.new("RGB", (40, 60), (200, 180, 170)).save(good)
    rng = random.Random(0)
    data = good.read_bytes()
    inputs = [good]
    for i in range(25):                                      # mutated and cut copies of a valid PNG
        b = bytearray(data)
        for _ in range(rng.randint(1, 20)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        path = tmp_path / f"fuzz{i}.png"
        path.write_bytes(bytes(b[:rng.randint(8, len(b))]) if i % 2 else bytes(b))
        inputs.append(path)
    (tmp_path / "text.jpg").write_text("I claim to be a JPEG")
    inputs.append(tmp_path / "text.jpg")
    out = tmp_path / "out"
    code = predict.main(["--checkpoint", str(ckpt), *map(str, inputs), "--out", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code in (0, 1)
    for path in inputs:                                      # each file either written or reported
        assert (out / f"{path.stem}.png").exists() or path.name in err, path.name
    assert (out / "good.png").exists()


def test_missing_or_empty_data_folders_are_clear_errors(tmp_path):
    from dataset import DataError, find_pairs
    with pytest.raises(DataError, match=r"nowhere: data folder not found"):
        find_pairs(tmp_path / "nowhere")
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match=r"segm: folder missing"):
        find_pairs(tmp_path)
    (tmp_path / "segm").mkdir()
    with pytest.raises(DataError, match=r"no pairs"):
        find_pairs(tmp_path)
