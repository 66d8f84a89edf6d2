"""Mixed precision, the loss scaler and the non-finite guard, on the CPU (autocast and GradScaler run
fp16 and bf16 there too); the GPU-only choices through a stand-in for the device's capability."""
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import run
import unet
from dataset import FashionDataset
from device import pick_precision
from synthetic import write_synthetic_dataset
from unet import read_checkpoint

FAST = ["--image_size", "32", "--effective_batch_size", "2", "--num_workers", "0", "--val_fraction", "0",
        "--warmup_steps", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(root, 8, seed=5, width=150, height=220)
    return root


def train(data_dir: Path, out: Path, *flags: str) -> Path:
    return run.train(run.parse_config(["--data_dir", str(data_dir), "--output_dir", str(out), *FAST, *flags]))


def losses(out: Path) -> list[float]:
    events = EventAccumulator(str(out))   # the event files lie in --output_dir
    events.Reload()
    return [e.value for e in events.Scalars("train/total")]


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_a_poisoned_gradient_stops_the_run(data_dir, tmp_path, monkeypatch, precision):
    """fp16 once switched the guard off: the scaler skipped every step and the run 'succeeded' untrained."""
    real = run.accumulate_gradients

    def poisoned(net, *args, **kwargs):
        parts = real(net, *args, **kwargs)
        unet.unwrap(net).decoder[0].conv2.weight.grad[0, 0, 0, 0] = float("nan")
        return parts

    monkeypatch.setattr(run, "accumulate_gradients", poisoned)
    with pytest.raises(FloatingPointError, match="3 steps in a row with a non-finite"):
        train(data_dir, tmp_path / precision, "--mixed_precision", precision, "--max_steps", "8",
              "--max_bad_steps", "3")


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_a_few_mixed_precision_steps_learn(data_dir, tmp_path, precision):
    out = tmp_path / precision
    train(data_dir, out, "--mixed_precision", precision, "--max_steps", "6", "--learning_rate", "1e-3")
    parts = losses(out)
    assert len(parts) == 6 and all(torch.isfinite(torch.tensor(parts)))
    assert parts[-1] < 0.9 * parts[0]
    scaler = read_checkpoint(out / "checkpoints" / "step-0000006.pt")["scaler"]
    assert bool(scaler) == (precision == "fp16")          # the loss scale lives in fp16 checkpoints only


@pytest.mark.parametrize("before, after", [("bf16", "fp16"), ("fp16", "fp32"), ("fp32", "fp16")])
def test_resume_across_precisions(data_dir, tmp_path, before, after, caplog):
    out = tmp_path / "run"
    train(data_dir, out, "--mixed_precision", before, "--max_steps", "2", "--checkpointing_steps", "2")
    with caplog.at_level("INFO", logger="run"):
        final = train(data_dir, out, "--mixed_precision", after, "--max_steps", "4", "--checkpointing_steps", "2",
                      "--resume", "latest")
    assert read_checkpoint(final)["step"] == 4
    assert "loss scale" in caplog.text                    # said, not silent


class FakeGPU:
    """torch.cuda's answers for a GPU of the given compute capability."""

    def __init__(self, monkeypatch, capability: tuple[int, int], name: str):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)


def test_auto_precision_per_device(monkeypatch):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert pick_precision("auto", cpu) is None                     # fp32 on the CPU
    assert pick_precision("fp16", cpu) == torch.float16            # runs there too
    FakeGPU(monkeypatch, (7, 5), "Tesla T4")
    assert pick_precision("auto", cuda) == torch.float16
    with pytest.raises(ValueError, match="Tesla T4 .compute capability 7.5. has no native.*use fp16"):
        pick_precision("bf16", cuda)
    FakeGPU(monkeypatch, (9, 0), "NVIDIA H100 80GB HBM3")
    assert pick_precision("auto", cuda) == torch.bfloat16
    assert pick_precision("bf16", cuda) == torch.bfloat16
    assert pick_precision("fp32", cuda) is None


def test_the_precision_flags_default_to_auto():
    """evaluate.py and predict.py once hard-coded bf16 on every GPU, a T4's slow path included."""
    import evaluate
    import predict
    assert run.parse_config([]).mixed_precision == "auto"
    assert evaluate.parse_args(["--checkpoint", "m.pt", "--data_dir", "d"]).precision == "auto"
    assert predict.parse_args(["--checkpoint", "m.pt", "x.jpg", "--out", "o"]).precision == "auto"


def test_the_mfu_peak_table_matches_exact_names():
    import bench
    assert bench.peak_flops("NVIDIA H100 PCIe") < bench.peak_flops("NVIDIA H100 80GB HBM3")
    assert bench.peak_flops("NVIDIA L40S") != bench.peak_flops("NVIDIA L4")
    assert bench.peak_flops("NVIDIA H100 80GB HBM3 (some future variant)") is None


def test_compiled_training_compiles_once(data_dir, tmp_path, monkeypatch):
    """A short last micro-batch and validation once each compiled the whole model again."""
    import functools
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    # dynamo's graph capture decides recompiles; the eager backend skips Inductor's minutes of codegen
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    images = len(FashionDataset(data_dir, "train", val_fraction=0.25))
    assert images % 3, "the test needs a short last batch"
    train(data_dir, tmp_path / "compiled", "--compile", "--effective_batch_size", "3", "--max_steps", "3",
          "--val_fraction", "0.25", "--checkpointing_steps", "1")
    assert counters["stats"]["unique_graphs"] == 1
