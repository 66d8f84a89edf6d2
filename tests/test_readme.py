"""The README and docs/ as a user reads them: every command of a project script in README.md and
docs/*.md (bash blocks and inline code) parses with the script's current flags; the README stays the
door (at most 250 lines, linking every docs page, its published table as the command beside it prints
it); every relative link in them points at a file, and a heading, that exist."""
import re
import shlex
from pathlib import Path

import pytest

import bench
import dataset
import evaluate
import memory
import predict
import run
import serve
import synthetic
import unet

PROJECT = Path(__file__).resolve().parent.parent
README = PROJECT / "README.md"
PAGES = [README, *sorted((PROJECT / "docs").glob("*.md")), PROJECT / "checkpoints" / "README.md"]
# Each script's own parser; each raises SystemExit on an unknown flag or a bad value.
PARSERS = {"run.py": run.parse_config, "evaluate.py": evaluate.parse_args, "predict.py": predict.parse_args,
           "serve.py": lambda argv: serve.build_parser().parse_args(argv), "unet.py": unet.parse_args,
           "dataset.py": dataset.parse_args, "synthetic.py": synthetic.parse_args, "bench.py": bench.parse_args,
           "memory.py": memory.parse_args}
FENCE = re.compile(r"^ *```(\w*)\n(.*?)^ *```", re.S | re.M)


def script_argv(words: list[str]) -> tuple[str, list[str]] | None:
    """(script, its arguments) of `python X.py ...` or `torchrun ... X.py ...` with X.py one of the
    project's top-level files; None for any other command (pytest, tensorboard, curl, ...)."""
    if words[:1] in (["python"], ["python3"]) and len(words) > 1 and words[1].endswith(".py"):
        script = 1
    elif words[:1] == ["torchrun"]:
        script = next(i for i, word in enumerate(words) if word.endswith(".py"))
    else:
        return None
    assert (PROJECT / words[script]).is_file(), f"no such script: {' '.join(words)}"
    return words[script], words[script + 1:]


def page_commands(page: Path) -> list[tuple[str, list[str]]]:
    """The page's commands of our scripts: bash block lines (comments dropped, continuations joined,
    shell variables set earlier on the page filled in) and inline code spans."""
    text = page.read_text()
    variables, commands = {}, []
    for lang, block in FENCE.findall(text):
        if lang != "bash":
            continue
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = line.split(" #")[0].strip()
            for name, value in variables.items():
                line = line.replace(f"${name}", value)
            if m := re.fullmatch(r'([A-Z]+)="?(.*?)"?', line):
                variables[m.group(1)] = m.group(2)
            elif line and not line.startswith("#") and (found := script_argv(shlex.split(line))):
                assert "$" not in line, f"{page.name}: unexpanded variable in command: {line}"
                commands.append(found)
    for span in re.findall(r"`([^`]+)`", FENCE.sub("", text)):
        if re.match(r"(python3?|torchrun)\s", span) and (found := script_argv(shlex.split(span.replace("\n", " ")))):
            commands.append(found)
    return commands


def all_commands() -> list[tuple[str, list[str]]]:
    return [command for page in PAGES for command in page_commands(page)]


def check(script: str, argv: list[str]) -> None:
    """Parses argv as `python script argv` would; SystemExit if the script rejects it (--help passes)."""
    assert script in PARSERS, f"{script} has no parser here: add it to PARSERS"
    try:
        PARSERS[script](argv)
    except SystemExit as stop:
        if stop.code not in (0, None) or "--help" not in argv:
            raise


@pytest.mark.parametrize("script, argv", all_commands(), ids=lambda a: " ".join(a) if isinstance(a, list) else a)
def test_documented_command_parses(script, argv):
    check(script, argv)


def test_the_check_finds_the_commands_and_catches_a_renamed_flag():
    commands = all_commands()
    assert len(commands) >= 60
    assert {script for script, _ in commands} == set(PARSERS)
    for script, argv in (("run.py", ["--data_dir", "x", "--no_such_flag"]), ("unet.py", ["convert", "one.pt"]),
                         ("synthetic.py", ["out", "--count", "N"]), ("serve.py", ["--port", "eighty"]),
                         ("dataset.py", ["check"]), ("bench.py", ["--no_such_flag"])):
        with pytest.raises(SystemExit):
            check(script, argv)


def test_the_readme_is_the_door():
    lines = README.read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move depth to docs/"
    linked = {(README.parent / target).resolve() for target, _ in links(README)}
    for page in (PROJECT / "docs").glob("*.md"):
        assert page.resolve() in linked, f"README.md does not link {page.relative_to(PROJECT)}"


def test_the_readme_table_is_what_its_command_prints(capsys):
    argv = next(argv for script, argv in page_commands(README) if script == "evaluate.py" and "--summarize" in argv)
    evaluate.main(argv)
    table = capsys.readouterr().out.strip()
    assert table.count("\n") > 20 and table in README.read_text()


def headings(page: Path) -> set[str]:
    """GitHub's anchors of the page's headings: lower case, punctuation dropped, spaces to hyphens,
    a repeated one numbered."""
    anchors, seen = set(), {}
    for heading in re.findall(r"^#+ (.*)$", FENCE.sub("", page.read_text()), re.M):
        anchor = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        seen[anchor] = seen.get(anchor, -1) + 1
        anchors.add(f"{anchor}-{seen[anchor]}" if seen[anchor] else anchor)
    return anchors


def links(page: Path) -> list[tuple[str, str]]:
    """(path, anchor) of each relative link and image on the page; path '' is the page itself."""
    targets = re.findall(r"\]\(([^)\s]+)\)", FENCE.sub("", page.read_text()))
    return [tuple(target.partition("#")[::2]) for target in targets if not re.match(r"\w+:", target)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(PROJECT)))
def test_every_relative_link_resolves(page):
    assert page.is_file()
    for path, anchor in links(page):
        target = (page.parent / path).resolve() if path else page
        assert target.exists(), f"{page.name}: link to missing {path}"
        if anchor:
            assert anchor in headings(target), f"{page.name}: {target.name} has no heading #{anchor}"
