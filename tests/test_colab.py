"""Checks colab/train_colab.ipynb against the code, so the notebook cannot drift from the flags: every
run.py, evaluate.py and predict.py command in it must parse with the current argument parsers, and
the training stages must be docs/training.md's published recipe, resume, and write to Drive; every command goes
through the notebook's `sh` helper, which raises on a failure, and TensorBoard watches every stage.
Executing the notebook is tests/test_colab_run.py.
Run: `python -m pytest tests/test_colab.py -q`."""

import ast
import dataclasses
import json
import re
import shlex
from pathlib import Path

import pytest

import evaluate
import predict
import run

PROJECT = Path(__file__).resolve().parents[1]
NOTEBOOK = PROJECT / "colab" / "train_colab.ipynb"
DRIVE = "/content/drive/"
# The code's own parsers; each raises SystemExit on an unknown flag or a bad combination.
PARSERS = {"run.py": run.parse_config, "evaluate.py": evaluate.parse_args, "predict.py": predict.parse_args}
# TrainConfig fields the notebook sets for Colab rather than copying from docs/training.md's recipe.
COLAB_FIELDS = {"data_dir", "output_dir", "pretrained_model_path", "resume", "mixed_precision", "num_workers",
                "checkpointing_steps", "checkpoints_total_limit"}


def check_command(script: str, argv: list[str]) -> object:
    """Parses argv as `python script argv` would; SystemExit if the script rejects it."""
    return PARSERS[script](argv)


def code_cells(notebook: dict) -> list[str]:
    return ["".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "code"]


def logical_lines(source: str) -> list[str]:
    """Lines with backslash continuations joined, as IPython joins them for `!` commands."""
    return re.sub(r"\\\n\s*", " ", source).splitlines()


def python_only(source: str) -> str:
    """The cell with its `!` and `%` lines replaced by `pass`: plain Python, for ast."""
    return "\n".join(re.sub(r"^(\s*)[!%].*", r"\1pass", line) for line in logical_lines(source))


def read_settings(notebook: dict) -> dict:
    """The values of the settings cell (the one that sets RUNS_DIR): plain assignments only, run here."""
    cells = [source for source in code_cells(notebook) if re.search(r"^RUNS_DIR\s*=", source, re.M)]
    assert len(cells) == 1, "expected exactly one settings cell (the one that sets RUNS_DIR)"
    tree = ast.parse(cells[0])
    assert all(isinstance(node, ast.Assign) for node in tree.body), "the settings cell may only assign"
    settings: dict = {}
    exec(compile(tree, "settings cell", "exec"), {}, settings)
    return settings


def shell_commands(notebook: dict, settings: dict) -> list[list[str]]:
    """Every command the code cells give to `sh(...)`, in order, its f-string filled from the settings
    as the notebook fills it, split like the shell."""
    commands = []
    for source in code_cells(notebook):
        calls = [node for node in ast.walk(ast.parse(python_only(source)))
                 if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "sh"]
        for call in sorted(calls, key=lambda node: node.lineno):
            try:
                command = eval(compile(ast.Expression(call.args[0]), "cell", "eval"), {}, dict(settings))
            except NameError as err:
                pytest.fail(f"{NOTEBOOK}: `{ast.unparse(call)}` uses a name the settings cell does not set ({err})")
            commands.append(shlex.split(command))
    return commands


def script_commands(commands: list[list[str]]) -> list[tuple[str, list[str]]]:
    """(script, argv) of each `python X.py`, `python -m torch.distributed.run ... X.py` or `torchrun ... X.py`."""
    found = []
    for words in commands:
        launcher = words[:3] == ["python", "-m", "torch.distributed.run"] or words[0] == "torchrun"
        if words[0] == "python" and len(words) > 1 and words[1].endswith(".py"):
            found.append((words[1], words[2:]))
        elif launcher:
            script = next(i for i, word in enumerate(words) if word.endswith(".py"))
            found.append((words[script], words[script + 1:]))
    return found


def readme_recipe() -> list[list[str]]:
    """The run.py commands of docs/training.md's published recipe, with its shell variables filled in."""
    block = re.search(r"## The published recipe.*?```bash\n(.*?)```", (PROJECT / "docs" / "training.md").read_text(), re.S)
    assert block, "docs/training.md has no published-recipe bash block"
    variables, commands = {}, []
    for line in block.group(1).splitlines():
        if match := re.fullmatch(r"(\w+)=(.*)", line):
            variables[match[1]] = " ".join(shlex.split(match[2]))
        elif line.startswith("python run.py"):
            for name, value in variables.items():
                line = line.replace(f"${name}", value)
            commands.append(shlex.split(line)[2:])
    return commands


@pytest.fixture(scope="module")
def notebook() -> dict:
    return json.loads(NOTEBOOK.read_text())


@pytest.fixture(scope="module")
def settings(notebook) -> dict:
    return read_settings(notebook)


@pytest.fixture(scope="module")
def commands(notebook, settings) -> list[tuple[str, list[str]]]:
    return script_commands(shell_commands(notebook, settings))


def test_notebook_is_nbformat_4_without_outputs(notebook):
    assert notebook["nbformat"] == 4 and isinstance(notebook["metadata"], dict)
    assert notebook["metadata"]["accelerator"] == "GPU"  # Colab then asks for a GPU runtime
    assert {cell["cell_type"] for cell in notebook["cells"]} == {"markdown", "code"}
    for cell in notebook["cells"]:
        assert isinstance(cell["metadata"], dict) and all(isinstance(line, str) for line in cell["source"])
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, "outputs are stored"


def test_code_cells_are_python_apart_from_magic_lines(notebook):
    for source in code_cells(notebook):
        ast.parse(python_only(source))  # a SyntaxError names the line


def test_every_command_goes_through_sh_so_a_failure_stops_run_all(notebook):
    """A `!` line reports a failure and lets "Run all" go on; `sh` raises (tests/test_colab_run.py)."""
    for source in code_cells(notebook):
        bangs = [line for line in logical_lines(source) if line.strip().startswith("!")]
        assert not bangs, f"run these through sh(...): {bangs}"
    definitions = [source for source in code_cells(notebook) if re.search(r"^def sh\(", source, re.M)]
    assert len(definitions) == 1
    first_use = next(i for i, source in enumerate(code_cells(notebook)) if re.search(r"^\s*sh\(", source, re.M))
    assert code_cells(notebook).index(definitions[0]) <= first_use


def test_every_command_parses_with_the_current_flags(notebook, settings, commands):
    all_scripts = [word for words in shell_commands(notebook, settings) for word in words if word.endswith(".py")]
    assert sorted(all_scripts) == sorted(script for script, _ in commands), "a .py command not in a known form"
    for script, argv in commands:
        if script == "dataset.py":  # no parser to call: its check subcommand reads the data
            assert argv[0] == "check"
            continue
        try:
            check_command(script, argv)
        except SystemExit:
            pytest.fail(f"`python {script} {shlex.join(argv)}` is rejected by {script} (its message is above)")
    assert {script for script, _ in commands} >= set(PARSERS)


def test_a_renamed_or_unknown_flag_is_rejected(commands):
    for script in PARSERS:
        argv = next(argv for name, argv in commands if name == script)
        with pytest.raises(SystemExit):
            check_command(script, argv + ["--no_such_flag"])
    stage = next(argv for name, argv in commands if name == "run.py")
    renamed = [re.sub(r"^--effective_batch_size$", "--total_batch_size", word) for word in stage]
    assert renamed != stage
    with pytest.raises(SystemExit):
        check_command("run.py", renamed)


def test_stages_are_the_published_recipe_resumed_on_drive(settings, commands):
    stages = [check_command("run.py", argv) for script, argv in commands if script == "run.py"]
    published = [run.parse_config(argv) for argv in readme_recipe()]
    assert len(stages) == len(published) == 5
    assert settings["RUNS_DIR"].startswith(DRIVE) and not settings["DATA_DIR"].startswith(DRIVE)
    previous = None
    for cfg, readme in zip(stages, published):
        assert cfg.resume == "latest" and cfg.checkpoints_total_limit == 1 and cfg.num_workers == 2
        assert Path(cfg.output_dir).parent == Path(settings["RUNS_DIR"])
        assert Path(cfg.output_dir).name == Path(readme.output_dir).name
        assert cfg.data_dir == settings["DATA_DIR"]  # the local copy, never Drive
        assert cfg.effective_batch_size == 64 and cfg.batch_size == "auto"   # as many images a pass as fit
        assert cfg.mixed_precision == "auto"
        if previous:
            assert cfg.pretrained_model_path == f"{previous.output_dir}/{previous.output_file_name}"
        same = {f.name for f in dataclasses.fields(run.TrainConfig)} - COLAB_FIELDS
        assert {k: getattr(cfg, k) for k in same} == {k: getattr(readme, k) for k in same}
        previous = cfg


def test_evaluation_and_photos_use_a_stage_s_final_weights(settings, commands):
    stages = {run.parse_config(argv).output_dir for script, argv in commands if script == "run.py"}
    for script in ("evaluate.py", "predict.py"):
        args = check_command(script, next(argv for name, argv in commands if name == script))
        assert args.checkpoint is not None and str(Path(args.checkpoint).parent) in stages
        assert str(args.out).startswith(settings["RUNS_DIR"])  # results survive the runtime


def test_tensorboard_watches_every_stage_from_a_set_up_step(notebook, settings):
    """One TensorBoard over RUNS_DIR (a run per stage folder), started before the first stage and among
    the steps to run again after a disconnect."""
    cells = notebook["cells"]
    index = next(i for i, cell in enumerate(cells) if "%tensorboard" in "".join(cell["source"]))
    line = next(line for line in "".join(cells[index]["source"]).splitlines() if line.startswith("%tensorboard"))
    assert shlex.split(line.format_map(settings))[1:] == ["--logdir", settings["RUNS_DIR"]]
    first_stage = next(i for i, cell in enumerate(cells) if "python run.py" in "".join(cell["source"]))
    assert index < first_stage
    heading = next("".join(cell["source"]) for cell in reversed(cells[:index]) if cell["cell_type"] == "markdown")
    step = int(re.match(r"## (\d+)\.", heading)[1])
    intro = "".join(cells[0]["source"])
    again = int(re.search(r"after a disconnect, run steps 1-(\d+) again", intro)[1])
    assert step <= again, f"TensorBoard is step {step}, but a disconnect re-runs steps 1-{again}"


def test_commands_keep_their_paths_whole_with_spaces_in_the_folders(notebook):
    """Every path is quoted: with a space in the Drive and local folders, each command still parses
    to the same folders."""
    spaced = json.loads(json.dumps(notebook))
    for cell in spaced["cells"]:
        source = "".join(cell["source"])
        if re.search(r"^RUNS_DIR\s*=", source, re.M):
            source = re.sub(r'^DRIVE = "[^"]*"', 'DRIVE = "/content/my drive"', source, flags=re.M)
            cell["source"] = re.sub(r'^LOCAL = "[^"]*"', 'LOCAL = "/content/local disk"', source, flags=re.M)
    settings = read_settings(spaced)
    assert " " in settings["RUNS_DIR"] and " " in settings["DATA_DIR"] and " " in settings["PHOTOS_DIR"]
    commands = shell_commands(spaced, settings)
    for script, argv in script_commands(commands):
        if script == "run.py":
            cfg = check_command(script, argv)
            assert cfg.data_dir == settings["DATA_DIR"] and Path(cfg.output_dir).parent == Path(settings["RUNS_DIR"])
        elif script in PARSERS:
            args = check_command(script, argv)
            assert str(args.checkpoint).startswith(settings["RUNS_DIR"]) and str(args.out).startswith(settings["RUNS_DIR"])
    for words in commands:   # mkdir, cp, unzip, ls, test/git clone, dataset.py check: no word is half a path
        assert not any(word.endswith(("/content/my", "/content/local")) for word in words), words
    source = next("".join(c["source"]) for c in spaced["cells"] if "%tensorboard" in "".join(c["source"]))
    line = next(line for line in source.splitlines() if line.startswith("%tensorboard"))
    assert shlex.split(line.format_map(settings))[1:] == ["--logdir", settings["RUNS_DIR"]]
