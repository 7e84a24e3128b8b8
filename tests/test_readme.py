"""The README's commands are the ones CI and users run."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _command_after(heading, text):
    section = text.split(heading, 1)[1]
    return re.search(r"^    (python3 -m venv .*)$", section, re.M).group(1)


def test_ci_runs_the_readme_test_command_word_for_word():
    readme = (REPO / "README.md").read_text()
    command = _command_after("## Run the tests", readme)
    assert command in (REPO / ".ci" / "run").read_text()
    assert "pytest" in command


def test_readme_quickstart_command_runs_the_shipped_quickstart():
    readme = (REPO / "README.md").read_text()
    command = _command_after("## Try it", readme)
    assert command.endswith("ftcore run recipes/quickstart.yaml")
    assert "torch==2.13.0" in command  # the CPU build first, or pip pulls a multi-GB CUDA one
    assert (REPO / "recipes" / "quickstart.yaml").is_file()
