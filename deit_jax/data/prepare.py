"""``python -m deit_jax.data.prepare``: a TFDS dataset prepared once, for every run to read.

    python -m deit_jax.data.prepare --dataset=imagenet2012 --manual_dir=/data/imagenet \\
        --data_dir=gs://BUCKET/tensorflow_datasets --local_dir=/mnt/disk/tensorflow_datasets

builds the dataset (``array_record`` by default, the format random access needs) in the
local TFDS data dir ``--local_dir``, copies the built dataset directory to ``--data_dir``
with ``tf.io.gfile`` (gs:// or any file system TensorFlow serves), and checks that the copy
opens with TFDS and holds as many examples per split as the build. Without ``--local_dir``
it builds straight into ``--data_dir``, which must then be local for ``array_record``: the
array_record writer opens local files only (google/array_record#120; TFDS hands it the
shard paths under the data dir, tensorflow/datasets#10981), and TFDS writes the shards only
after a full pass over the data, so ``tfds build --data_dir=gs://... --file_format=
array_record`` fails hours in.

Every step can be re-run: a complete copy at ``--data_dir`` makes the command a one-line
no-op, a local build is reused, and the copy skips files already there at full size.
``dataset_info.json``, which makes TFDS see the dataset as prepared, is copied last, so an
interrupted copy is never mistaken for a complete one.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import sys

from absl import flags, logging

from deit_jax import cli
from deit_jax.data import sources
from deit_jax.errors import DatasetError, UserError

PROG = "python -m deit_jax.data.prepare"
FORMATS = ("array_record", "tfrecord")
INFO_FILE = "dataset_info.json"  # TFDS's mark of a prepared dataset: copied last
GB = 1e9


def _define_flags(values: flags.FlagValues) -> None:
  flags.DEFINE_string("dataset", None, "TFDS name, e.g. imagenet2012, imagenet_v2, cifar10 "
                      "(name/config:version works too)", flag_values=values)
  flags.DEFINE_string("data_dir", None, "TFDS data dir the runs read (config.data_dir), e.g. "
                      "gs://BUCKET/tensorflow_datasets (default: $TFDS_DATA_DIR, else "
                      "~/tensorflow_datasets)", flag_values=values)
  flags.DEFINE_string("local_dir", None, "local TFDS data dir to build in before copying to "
                      "--data_dir; needed when --data_dir is not local", flag_values=values)
  flags.DEFINE_string("manual_dir", None, "manually downloaded files (ImageNet's tars; "
                      "Fashion-MNIST's idx files)", flag_values=values)
  flags.DEFINE_enum("file_format", "array_record", FORMATS, "array_record: random access "
                    "(what deit_jax reads large datasets with); tfrecord: TFDS's default",
                    flag_values=values)
  flags.DEFINE_integer("copy_threads", 16, "files copied at once", flag_values=values)


def default_data_dir() -> str:
  return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def prepare(dataset: str, *, data_dir: str | None = None, local_dir: str | None = None,
            manual_dir: str | None = None, file_format: str = "array_record",
            copy_threads: int = 16, say=print) -> str:
  """Prepares ``dataset`` for runs that read ``data_dir`` (see the module doc). Returns the
  dataset's directory under ``data_dir``."""
  if file_format not in FORMATS:
    raise UserError(f"--file_format={file_format}: choose one of {', '.join(FORMATS)}")
  data_dir = (data_dir or default_data_dir()).rstrip("/")
  if local_dir and not sources.is_local(local_dir):
    raise UserError(f"--local_dir={local_dir} must be a directory on this machine")
  local_dir = local_dir and os.path.abspath(os.path.expanduser(local_dir))
  if local_dir is None or (sources.is_local(data_dir) and local_dir == os.path.abspath(data_dir)):
    if file_format == "array_record" and not sources.is_local(data_dir):
      raise DatasetError(  # before any work, from the flags alone
          f"array_record files cannot be written to {data_dir} (the array_record writer "
          f"writes local files only: google/array_record#120, tensorflow/datasets#10981); "
          f"add --local_dir=/LOCAL/DISK/tensorflow_datasets to build there and copy the "
          f"result to {data_dir}")
    return _build(dataset, data_dir, manual_dir, file_format, say).data_dir

  target = sources.tfds_builder(dataset, data_dir, file_format=file_format)
  if target.is_prepared():
    _check_format(target, file_format)
    say(f"{_describe(target)} is already complete in {target.data_dir}: nothing to do")
    return target.data_dir
  local = _build(dataset, local_dir, manual_dir, file_format, say)
  dest = _join(data_dir, os.path.relpath(local.data_dir, os.fspath(local.data_dir_root)))
  copied, skipped, size = copy_dataset(dataset_files(local), os.fspath(local.data_dir_root),
                                       data_dir, threads=copy_threads)
  say(f"copied {copied} files ({size / GB:.2f} GB) to {dest}"
      + (f", {skipped} already there" if skipped else ""))
  verify(dataset, data_dir, local)
  say(f"verified: {_describe(local)} in {dest} opens with TFDS ({_counts(local)}); the "
      f"local build in {local.data_dir} may be deleted")
  return dest


def _build(dataset, data_dir, manual_dir, file_format, say):
  """The builder of ``dataset`` in ``data_dir``, built there first if need be."""
  builder = sources.tfds_builder(dataset, data_dir, file_format=file_format)
  if builder.is_prepared():
    _check_format(builder, file_format)
    say(f"{_describe(builder)} is already built in {builder.data_dir}")
    return builder
  sources.check_writable(builder, dataset, manual_dir)
  if sources.is_local(data_dir):
    check_disk(builder, data_dir, manual_dir, say)
  say(f"building {_describe(builder)} in {builder.data_dir} ...")
  builder = sources.prepare_builder(builder, dataset, manual_dir)
  say(f"built {_describe(builder)} ({_counts(builder)})")
  return builder


def _describe(builder) -> str:
  return f"{builder.info.full_name} ({builder.info.file_format.value})"


def _counts(builder) -> str:
  splits = builder.info.splits
  return ", ".join(f"{name} {splits[name].num_examples:,}" for name in sorted(splits.keys()))


def _check_format(builder, file_format: str) -> None:
  found = builder.info.file_format.value
  if found != file_format:
    raise DatasetError(f"{builder.info.full_name} in {builder.data_dir} is prepared as {found}, "
                       f"not {file_format}: pass --file_format={found}, or delete that "
                       "directory to prepare it again")


# ---------------------------------------------------------------------------
# Local disk
# ---------------------------------------------------------------------------

def needed_bytes(builder, manual_dir: str | None) -> tuple[int, str]:
  """(bytes, how they were estimated) a build of ``builder`` needs on disk; 0 if unknown.

  TFDS's own sizes when it knows them; otherwise the size of the manual files (TFDS stores
  ImageNet's JPEGs as they are, so the build is about as large as the tars)."""
  known = int(builder.info.dataset_size) + int(builder.info.download_size)
  if known:
    return known, "TFDS's recorded size"
  if manual_dir and os.path.isdir(manual_dir):
    total = sum(os.path.getsize(os.path.join(root, f))
                for root, _, files in os.walk(manual_dir) for f in files)
    if total:
      return total, f"the size of the files in {manual_dir}"
  return 0, ""


def free_space(path: str) -> tuple[int, str]:
  """(free bytes, the existing folder they were read at) of the disk that would hold the
  local ``path``."""
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing) or "."
  return shutil.disk_usage(existing).free, existing


def check_disk(builder, data_dir: str, manual_dir: str | None, say=print) -> None:
  """Says in one line how much local disk the build needs and has; refuses too little."""
  free, existing = free_space(data_dir)
  need, how = needed_bytes(builder, manual_dir)
  name = builder.info.full_name
  if not need:
    say(f"disk: {free / GB:.1f} GB free at {existing}; the size of {name} is not known here "
        "(not checked)")
    return
  if need > free:
    raise DatasetError(f"not enough disk for {name} in {data_dir}: about {need / GB:.1f} GB "
                       f"needed ({how}), {free / GB:.1f} GB free; free space or choose "
                       "another --local_dir")
  say(f"disk: {free / GB:.1f} GB free at {existing}; {name} needs about {need / GB:.1f} GB "
      f"({how})")


# ---------------------------------------------------------------------------
# Copy and verify
# ---------------------------------------------------------------------------

def _join(root: str, relative: str) -> str:
  return root.rstrip("/") + "/" + relative.replace(os.sep, "/")


def dataset_files(builder, root: str | None = None) -> list[str]:
  """The files of a built dataset (local or in a bucket), relative to its TFDS data dir
  ``root`` (default: the builder's), ``dataset_info.json`` last; with
  ``<name>/.config/metadata.json`` (TFDS's default config name) where present."""
  import tensorflow as tf
  root = os.fspath(root or builder.data_dir_root).rstrip("/")
  data_dir = os.fspath(builder.data_dir).rstrip("/")
  variant = data_dir[len(root) + 1:]  # <name>[/<config>]/<version>
  files = sorted(_join(d.rstrip("/"), f)[len(root) + 1:]
                 for d, _, names in tf.io.gfile.walk(data_dir) for f in names)
  info = variant + "/" + INFO_FILE
  if info not in files:
    raise DatasetError(f"{data_dir} holds no {INFO_FILE}: not a prepared TFDS dataset")
  config = variant.split("/")[0] + "/.config/metadata.json"
  extra = [config] if tf.io.gfile.exists(_join(root, config)) else []
  return extra + [f for f in files if f != info and ".partial-" not in f] + [info]


def copy_dataset(files: list[str], src: str, dest: str, *, threads: int = 16,
                 sizes: dict[str, int] | None = None):
  """Copies ``files`` (paths relative to ``src``; ``sizes`` of them if known) to ``dest``,
  either of them local or any file system ``tf.io.gfile`` serves, the last one only after
  all others. A file already at ``dest`` with the same size is kept, so a re-run after an
  interruption finishes the copy; a file is written under a temporary name and renamed, so
  a partial one never has its final name. A storage error past the client's retries is a
  one-line DatasetError. Returns (files copied, files kept, bytes copied)."""
  import tensorflow as tf
  gfile = tf.io.gfile

  def copy(relative) -> int:
    source, target = _join(src, relative), _join(dest, relative)
    try:
      return _copy_one(source, target, sizes[relative] if sizes else gfile.stat(source).length)
    except tf.errors.OpError as e:
      raise DatasetError(f"copying {source} to {target} failed past the storage client "
                         f"retries ({type(e).__name__}: {e.message}); run the command again: "
                         "files already copied are kept") from e

  def _copy_one(source: str, target: str, size: int) -> int:
    if gfile.exists(target) and gfile.stat(target).length == size:
      return -1
    gfile.makedirs(target.rsplit("/", 1)[0])
    # A bucket object appears whole or not at all; a local file gets a temporary name.
    partial = f"{target}.partial-{os.getpid()}" if sources.is_local(target) else target
    gfile.copy(source, partial, overwrite=True)
    if gfile.stat(partial).length != size:
      raise DatasetError(f"copying {source} to {target} gave {gfile.stat(partial).length} "
                         f"bytes instead of {size}; run the command again")
    if partial != target:
      gfile.rename(partial, target, overwrite=True)
    return size

  *body, last = files
  with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
    results = list(pool.map(copy, body))
  results.append(copy(last))
  copied = [r for r in results if r >= 0]
  return len(copied), len(results) - len(copied), sum(copied)


def verify(dataset: str, data_dir: str, local) -> None:
  """The copy at ``data_dir`` opens with TFDS, in the local build's format, with as many
  examples per split."""
  copy = sources.tfds_builder(dataset, data_dir, file_format=None)
  if not copy.is_prepared():
    raise DatasetError(f"the copy of {dataset} in {data_dir} does not open with TFDS")
  expected = {name: split.num_examples for name, split in local.info.splits.items()}
  found = {name: split.num_examples for name, split in copy.info.splits.items()}
  if found != expected or copy.info.file_format != local.info.file_format:
    raise DatasetError(f"the copy of {dataset} in {copy.data_dir} differs from the local build "
                       f"(examples {found} vs {expected}, format "
                       f"{copy.info.file_format.value} vs {local.info.file_format.value}); "
                       "delete the copy and run this command again")


def main(argv=None) -> int:
  """The command line: 0, or 2 with one line ``error: ...`` on a user mistake."""
  def body(values, positional):
    if positional or not values.dataset:
      raise UserError(f"usage: {PROG} --dataset=NAME [--data_dir=DIR] [--local_dir=DIR] "
                      "[--manual_dir=DIR] [--file_format=array_record|tfrecord]")
    prepare(values.dataset, data_dir=values.data_dir, local_dir=values.local_dir,
            manual_dir=values.manual_dir, file_format=values.file_format,
            copy_threads=values.copy_threads)

  return cli.run_argv(_define_flags, sys.argv[1:] if argv is None else argv, PROG, body)


if __name__ == "__main__":
  logging.use_absl_handler()
  sys.exit(main())
