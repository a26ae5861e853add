"""launch/constraints.txt and launch/setup.sh: the pins cover every requirement of setup.cfg
and agree with jax's own extras, the environment under test has the pinned versions, and
setup.sh refuses a Python the pins have no wheels for. Fast, no network."""

import configparser
import importlib.metadata
import os
import pathlib
import subprocess

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _pins():
  pins = {}
  for line in (ROOT / "launch" / "constraints.txt").read_text().splitlines():
    if line.split("#")[0].strip():
      name, version = line.strip().split("==")
      pins[canonicalize_name(name)] = version
  return pins


def test_constraints_pin_every_requirement_consistently():
  """launch/constraints.txt pins every requirement of setup.cfg and its extras at a version
  the requirement allows, and what jax 0.10.2's own tpu and cuda12 extras ask for."""
  pins = _pins()
  cfg = configparser.ConfigParser()
  cfg.read(ROOT / "setup.cfg")
  lines = cfg["options"]["install_requires"].splitlines()
  lines += [line for extra in cfg["options.extras_require"].values()
            for line in extra.splitlines()]
  requirements = [Requirement(line) for line in lines if line.strip()
                  and not line.strip().startswith("#")]
  assert len(requirements) > 20
  assert importlib.metadata.version("jax") == pins["jax"]  # whose metadata is read below
  for extra in ("tpu", "cuda12"):
    requirements += [r for r in map(Requirement, importlib.metadata.requires("jax"))
                     if r.marker is not None and r.marker.evaluate({"extra": extra})]
  for r in requirements:
    version = pins.get(canonicalize_name(r.name))
    assert version is not None and r.specifier.contains(version), (str(r), version)
  assert pins["jax-cuda12-pjrt"] == pins["jax-cuda12-plugin"] == pins["jaxlib"] == pins["jax"]


def test_this_environment_has_the_pinned_versions():
  """The tests run on what the pins install (launch/setup.sh pins by default)."""
  pins = _pins()
  differ = sorted(f"{d.metadata['Name']} {d.version} (pinned {pins[name]})"
                  for d in importlib.metadata.distributions()
                  if (name := canonicalize_name(d.metadata["Name"])) in pins
                  and Version(d.version).public != Version(pins[name]).public)
  assert differ == [], ("not the versions of launch/constraints.txt (re-run bash "
                        f"launch/setup.sh with your extras to install them): {differ}")


def test_setup_refuses_a_python_the_pins_do_not_cover(tmp_path):
  python = tmp_path / "python3.14"
  python.write_text('#!/bin/sh\ncase "$*" in *--version*) echo "Python 3.14.0" ;;'
                    ' *"(3, 13)"*) exit 1 ;; esac\nexit 0\n')
  python.chmod(0o755)
  p = subprocess.run(["bash", str(ROOT / "launch" / "setup.sh")], capture_output=True,
                     text=True, timeout=60,
                     env={**{k: v for k, v in os.environ.items()
                             if not k.startswith(("PYTHON", "DEIT_JAX_"))},
                          "PYTHON": str(python), "DEIT_JAX_VENV": str(tmp_path / "venv")})
  assert p.returncode == 1 and p.stdout == "" and len(p.stderr.splitlines()) == 1, p.stderr
  assert p.stderr.startswith("error: launch/constraints.txt pins wheels for Python 3.11-3.13;"
                             f" '{python}' is Python 3.14.0 (set PYTHON=python3.12, or ")
  assert not (tmp_path / "venv").exists()
