"""The exceptions a user's mistake raises, for every layer to use (this module imports
nothing from the package).

Library code raises a ``UserError`` (or a subclass) when the command, the config or a
file the user named is wrong; only the entry points (``deit_jax.entry``) turn one into a
single ``error: ...`` line and exit code 2. Anything else -- a ``ValueError`` from a bug
included -- keeps its traceback.

Some classes also derive from the built-in type that callers caught before (``ValueError``
for a bad value, ``FileNotFoundError`` / ``FileExistsError`` for paths), so ``except
ValueError`` around a library call still works.

The entry points also report three OS errors as one line without a ``UserError`` around
them (``USER_OS_ERRORS``): ``FileNotFoundError``, ``FileExistsError`` and
``PermissionError``. Every path these commands touch comes from a flag or the config, so
such an error is the user's input; its message names the path.
"""

from __future__ import annotations


def some(names, limit: int = 8) -> str:
  """``names`` for a one-line error: the first ``limit`` joined by commas, then how many
  there are in all (a folder listed in an error may hold thousands of entries)."""
  names = [str(n) for n in names]
  if len(names) <= limit:
    return ", ".join(names)
  return f"{', '.join(names[:limit])}, ... ({len(names)} in all)"


def class_mismatch(recorded, here, what: str) -> str | None:
  """How the class names ``what`` (a checkpoint, teacher logits) was made with differ from
  the data's, in one line; None when they agree or cannot be compared: either list empty
  (made before names were recorded, or a dataset without names), or only one of them
  integers (class indices such as ImageNet-V2's folders against ImageNet's synsets)."""
  recorded, here = [str(n) for n in recorded or ()], [str(n) for n in here or ()]
  if not recorded or not here or recorded == here:
    return None
  if all(n.isdecimal() for n in recorded) != all(n.isdecimal() for n in here):
    return None
  if len(recorded) != len(here):
    return f"{what} was made with {len(recorded)} classes, the data has {len(here)}"
  differ = [i for i, (a, b) in enumerate(zip(recorded, here)) if a != b]
  i = differ[0]
  how = ("the same classes in another order (for an image folder: --config.class_order)"
         if sorted(recorded) == sorted(here) else "other classes")
  return (f"{what} was made with {how}: label {i} is {recorded[i]} there and {here[i]} in "
          f"the data ({len(differ)} of {len(here)} labels differ)")


class UserError(Exception):
  """A mistake in the command, the config or an input file: one line, exit code 2."""


class ConfigError(UserError, ValueError):
  """A config or flag value the library cannot work with (mesh, augmentation, model...)."""


class DatasetError(UserError, ValueError):
  """A dataset that cannot be opened as configured (message says what and where)."""


class MissingDataError(DatasetError, FileNotFoundError):
  """Dataset files that are not where the config says."""


class CheckpointError(UserError, ValueError):
  """A checkpoint or model directory that does not fit the request."""


class CheckpointMismatchError(CheckpointError):
  """The workdir's checkpoint belongs to another model or shape."""


class NotACheckpointError(UserError, FileNotFoundError):
  """A path that holds no (complete) checkpoint or model directory."""


class OutputExistsError(UserError, FileExistsError):
  """An output directory that would be overwritten."""


class TeacherLogitsError(UserError, ValueError):
  """Teacher logits that do not fit the run (message says what and how to fix it)."""


class ConversionError(UserError, ValueError):
  """A weights file that cannot be imported into the requested model."""


class PretrainedError(UserError, ValueError):
  """Published weights that cannot be fetched or verified (unknown name, no network, bad
  checksum)."""


class BenchError(UserError):
  """Bad benchmark input."""


USER_OS_ERRORS: tuple[type[OSError], ...] = (FileNotFoundError, FileExistsError,
                                             PermissionError)


class StorageError(UserError):
  """Data that could not be read from storage past every retry (the storage client's and
  ours): one line, exit code 2. The run stops before training on an incomplete batch; its
  last checkpoint is kept."""
