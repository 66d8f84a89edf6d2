"""Executes colab/train_colab.ipynb on a simulated Colab: a stand-in `google.colab` whose drive.mount
maps a local folder as Drive and whose files.upload "uploads" a photo, a small synthetic data set
zipped as the real archives, paths with spaces everywhere, and a settings edit to the `tiny` preset
at 32 px. nbclient runs the cells in order and stops at the first error, as "Run all" does.
Run: `python -m pytest tests/test_colab_run.py -q` (about 3 minutes on 2 CPU cores)."""
import json
import os
import re
import shutil
import signal
import sys
import threading
import time
import urllib.request
import zipfile
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from synthetic import write_synthetic_dataset
from unet import read_checkpoint

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "colab" / "train_colab.ipynb"
STAGES = ["1_simple", "2_bottleneck", "3_full", "4_local", "5_local_full"]
DRIVE_STUB = '''import os

def mount(mountpoint, force_remount=False, timeout_ms=120000, readonly=False):
    """Colab's drive.mount, simulated: {storage!r} appears at mountpoint."""
    if not os.path.exists(mountpoint):
        os.symlink({storage!r}, mountpoint)
    print("Mounted at " + mountpoint)
'''
FILES_STUB = '''import shutil

def upload():
    """Colab's files.upload, simulated: a photo "uploaded" into the current folder."""
    shutil.copy({photo!r}, "my photo.jpg")
    with open("my photo.jpg", "rb") as f:
        return {{"my photo.jpg": f.read()}}
'''


@pytest.fixture(scope="module")
def archives(tmp_path_factory) -> Path:
    """images.zip and segm.zip of 12 synthetic photos, laid out as the real archives
    (images/NAME.jpg, segm/NAME_segm.png), and a photo to upload."""
    root = tmp_path_factory.mktemp("archives")
    write_synthetic_dataset(root / "set", 12, seed=3, width=96, height=140)
    for part in ("images", "segm"):
        with zipfile.ZipFile(root / f"{part}.zip", "w") as archive:
            for path in sorted((root / "set" / part).iterdir()):
                archive.write(path, f"{part}/{path.name}")
    shutil.copy(next((root / "set" / "images").iterdir()), root / "photo.jpg")
    return root


class Colab:
    """A simulated Colab machine under tmp_path: Drive storage, a local disk with the code on it,
    the stub module, `pip` recorded rather than run, and TensorBoard's files in its own temp folder."""

    def __init__(self, tmp_path: Path, archives: Path, monkeypatch):
        vm = tmp_path / "colab vm"
        self.storage, self.local, self.drive = vm / "google drive", vm / "local disk", vm / "drive mount"
        (self.storage / "MyDrive" / "DeepFashion-MultiModal").mkdir(parents=True)
        for part in ("images", "segm"):
            shutil.copy(archives / f"{part}.zip", self.storage / "MyDrive" / "DeepFashion-MultiModal")
        self.local.mkdir()
        (self.local / "fashion-segmentation").symlink_to(ROOT)   # the clone is skipped: the folder exists
        stub = vm / "stub" / "google" / "colab"
        stub.mkdir(parents=True)
        for name, text in [("__init__.py", ""), ("drive.py", DRIVE_STUB.format(storage=str(self.storage))),
                           ("files.py", FILES_STUB.format(photo=str(archives / "photo.jpg")))]:
            (stub / name).write_text(text)
        # google/ stays a namespace package: google.protobuf (TensorBoard's) is found beside the stub
        bin_dir, self.tmp = vm / "bin", vm / "tmp"
        bin_dir.mkdir()
        self.tmp.mkdir()
        self.pip_log = vm / "pip.log"
        (bin_dir / "pip").write_text(f'#!/bin/sh\necho "$PWD: pip $*" >> "{self.pip_log}"\n')
        (bin_dir / "pip").chmod(0o755)
        # a script, not a symlink: a link to a venv's interpreter starts the base one, without the venv's packages
        (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
        (bin_dir / "python").chmod(0o755)
        monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(vm / "stub"), os.environ.get("PYTHONPATH", "")]))
        monkeypatch.setenv("TMPDIR", str(self.tmp))
        self.runs = self.drive / "MyDrive" / "fashion-segmentation" / "checkpoints" / "tiny"

    def notebook(self, *extra: str) -> nbformat.NotebookNode:
        """The notebook with the settings edited for a tiny run here; `extra` lines end the settings cell."""
        nb = nbformat.read(NOTEBOOK, as_version=4)
        cell = next(c for c in nb.cells if re.search(r"^RUNS_DIR\s*=", c.source, re.M))
        values = {"PRESET": '"tiny"', "DRIVE": repr(str(self.drive)), "LOCAL": repr(str(self.local)),
                  "LOCAL_ATTENTION_STAGES": "True"}
        for name, value in values.items():
            cell.source, count = re.subn(rf"^{name} = .*$", f"{name} = {value}", cell.source, flags=re.M)
            assert count == 1, name
        cell.source += '\nCOMMON = COMMON + " --image_size 32 --num_workers 0"\n' + "\n".join(extra)
        return nb

    def client(self, nb) -> NotebookClient:
        return NotebookClient(nb, timeout=600, kernel_name="python3",
                              resources={"metadata": {"path": str(self.local)}})

    def tensorboards(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in (self.tmp / ".tensorboard-info").glob("pid-*.info")]

    def stop_tensorboards(self) -> None:
        for info in self.tensorboards():   # started by this test's kernel: %tensorboard leaves it running
            try:
                os.kill(info["pid"], signal.SIGTERM)
            except ProcessLookupError:
                pass


@pytest.fixture
def colab(tmp_path, archives, monkeypatch):
    machine = Colab(tmp_path, archives, monkeypatch)
    yield machine
    machine.stop_tensorboards()


def code_indices(nb, pattern: str) -> list[int]:
    return [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and re.search(pattern, c.source)]


def output_text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def test_the_notebook_runs_top_to_bottom_then_a_finished_stage_is_left_alone(colab):
    nb = colab.notebook()
    client = colab.client(nb)
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells):
            if cell.cell_type == "code":
                client.execute_cell(cell, index)   # CellExecutionError: "Run all" would stop here
        for stage in STAGES:
            assert (colab.runs / stage / "model.pt").is_file(), stage
        levels = read_checkpoint(colab.runs / "4_local" / "model.pt")["model_config"]["local_attention_levels"]
        assert tuple(levels) == (0, 1, 2, 3, 4)   # the default at 32 px: every level is at most 128 px wide
        assert (colab.runs / "5_local_full" / "eval-test" / "table.md").is_file()
        assert list((colab.runs / "5_local_full" / "my_photos").glob("my photo*_overlay.jpg"))
        assert colab.pip_log.read_text().strip() == f"{ROOT}: pip install -q -r requirements.txt"
        table = next(c for c in nb.cells if "table.md" in c.source)
        assert any("text/markdown" in o.get("data", {}) for o in table.outputs)

        # a finished stage, run again: says so, and model.pt keeps its bytes and validation figures
        model = colab.runs / "1_simple" / "model.pt"
        before, files = model.read_bytes(), sorted((colab.runs / "1_simple").rglob("*"))
        index = code_indices(nb, r"--output_dir \"\{RUNS_DIR\}/1_simple\"")[0]
        again = nbformat.from_dict(json.loads(json.dumps(nb.cells[index])))
        client.execute_cell(again, index)
        assert "this stage has finished" in output_text(again)
        assert model.read_bytes() == before and sorted((colab.runs / "1_simple").rglob("*")) == files
        assert read_checkpoint(model)["val"]["mIoU"] >= 0

        # the one TensorBoard of step 5 (alive while the kernel is) shows every stage as a run of its
        # own, with the validation tags
        (info,) = colab.tensorboards()
        url = f"http://localhost:{info['port']}"
        deadline = time.time() + 90
        while set(get_json(f"{url}/data/runs")) != set(STAGES):
            assert time.time() < deadline, get_json(f"{url}/data/runs")
            time.sleep(1)
        tags = get_json(f"{url}/data/plugin/scalars/tags")
        for stage in STAGES:
            assert {"val/mIoU", "val/boundary_f_score", "val/subject_accuracy", "val_iou/background"} <= set(tags[stage])


def test_a_failing_stage_stops_run_all_and_no_command_cell_swallows_a_failure(colab):
    nb = colab.notebook('COMMON = COMMON + " --no_such_flag"')   # every stage now fails
    client = colab.client(nb)
    commands = code_indices(nb, r"python (run|evaluate|predict)\.py")
    with client.setup_kernel():
        failed = None
        for index, cell in enumerate(nb.cells):
            if cell.cell_type == "code":
                try:
                    client.execute_cell(cell, index)
                except CellExecutionError as err:
                    failed = index, str(err)
                    break
        assert failed is not None and failed[0] == commands[0], "stage 1's failure did not stop the run"
        assert "exit status 2" in failed[1] and "unrecognized arguments: --no_such_flag" in failed[1]
        assert all(c.get("execution_count") is None for c in nb.cells[failed[0] + 1:] if c.cell_type == "code")
        # each later command cell fails on its own too (stages: the flag; evaluation and photos: no weights)
        for index in commands[1:]:
            with pytest.raises(CellExecutionError, match="exit status"):
                client.execute_cell(nb.cells[index], index)


def test_interrupting_a_training_cell_saves_a_checkpoint_then_stops(tmp_path, archives, monkeypatch):
    """The stop button sends SIGINT to the kernel's process group (as Jupyter does); `sh` passes one on to
    the command in its own session, so training finishes its step, saves and exits, and the cell raises."""
    # the cell's `python` is the interpreter running the tests (a virtual environment's, not activated)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    helper = next(c for c in nb.cells if "def sh(" in c.source)
    helper.source = re.sub(r"^.*(google\.colab|drive\.mount).*$", "", helper.source, flags=re.M)   # the helper alone
    out = tmp_path / "run dir"
    cell = nbformat.v4.new_code_cell(
        f'sh(\'python run.py --data_dir "{archives / "set"}" --output_dir "{out}" --image_size 32 --effective_batch_size 2 '
        '--num_workers 0 --max_steps 1000 --checkpointing_steps 1000 --val_panels 0\')')
    nb.cells = [helper, cell]
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}})

    def interrupt_once_training() -> None:
        deadline = time.time() + 120
        while not list(out.glob("events.*")) and time.time() < deadline:   # the run has started
            time.sleep(0.1)
        time.sleep(1.0)
        os.killpg(os.getpgid(client.km.provisioner.pid), signal.SIGINT)

    with client.setup_kernel():
        client.execute_cell(helper, 0)
        interrupter = threading.Thread(target=interrupt_once_training)
        interrupter.start()
        with pytest.raises(CellExecutionError, match="KeyboardInterrupt"):
            client.execute_cell(cell, 1)
        interrupter.join()
    assert "stopped by a signal at step" in output_text(cell)
    (saved,) = (out / "checkpoints").glob("step-*.pt")
    assert 0 < read_checkpoint(saved)["step"] < 1000
