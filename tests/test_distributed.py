"""torchrun: 2 CPU processes (Gloo) train like 1 process with the same effective batch, a checkpoint
written by 2 processes resumes in 1, and one process running out of memory makes both repeat the step
at half the micro-batch."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import run
from synthetic import write_synthetic_dataset
from unet import read_checkpoint

ROOT = Path(__file__).resolve().parent.parent
LR = 1e-5   # small, so the 4 steps stay near-linear and rounding cannot grow into another trajectory
COMMON = ["--image_size", "32", "--num_workers", "0", "--val_fraction", "0.25", "--warmup_steps", "1",
          "--val_panels", "0", "--max_steps", "4", "--checkpointing_steps", "2", "--checkpoints_total_limit", "4",
          "--effective_batch_size", "4", "--learning_rate", str(LR),
          "--ce_mean", "pixels"]   # the exact mean: the released weighted mean normalises each process alone


def assert_same_training(a: dict, b: dict) -> None:
    """Equal up to float rounding, which Adam's normalised steps magnify for near-zero gradients
    (a rounding-level gradient moves its weight a whole learning-rate step either way): all but a
    few weights in 10,000 agree to 1e-6, and none is off by more than one such flip per step."""
    diffs = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
    assert diffs.max() < 2 * 4 * LR
    assert (diffs > LR / 10).float().mean() < 5e-4


# run.py under torchrun with rank 1's GPU too small for more than one image a forward pass (simulated: the
# model's forward raises torch.OutOfMemoryError there), as a test-only wrapper
OUT_OF_MEMORY_ON_RANK_1 = """
import os, sys
import torch
sys.path.insert(0, os.getcwd())
import run, unet
real = unet.UNet.forward
def forward(self, image):
    if len(image) > 1 and os.environ["RANK"] == "1":
        raise torch.OutOfMemoryError("simulated")
    return real(self, image)
unet.UNet.forward = forward
run.main(sys.argv[1:])
"""


def torchrun(script: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           script, "--device", "cpu", *argv], cwd=ROOT, capture_output=True, text=True, timeout=600)


def scalars(out: Path, tag: str) -> list[float]:
    events = EventAccumulator(str(out))   # the event files lie in --output_dir
    events.Reload()
    return [e.value for e in events.Scalars(tag)]


def test_two_gloo_processes_match_one_process_and_repeat_a_step_together(tmp_path):
    data = tmp_path / "data"
    write_synthetic_dataset(data, 16, seed=2, width=150, height=220)
    two = tmp_path / "two"
    proc = torchrun("run.py", "--data_dir", str(data), "--output_dir", str(two), "--batch_size", "1", *COMMON)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("final weights:") == 1                  # rank 0 alone reports

    one = tmp_path / "one"
    run.train(run.parse_config(["--data_dir", str(data), "--output_dir", str(one), "--batch_size", "2", *COMMON]))
    a, b = read_checkpoint(two / "model.pt")["model"], read_checkpoint(one / "model.pt")["model"]
    assert_same_training(a, b)
    # gradient norm and loss are scale-sensitive, where Adam's update is not; a wrong averaging would be
    # off by whole factors. NCHW convolutions of batch 1 and of batch 2 round differently: the gradient
    # norms measured 3e-5 apart at the first step and 1.2e-4 by the third (5e-6 and 8e-5 channels-last)
    for tag in ("train/grad_norm", "train/total", "val/mIoU", "val/loss"):
        assert scalars(two, tag) == pytest.approx(scalars(one, tag), rel=1e-3), tag

    # a checkpoint written by 2 processes resumes in 1
    resumed = tmp_path / "resumed"
    run.train(run.parse_config(["--data_dir", str(data), "--output_dir", str(resumed), "--batch_size", "2",
                                *COMMON, "--resume", str(two / "checkpoints" / "step-0000002.pt")]))
    assert_same_training(read_checkpoint(resumed / "model.pt")["model"], b)

    # rank 1 alone runs out of memory at micro-batch 2: both repeat the step at 1, as the run above took it
    script = tmp_path / "out_of_memory_on_rank_1.py"
    script.write_text(OUT_OF_MEMORY_ON_RANK_1)
    halved = tmp_path / "halved"
    proc = torchrun(str(script), "--data_dir", str(data), "--output_dir", str(halved), "--batch_size", "2", *COMMON)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("step 1: out of memory at micro-batch 2; repeated at micro-batch 1") == 2   # each rank
    assert read_checkpoint(halved / "checkpoints" / "step-0000002.pt")["out_of_memory"] == [[1, 1]]
    assert_same_training(read_checkpoint(halved / "model.pt")["model"], a)
