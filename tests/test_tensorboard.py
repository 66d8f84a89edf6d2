"""What run.py leaves for TensorBoard and for a stage run again: each step once after a kill and a
resume, the validation figures by tag, the configuration, the panel; whether the data loading keeps
up; a finished stage left alone; commands printed ready to copy; a log note said once. Run: `python -m pytest tests/test_tensorboard.py -q`."""
import logging
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

import run
from dataset import FashionDataset
from labels import LABELS
from synthetic import write_synthetic_dataset
from unet import PRESETS, read_checkpoint

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--image_size", "32", "--effective_batch_size", "2", "--num_workers", "0", "--val_fraction", "0.25",
        "--warmup_steps", "1", "--val_panels", "2"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(root, 16, seed=5, width=150, height=220)
    return root


def flags(data_dir: Path, out: Path, *more: str) -> list[str]:
    return ["--data_dir", str(data_dir), "--output_dir", str(out), *FAST, *more]


def events(out: Path) -> EventAccumulator:
    """The run's events as TensorBoard reads them (purges applied), every value kept."""
    accumulator = EventAccumulator(str(out), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def test_after_a_kill_and_resume_latest_each_step_is_logged_once(data_dir, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "run.py", *flags(data_dir, out, "--max_steps", "12", "--checkpointing_steps", "2",
                                                "--checkpoints_total_limit", "5", "--resume", "latest")]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    newest = out / "checkpoints" / "step-0000004.pt"
    deadline = time.time() + 300
    while not newest.exists():
        assert proc.poll() is None and time.time() < deadline, "training ended before its checkpoint at step 4"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "model.pt").exists(), "killed too late to test anything"
    # as if the kill had come while step 4's checkpoint was written: the events of steps 3 and 4 are
    # on disk, and the resumed run starts after step 2 and logs them again
    newest.unlink()
    # event files are ordered by the second their writer started (then by host and pid): a resume
    # within the killed run's first second, which only this fast test can make, would sort before it
    time.sleep(1.1)
    run.main(command[2:])

    logged = events(out)
    scalars = logged.Tags()["scalars"]
    for tag in scalars:
        steps = [e.step for e in logged.Scalars(tag)]
        assert len(steps) == len(set(steps)), f"{tag}: steps {steps}"
    assert [e.step for e in logged.Scalars("train/total")] == list(range(1, 13))
    assert [e.step for e in logged.Scalars("val/mIoU")] == [2, 4, 6, 8, 10, 12]
    for tag in ("val/boundary_f_score", "val/subject_accuracy", "val/pixel_accuracy", "val/loss_ce",
                "val/loss_boundary", "val_iou/background"):
        assert [e.step for e in logged.Scalars(tag)] == [2, 4, 6, 8, 10, 12], tag
    assert len(list(out.glob("events.out.tfevents.*"))) == 2   # the killed run's file and the resumed one's


def test_validation_figures_configuration_and_panel_reach_tensorboard(data_dir, tmp_path):
    out = tmp_path / "run"
    run.train(run.parse_config(flags(data_dir, out, "--max_steps", "2")))
    logged = events(out)
    metrics = read_checkpoint(out / "model.pt")["val"]
    iou_tags = {t for t in logged.Tags()["scalars"] if t.startswith("val_iou/")}
    present = {f"val_iou/{name.replace(' ', '_')}" for name, iou in metrics["IoU"].items() if iou == iou}
    assert iou_tags == present and "val_iou/background" in iou_tags and iou_tags <= {
        f"val_iou/{name.replace(' ', '_')}" for name in LABELS}
    final = {tag: logged.Scalars(tag)[-1].value for tag in logged.Tags()["scalars"] if tag.startswith("val/")}
    assert final["val/mIoU"] == pytest.approx(metrics["mIoU"])
    assert final["val/boundary_f_score"] == pytest.approx(metrics["boundary_f_score"])
    assert 0 <= final["val/subject_accuracy"] <= 1 and final["val/loss"] == pytest.approx(metrics["loss"])

    panel = logged.Images("val/panel")[-1]
    assert panel.width == 5 * 32   # image | truth | prediction | post-processed | boundary
    assert panel.height > 2 * 32 + 16   # two images under the titles, the legend below

    once = [v.tag for path in out.glob("events.*") for e in EventFileLoader(str(path)).Load()
            for v in e.summary.value]
    for tag in ("config/text_summary", "_hparams_/experiment", "_hparams_/session_start_info"):
        assert once.count(tag) == 1, tag
    config = logged.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"max_steps": 2' in config and '"stage": "all"' in config


def test_a_finished_stage_run_again_leaves_its_files_alone(data_dir, tmp_path, caplog):
    out = tmp_path / "stage"
    argv = flags(data_dir, out, "--max_steps", "3", "--checkpointing_steps", "2", "--resume", "latest")
    run.main(argv)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    val = read_checkpoint(out / "model.pt")["val"]
    assert val["mIoU"] == val["mIoU"] and "IoU" in val   # validated: figures, not {}

    with caplog.at_level(logging.INFO):
        run.main(argv)
        assert "this stage has finished (step 3 of 3)" in caplog.text
        for checkpoint in (out / "checkpoints").iterdir():   # checkpoints purged: model.pt alone says it
            checkpoint.unlink()
        caplog.clear()
        run.main(argv)
        assert "this stage has finished (step 3 of 3)" in caplog.text
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert {p for p in after if "step-" not in p.name} == set(before) - {p for p in before if "step-" in p.name}
    assert all(after[p] == before[p] for p in after), "a file was rewritten"


def test_a_run_killed_after_its_last_checkpoint_keeps_the_validation_figures(data_dir, tmp_path):
    out = tmp_path / "stage"
    argv = flags(data_dir, out, "--max_steps", "2", "--checkpointing_steps", "2", "--resume", "latest")
    run.main(argv)
    checkpoint_val = read_checkpoint(out / "checkpoints" / "step-0000002.pt")["val"]
    (out / "model.pt").unlink()   # killed between the last checkpoint and the final weights
    run.main(argv)
    assert read_checkpoint(out / "model.pt")["val"] == checkpoint_val and checkpoint_val["mIoU"] >= 0


def test_the_printed_commands_copy_into_a_shell_with_spaces_in_the_paths(data_dir, tmp_path, capsys):
    out = tmp_path / "my drive" / "checkpoints dir" / "1_simple"
    run.main(flags(data_dir, out, "--max_steps", "1", "--val_fraction", "0"))
    lines = {line.split(":", 1)[0]: line.split(":", 1)[1] for line in capsys.readouterr().out.splitlines()
             if ":" in line}
    assert shlex.split(lines["final weights"]) == [str(out / "model.pt")]
    assert shlex.split(lines["TensorBoard"])[:3] == ["tensorboard", "--logdir", str(out.parent)]
    evaluate = shlex.split(lines["evaluate"])
    assert evaluate[evaluate.index("--checkpoint") + 1] == str(out / "model.pt")
    assert evaluate[evaluate.index("--data_dir") + 1] == str(data_dir)


def test_local_attention_levels_default_from_the_model_size():
    assert run.default_local_attention_levels(PRESETS["512_96"]) == (2, 3, 4)   # the paper's three deepest
    assert run.default_local_attention_levels(PRESETS["512_64_xl"]) == (2, 3, 4)
    assert run.default_local_attention_levels(PRESETS["256_64_la"]) == (1, 2, 3, 4)
    assert run.default_local_attention_levels(PRESETS["tiny"]) == (0, 1, 2, 3, 4)


def test_the_note_on_test_names_missing_from_the_data_is_logged_once(data_dir, tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        run.train(run.parse_config(flags(data_dir, tmp_path / "run", "--max_steps", "1")))
    notes = [r.getMessage() for r in caplog.records if "names are not in this data set" in r.getMessage()]
    assert len(notes) == 1, notes   # the train split says it; the val split beside it does not repeat it


def test_a_slow_data_set_is_reported_with_a_num_workers_to_try(data_dir, tmp_path, monkeypatch, caplog, capsys):
    real = FashionDataset.__getitem__

    def slow(self, index):
        time.sleep(0.5)   # a sample that takes longer to load than the tiny model takes to train on it
        return real(self, index)

    monkeypatch.setattr(FashionDataset, "__getitem__", slow)
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO):
        run.train(run.parse_config(flags(data_dir, out, "--effective_batch_size", "1", "--max_steps", "21",
                                         "--val_fraction", "0")))
    shares = [e.value for e in events(out).Scalars("train/data_wait_share")]
    assert len(shares) == 21 and all(0 <= share <= 1 for share in shares)
    assert "steps 2-20 of this run:" in capsys.readouterr().out
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    tried = [re.search(r"training waits for data (\d+)% of the time: try --num_workers (\d+) \(now 0;", m)
             for m in warned]
    (found,) = [m for m in tried if m]
    assert int(found[1]) > 10 and int(found[2]) >= 1
