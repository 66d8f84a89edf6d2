"""Every run.py, evaluate.py and predict.py command in README.md parses with the current flags."""
import re
import shlex
from pathlib import Path

import pytest

import evaluate
import predict
import run

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_commands() -> list[list[str]]:
    """Shell lines of the README's bash blocks that run our scripts, variables expanded."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    variables, commands = {}, []
    for line in (l.split(" #")[0].strip() for block in blocks for l in block.splitlines()):
        for name, value in variables.items():
            line = line.replace(f"${name}", value)
        if m := re.fullmatch(r'([A-Z]+)="?(.*?)"?', line):
            variables[m.group(1)] = m.group(2)
        elif re.search(r"\b(run|evaluate|predict)\.py\b", line):
            assert "$" not in line, f"unexpanded variable in README command: {line}"
            commands.append(shlex.split(line))
    return commands


def check(argv: list[str]) -> None:
    script = next(a for a in argv if a.endswith(".py"))
    args = argv[argv.index(script) + 1:]
    {"run.py": run.parse_config, "evaluate.py": evaluate.parse_args, "predict.py": predict.parse_args}[script](args)


@pytest.mark.parametrize("argv", readme_commands(), ids=lambda a: " ".join(a)[:60])
def test_readme_command_parses(argv):
    check(argv)


def test_the_check_catches_a_renamed_flag():
    assert len(readme_commands()) >= 10
    with pytest.raises(SystemExit):
        check(["python", "run.py", "--data_dir", "x", "--no_such_flag"])
