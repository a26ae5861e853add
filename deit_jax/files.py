"""The one file layer: every workdir, checkpoint and output path the commands take goes
through here, so ``gs://`` (and any other ``scheme://`` filesystem TensorFlow serves, e.g.
``ram://`` in the tests) works wherever a local path does.

A path is a string. A local one uses the operating system (``os``, ``shutil``); a
``scheme://`` one uses ``tf.io.gfile``, imported only then, so local file work stays free
of TensorFlow. orbax takes an ``etils.epath.Path`` (``orbax_path``), which itself uses the
operating system for local paths and ``tf.io.gfile`` for ``gs://``.

Whole-file writes are atomic: a temporary name, then a rename. ``AppendLog`` flushes every
line; TensorFlow's GCS filesystem uploads the file on each flush (its writable file keeps
a local copy and ``Flush`` calls ``Sync``, tensorflow/tsl ``gcs_file_system.cc``), so a
log on ``gs://`` is current up to its last line even when the VM is killed.
"""

from __future__ import annotations

import os
import posixpath
import shutil
from typing import IO

from etils import epath


def is_local(path) -> bool:
  return "://" not in str(path)


def _gfile():
  import tensorflow as tf  # only for scheme:// paths
  return tf.io.gfile


def absolute(path) -> str:
  """``path`` as a string: local ones absolute (``~`` expanded), ``scheme://`` as given."""
  path = os.fspath(path)
  return os.path.abspath(os.path.expanduser(path)) if is_local(path) else path.rstrip("/")


def join(path, *parts: str) -> str:
  path = os.fspath(path)
  return os.path.join(path, *parts) if is_local(path) else posixpath.join(path, *parts)


def dirname(path) -> str:
  path = absolute(path)
  return os.path.dirname(path) if is_local(path) else posixpath.dirname(path)


def basename(path) -> str:
  return os.path.basename(os.fspath(path).rstrip("/"))


def orbax_path(path) -> epath.Path:
  """The path orbax (and etils.epath) takes."""
  return epath.Path(absolute(path))


def exists(path) -> bool:
  return os.path.exists(path) if is_local(path) else _gfile().exists(os.fspath(path))


def isdir(path) -> bool:
  return os.path.isdir(path) if is_local(path) else _gfile().isdir(os.fspath(path))


def listdir(path) -> list[str]:
  """Names in the directory ``path`` (without a trailing ``/``), sorted."""
  names = os.listdir(path) if is_local(path) else _gfile().listdir(os.fspath(path))
  return sorted(name.rstrip("/") for name in names)


def makedirs(path) -> None:
  if is_local(path):
    os.makedirs(path, exist_ok=True)
  else:
    _gfile().makedirs(os.fspath(path))


def rmtree(path) -> None:
  if is_local(path):
    shutil.rmtree(path)
  else:
    _gfile().rmtree(os.fspath(path))


def remove(path) -> None:
  if is_local(path):
    os.remove(path)
  else:
    _gfile().remove(os.fspath(path))


def rename(source, target) -> None:
  """Moves ``source`` to ``target``, replacing a file there."""
  if is_local(source) and is_local(target):
    os.replace(source, target)
  else:
    _gfile().rename(os.fspath(source), os.fspath(target), overwrite=True)


def open_file(path, mode: str = "r") -> IO:
  """A file object; modes r, w, a with an optional b."""
  if is_local(path):
    return open(path, mode, **({} if "b" in mode else {"encoding": "utf-8"}))
  return _gfile().GFile(os.fspath(path), mode)


def read_bytes(path) -> bytes:
  with open_file(path, "rb") as f:
    return f.read()


def read_text(path) -> str:
  with open_file(path, "r") as f:
    return f.read()


def write_bytes(path, data: bytes) -> None:
  """Writes ``data`` to ``path`` atomically (temporary name, then rename); creates the
  folder."""
  path = absolute(path)
  makedirs(dirname(path))
  tmp = path + ".tmp"
  with open_file(tmp, "wb") as f:
    f.write(data)
  rename(tmp, path)


def write_text(path, text: str) -> None:
  write_bytes(path, text.encode("utf-8"))


class AppendLog:
  """A text file that lines are appended to, each flushed at once (``gs://`` included:
  see the module docstring). Creates the folder; an existing file is continued."""

  def __init__(self, path):
    self.path = absolute(path)
    makedirs(dirname(self.path))
    self._file = open_file(self.path, "a")

  def write(self, line: str) -> None:
    self._file.write(line.rstrip("\n") + "\n")
    self._file.flush()

  def close(self) -> None:
    self._file.close()
