"""The package's import structure: every module imports alone, no module imports one
that imports it back (counting imports inside functions), and user mistakes are one
line while bugs keep their traceback."""

import ast
import pathlib
import subprocess
import sys

import pytest

from deit_jax import cli, errors

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "deit_jax"


def _modules() -> dict[str, pathlib.Path]:
  out = {}
  for path in sorted(PACKAGE.rglob("*.py")):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
      parts.pop()
    out[".".join(parts)] = path
  return out


def _imports(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
  """Package modules that ``name`` imports anywhere in its file (``from a import b``
  counts ``a.b`` when that is a module, else ``a``)."""
  found = set()
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(anchor + ([base] if base else []))
      for alias in node.names:
        found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
  # Importing ``a.b.c`` runs the packages ``a`` and ``a.b`` first, so an import of a
  # submodule (at the top or inside a function) is an edge to each of its packages too,
  # except the packages enclosing the importer: Python has started those before it.
  enclosing = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)}
  for module in list(found):
    parts = module.split(".")
    found.update(".".join(parts[:i]) for i in range(1, len(parts)))
  return {m for m in found if m in known and m not in enclosing}


def test_imports_inside_functions_and_their_packages_count(tmp_path):
  """The old cycle: models/__init__ imported pretrained inside a function, and pretrained ->
  checkpoint -> models.registry runs the models package."""
  module = tmp_path / "m.py"
  module.write_text("def f():\n  from deit_jax.models import registry\n")
  known = {"deit_jax", "deit_jax.models", "deit_jax.models.registry", "deit_jax.checkpoint"}
  assert _imports("deit_jax.checkpoint", module, known) == {"deit_jax.models",
                                                            "deit_jax.models.registry"}
  assert _imports("deit_jax.models.vit", module, known) == {"deit_jax.models.registry"}


def test_module_graph_has_no_cycle():
  modules = _modules()
  graph = {name: _imports(name, path, set(modules)) for name, path in modules.items()}
  state, stack = {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph[node]):
      if state.get(nxt) == "open":
        cycle = stack[stack.index(nxt):] + [nxt]
        pytest.fail("import cycle: " + " -> ".join(cycle))
      if nxt not in state:
        visit(nxt)
    stack.pop()
    state[node] = "done"

  for node in sorted(graph):
    if node not in state:
      visit(node)


def test_library_modules_never_import_the_entry_layer():
  modules = _modules()
  entry = {"deit_jax.cli", "deit_jax.main", "deit_jax.evaluate", "deit_jax.chain",
           "deit_jax.convert", "deit_jax.export", "deit_jax.teacher.__main__",
           "deit_jax.disagreement", "deit_jax.data.prepare", "deit_jax.data.stage",
           "deit_jax.table5"}
  for name, path in modules.items():
    if name in entry or name.startswith("deit_jax.bench"):
      continue
    bad = _imports(name, path, set(modules)) & entry
    assert not bad, f"{name} imports the entry layer: {sorted(bad)}"


def test_every_module_imports_alone():
  """Each module imported with no other deit_jax module loaded before it, in one child
  process (third-party packages stay loaded between modules, which keeps this cheap)."""
  names = list(_modules())
  script = (
      "import importlib, sys\n"
      "base = set(sys.modules)\n"
      f"for name in {names!r}:\n"
      "  for loaded in [m for m in sys.modules if m.startswith('deit_jax')]:\n"
      "    del sys.modules[loaded]\n"
      "  try:\n"
      "    importlib.import_module(name)\n"
      "  except Exception as e:\n"
      "    print(f'FAILED {name}: {type(e).__name__}: {e}')\n"
      "print('done')\n")
  out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip().splitlines()[-1] == "done", out.stdout[-2000:]
  assert "FAILED" not in out.stdout, out.stdout


def test_benchmark_and_run_builder_stay_free_of_tensorflow():
  out = subprocess.run([sys.executable, "-c",
                        "import sys, deit_jax.builder, deit_jax.bench.benchmark\n"
                        "print('tensorflow' in sys.modules)"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip() == "False"


def _entry(body: str):
  """Runs ``body`` under ``cli.one_line_errors`` in a child: (exit code, stderr)."""
  script = ("import sys\nfrom deit_jax import cli, errors\n"
            f"with cli.one_line_errors():\n  {body}\n")
  out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
  return out.returncode, out.stderr


@pytest.mark.parametrize("body, message", [
    ("raise errors.ConfigError('mesh needs 4 devices')", "error: mesh needs 4 devices"),
    ("raise errors.TeacherLogitsError('split: logits test vs run train')",
     "error: split: logits test vs run train"),
    ("open('/nonexistent/weights.pth')", "error: [Errno 2] No such file or directory"),
])
def test_a_user_error_is_one_line_and_exit_2(body, message):
  code, err = _entry(body)
  assert code == 2
  assert err.strip().startswith(message) and len(err.strip().splitlines()) == 1, err


def test_a_bug_keeps_its_traceback():
  code, err = _entry("int('not a number')")  # a ValueError that is nobody's input
  assert code == 1
  assert "Traceback" in err and "ValueError: invalid literal" in err


def test_error_classes_keep_their_old_names_and_bases():
  from deit_jax import checkpoint, convert
  from deit_jax.data import sources
  from deit_jax.teacher import store
  assert sources.DatasetError is errors.DatasetError
  assert checkpoint.CheckpointMismatchError is errors.CheckpointMismatchError
  assert store.TeacherLogitsError is errors.TeacherLogitsError
  assert convert.ConversionError is errors.ConversionError
  for kind in (errors.DatasetError, errors.CheckpointMismatchError, errors.TeacherLogitsError,
               errors.ConversionError, errors.ConfigError):
    assert issubclass(kind, errors.UserError) and issubclass(kind, ValueError)
  assert issubclass(errors.NotACheckpointError, FileNotFoundError)
  assert set(cli.USER_ERRORS) == {errors.UserError, *errors.USER_OS_ERRORS}
