"""The one file layer: every workdir, checkpoint and output path the commands take goes
through here, so ``gs://`` (and any other ``scheme://`` filesystem TensorFlow serves, e.g.
``ram://`` in the tests) works wherever a local path does.

A path is a string. A local one uses the operating system (``os``, ``shutil``); a
``scheme://`` one uses ``tf.io.gfile``, imported only then, so local file work stays free
of TensorFlow. orbax takes an ``etils.epath.Path`` (``orbax_path``), which itself uses the
operating system for local paths and ``tf.io.gfile`` for ``gs://``.

Whole-file writes are atomic: a temporary name, then a rename. ``AppendLog`` writes a local
log line by line, flushed. A ``gs://`` object cannot be appended to: TensorFlow's GCS
filesystem uploads the whole file on every flush (its writable file keeps a local copy and
``Flush`` calls ``Sync``, tensorflow/tsl ``gcs_file_system.cc``), and GCS answers a second
write to one object within about a second with 429, which TF retries with backoff: a
flush per line cost the step seconds per line at one line per step (docs/performance.md,
"Reading from a bucket"). So on ``scheme://``
paths ``AppendLog`` hands lines to a background thread that uploads the log at most every
``REMOTE_INTERVAL_S``: a line never waits for the bucket, and the log in the bucket is
current to within that interval.

``isdir`` and ``listdir`` are strict: ``os.path.isdir`` and ``tf.io.gfile.isdir`` answer
False to any error, so a storage fault (a bucket's 403 or 503 past the client's retries, an
EIO on a mounted bucket) would pass for a missing folder, and a class folder or a
checkpoint step would drop out of a listing without a word. Here only "not found" is False;
any other failure is one line (``StorageError``).
"""

from __future__ import annotations

import os
import posixpath
import shutil
import stat
import sys
import threading
import time
from typing import IO

from etils import epath

from deit_jax.errors import StorageError


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


def _failed(path: str, e: Exception) -> StorageError:
  return StorageError(f"listing {path} failed after the storage client retries "
                      f"({type(e).__name__}: {' '.join(str(e).split())[:200]}); stopped "
                      "before using a listing that may be incomplete (the same command runs "
                      "again once the storage answers)")


def isdir(path) -> bool:
  """Whether ``path`` is a folder: False only when it is not found (module docstring)."""
  path = os.fspath(path)
  if is_local(path):
    try:
      return stat.S_ISDIR(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
      return False
    except OSError as e:
      raise _failed(path, e) from None
  import tensorflow as tf
  try:
    return tf.io.gfile.stat(path).is_directory
  except tf.errors.NotFoundError:
    return False
  except tf.errors.OpError as e:
    raise _failed(path, e) from None


def listdir(path) -> list[str]:
  """Names in the directory ``path`` (without a trailing ``/``), sorted. A folder that is
  not there raises as before (FileNotFoundError, or TF's NotFoundError for ``scheme://``);
  any other failure is a StorageError."""
  path = os.fspath(path)
  if is_local(path):
    try:
      names = os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
      raise
    except OSError as e:
      raise _failed(path, e) from None
  else:
    import tensorflow as tf
    try:
      names = tf.io.gfile.listdir(path)
    except tf.errors.NotFoundError as e:
      # gfile.listdir asks isdir first, which answers False to any error: ask again
      if not isdir(path):
        raise
      raise _failed(path, e) from None
    except tf.errors.OpError as e:
      raise _failed(path, e) from None
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


REMOTE_INTERVAL_S = 5.0  # a scheme:// log is uploaded at most this often (GCS: ~1 write/s)


class AppendLog:
  """A text file that lines are appended to; creates the folder and continues an existing
  file. Local: each line written and flushed at once. ``scheme://``: each line kept, and
  the whole log uploaded by a background thread within ``interval_s`` of it (see the
  module docstring); ``close`` uploads what is left. An upload that fails is reported once
  on stderr and tried again at the next interval: a log never slows or stops a run."""

  def __init__(self, path, *, interval_s: float | None = None):
    self.path = absolute(path)
    makedirs(dirname(self.path))
    self._remote = not is_local(self.path)
    if not self._remote:
      self._file = open_file(self.path, "a")
      return
    self.interval_s = REMOTE_INTERVAL_S if interval_s is None else interval_s
    self._lines = [read_text(self.path)] if exists(self.path) else []
    self._written = len(self._lines)  # lines the bucket holds
    self._lock = threading.Lock()
    self._wake = threading.Event()
    self._closing = threading.Event()
    self._failing = False
    self._thread = threading.Thread(target=self._upload_loop, daemon=True,
                                    name=f"log {basename(self.path)}")
    self._thread.start()

  def write(self, line: str) -> None:
    line = line.rstrip("\n") + "\n"
    if not self._remote:
      self._file.write(line)
      self._file.flush()
      return
    with self._lock:
      self._lines.append(line)
    self._wake.set()

  def close(self) -> None:
    if not self._remote:
      self._file.close()
      return
    self._closing.set()
    self._wake.set()
    self._thread.join()
    if self._written < len(self._lines):
      print(f"warning: the last {len(self._lines) - self._written} line(s) of {self.path} "
            "could not be uploaded", file=sys.stderr, flush=True)

  def _upload_loop(self) -> None:
    while True:
      self._wake.wait()
      self._wake.clear()
      self._closing.wait(self.interval_s)  # gathers an interval's lines into one upload
      closing = self._closing.is_set()
      self._upload(attempts=3 if closing else 1)
      if closing:
        return

  def _upload(self, attempts: int) -> None:
    with self._lock:
      count, text = len(self._lines), "".join(self._lines)
    if count == self._written:
      return
    for attempt in range(attempts):
      try:
        write_text(self.path, text)  # (TF's ram:// "w" appends: a rename replaces)
      except Exception as e:  # noqa: BLE001 - a log that cannot be written never stops a run
        if not self._failing:
          print(f"warning: cannot upload the log {self.path} ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:200] if str(e) else ''}); trying again",
                file=sys.stderr, flush=True)
        self._failing = True
        if attempt + 1 < attempts:
          time.sleep(min(self.interval_s, 2.0 ** attempt))
        continue
      if self._failing:
        print(f"note: the log {self.path} is written again", file=sys.stderr, flush=True)
      self._failing = False
      self._written = count
      return
    self._wake.set()  # lines are waiting: try again at the next interval
