"""Shared test set-up: fp32 parity needs XLA's highest matmul precision."""

import importlib
import os

import jax
import pytest

jax.config.update("jax_default_matmul_precision", "highest")


def require(module: str):
  """Imports an optional test dependency (torch, timm): skipped locally when missing, but
  in CI (CI=true) its absence fails the run, so parity can never silently go untested."""
  if os.environ.get("CI", "").lower() == "true":
    return importlib.import_module(module)
  return pytest.importorskip(module)
