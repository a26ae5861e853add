"""The README's commands are the ones CI runs."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _readme_commands():
  text = (ROOT / "README.md").read_text()
  first_block = re.search(r"```(?:bash|sh)?\n(.*?)```", text, re.S).group(1)
  return [line.split("#")[0].strip() for line in first_block.splitlines()
          if line.strip() and not line.strip().startswith("#")]


def test_readme_opens_with_exactly_two_commands():
  commands = _readme_commands()
  assert len(commands) == 2, commands
  assert "deit_jax" in commands[0] and "pytest" in commands[1]


def test_ci_runs_the_readme_test_command():
  assert _readme_commands()[1] in (ROOT / ".ci" / "run").read_text()
