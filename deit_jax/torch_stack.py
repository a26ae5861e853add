"""Imports PyTorch and timm safely into a process that may already hold TensorFlow.

Why: TensorFlow loads its shared libraries with ``RTLD_GLOBAL``, which puts its copy of
LLVM first in the process's symbol scope. ``import timm`` pulls in torchvision ->
torch._dynamo -> ``import triton`` (present wherever torch was installed with CUDA wheels),
and the static initialisers of ``triton/_C/libtriton.so`` then bind to TensorFlow's LLVM
instead of their own and crash (SIGSEGV in ``llvm::DebugCounter`` while the library loads).
Loading triton *before* TensorFlow is safe (it is loaded ``RTLD_LOCAL``), and so is
loading it after TensorFlow with ``RTLD_DEEPBIND``, which makes it resolve its own symbols
first. ``import_torch``/``import_timm`` pick whichever applies, so every caller is safe in
either import order; triton stays fully usable (``torch.compile`` needs it on GPUs).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from types import ModuleType


def _load_triton() -> None:
  if "triton" in sys.modules or importlib.util.find_spec("triton") is None:
    return
  deepbind = getattr(os, "RTLD_DEEPBIND", 0)  # Linux/glibc only; elsewhere no clash
  if "tensorflow" not in sys.modules or not deepbind:
    importlib.import_module("triton")
    return
  # Only while triton's own extension loads; anything else keeps the default flags.
  flags = sys.getdlopenflags()
  sys.setdlopenflags(flags | deepbind)
  try:
    importlib.import_module("triton")
  finally:
    sys.setdlopenflags(flags)


def import_torch() -> ModuleType:
  """``import torch`` (raises ImportError when it is not installed)."""
  try:
    _load_triton()
  except ImportError:
    pass  # a broken triton install: torch treats triton as absent too
  return importlib.import_module("torch")


def import_timm() -> ModuleType:
  """``import timm`` after ``import_torch`` (raises ImportError when either is missing)."""
  import_torch()
  return importlib.import_module("timm")
