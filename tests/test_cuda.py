"""The CUDA paths, on a real GPU (skipped without one): bf16 and fp16 training, kill and resume,
evaluate and predict equal to the CPU, ONNX export from a CUDA checkpoint, 2-process NCCL training.
`python bench.py --gpu-check` runs this file and then the CUDA bench section."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import predict
import run
from synthetic import write_synthetic_dataset
from unet import read_checkpoint

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
ROOT = Path(__file__).resolve().parent.parent
FAST = ["--image_size", "64", "--effective_batch_size", "2", "--num_workers", "0", "--val_fraction", "0.25",
        "--warmup_steps", "1", "--val_panels", "0", "--device", "cuda"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(root, 24, seed=9, width=150, height=220)
    return root


def command(data_dir: Path, out: Path, *flags: str) -> list[str]:
    return ["--data_dir", str(data_dir), "--output_dir", str(out), *FAST, *flags]


def scalars(out: Path, tag: str) -> list[float]:
    events = EventAccumulator(str(out))   # the event files lie in --output_dir
    events.Reload()
    return [e.value for e in events.Scalars(tag)]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_training_steps_in_mixed_precision_learn(data_dir, tmp_path, precision, caplog):
    if precision == "bf16" and torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("this GPU has no native bf16 (refused by design)")
    out = tmp_path / precision
    run.train(run.parse_config(command(data_dir, out, "--mixed_precision", precision, "--max_steps", "10")))
    loss = scalars(out, "train/total")
    assert len(loss) == 10 and np.isfinite(loss).all()
    assert np.mean(loss[-3:]) < 0.9 * np.mean(loss[:3])
    assert "non-finite" not in caplog.text


def test_kill_and_resume_on_cuda(data_dir, tmp_path):
    steps = ["--max_steps", "20", "--checkpointing_steps", "2", "--mixed_precision", "fp32"]
    straight = run.train(run.parse_config(command(data_dir, tmp_path / "straight", *steps)))
    out = tmp_path / "killed"
    argv = [sys.executable, "run.py", *command(data_dir, out, *steps, "--resume", "latest")]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list((out / "checkpoints").glob("step-*.pt")):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = read_checkpoint(straight)["model"], read_checkpoint(out / "model.pt")["model"]
    # cuDNN may pick different (non-deterministic) algorithms in the two processes: close, not equal
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-3), k


@pytest.fixture(scope="module")
def cuda_checkpoint(data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained")
    return run.train(run.parse_config(command(data_dir, out, "--max_steps", "4")))


def test_evaluate_and_predict_on_cuda_equal_the_cpu(cuda_checkpoint, data_dir, tmp_path):
    import evaluate
    for device in ("cpu", "cuda"):
        assert evaluate.main(["--checkpoint", str(cuda_checkpoint), "--data_dir", str(data_dir), "--split", "val",
                              "--device", device, "--precision", "fp32", "--out", str(tmp_path / f"eval-{device}"),
                              "--panels", "0"]) in (0, None)
    cpu, gpu = (json.loads((tmp_path / f"eval-{d}" / "metrics.json").read_text()) for d in ("cpu", "cuda"))
    assert cpu["raw"]["mIoU"] == pytest.approx(gpu["raw"]["mIoU"], abs=2e-3)
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (90, 60, 3), dtype=np.uint8)).save(photos / "a.png")
    for device in ("cpu", "cuda"):
        assert predict.main(["--checkpoint", str(cuda_checkpoint), str(photos), "--out", str(tmp_path / device),
                             "--device", device, "--precision", "fp32", "--probabilities"]) == 0
    with np.load(tmp_path / "cpu" / "a_probs.npz") as c, np.load(tmp_path / "cuda" / "a_probs.npz") as g:
        assert np.allclose(c["probabilities"], g["probabilities"], atol=5e-3)


def test_onnx_export_from_a_cuda_checkpoint(cuda_checkpoint, tmp_path):
    import onnxruntime
    onnx_file = tmp_path / "model.onnx"
    assert predict.main(["--checkpoint", str(cuda_checkpoint), "--export-onnx", str(onnx_file)]) == 0
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["mask_logits", "boundary_logits"]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_nccl_processes_train(data_dir, tmp_path):
    out = tmp_path / "two"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "run.py", *command(data_dir, out, "--max_steps", "4", "--batch_size", "1")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_checkpoint(out / "model.pt")["step"] == 4
