"""``python -m deit_jax.data.stage``: a prepared dataset copied from the bucket to this
host's disk (or RAM), for training to read at the step rate.

    python -m deit_jax.data.stage --dataset=imagenet2012 \\
        --data_dir=gs://BUCKET/tensorflow_datasets --local_dir=/mnt/disks/data/tfds
    python -m deit_jax.main ... --config.data_dir=/mnt/disks/data/tfds

Training reads examples by random index, one record per read. From a bucket each read is a
request of its own (array_record's reader: one open-ended range GET per record, a new
connection each; google/riegeli#40), which on this machine gave a few percent of the
local rate at any latency (docs/data.md, "Reading from a bucket"). Staged, every byte
crosses the network once, in whole-file copies, and the reads are local. Every host stages
the whole dataset: each host's share of a step is drawn from all of it.

``--local_dir`` must hold the dataset (ImageNet: ~150 GB): the command checks the free space
first. Each file is copied under a temporary name, its size checked, then renamed, and
``dataset_info.json`` comes last, so an interrupted staging is never taken for a complete
one and a re-run copies only what is missing; a complete copy makes the command a one-line
no-op. The copy is checked to open with TFDS with the bucket's examples per split.
"""

from __future__ import annotations

import os
import sys
import time

from absl import flags, logging

from deit_jax import cli, files
from deit_jax.data import prepare, sources
from deit_jax.errors import DatasetError, UserError

PROG = "python -m deit_jax.data.stage"


def _define_flags(values: flags.FlagValues) -> None:
  flags.DEFINE_string("dataset", None, "TFDS name, e.g. imagenet2012 (name/config:version "
                      "works too)", flag_values=values)
  flags.DEFINE_string("data_dir", None, "the TFDS data dir that holds the prepared dataset, "
                      "e.g. gs://BUCKET/tensorflow_datasets", flag_values=values)
  flags.DEFINE_string("local_dir", None, "the local TFDS data dir to copy it into (give it "
                      "to the trainer as --config.data_dir)", flag_values=values)
  flags.DEFINE_integer("copy_threads", 16, "files copied at once", flag_values=values)


def stage(dataset: str, *, data_dir: str, local_dir: str, copy_threads: int = 16,
          say=print) -> str:
  """Copies the prepared ``dataset`` from ``data_dir`` to ``local_dir``; returns the local
  dataset directory (see the module doc)."""
  if not sources.is_local(local_dir):
    raise UserError(f"--local_dir={local_dir} must be a directory on this machine")
  local_dir = os.path.abspath(os.path.expanduser(local_dir))
  remote = sources.tfds_builder(dataset, data_dir, file_format=None)
  if not remote.is_prepared():
    raise DatasetError(f"{dataset} is not prepared in {data_dir}: "
                       f"{sources.prepare_hint(dataset, data_dir)}")
  if _staged(dataset, local_dir, remote):
    path = sources.tfds_builder(dataset, local_dir, file_format=None).data_dir
    say(f"{dataset} is already staged in {path}: nothing to do")
    return path
  root = files.absolute(data_dir)
  names = prepare.dataset_files(remote, root)
  import tensorflow as tf
  sizes = {f: tf.io.gfile.stat(files.join(root, f)).length for f in names}
  missing = sum(size for f, size in sizes.items()
                if not _has(os.path.join(local_dir, f), size))
  free, existing = prepare.free_space(local_dir)
  if missing > free:
    raise DatasetError(f"not enough space to stage {dataset} in {local_dir}: "
                       f"{missing / prepare.GB:.1f} GB to copy, {free / prepare.GB:.1f} GB "
                       f"free at {existing}; attach a larger disk or choose another --local_dir")
  start = time.time()
  copied, kept, size = prepare.copy_dataset(names, root, local_dir, threads=copy_threads,
                                            sizes=sizes)
  seconds = max(time.time() - start, 1e-9)
  say(f"staged {copied} files ({size / prepare.GB:.2f} GB in {seconds:.0f} s, "
      f"{size / 1e6 / seconds:.0f} MB/s) from {remote.data_dir} to {local_dir}"
      + (f", {kept} already there" if kept else ""))
  prepare.verify(dataset, local_dir, remote)
  path = sources.tfds_builder(dataset, local_dir, file_format=None).data_dir
  say(f"verified: {path} opens with TFDS with the bucket's examples per split; train with "
      f"--config.data_dir={local_dir}")
  return path


def _staged(dataset: str, local_dir: str, remote) -> bool:
  """Whether ``local_dir`` already holds a complete copy (prepare.verify's rule)."""
  try:
    prepare.verify(dataset, local_dir, remote)
  except DatasetError:  # absent (TFDS may not know the name without its files), or partial
    return False
  return True


def _has(path: str, size: int) -> bool:
  return os.path.isfile(path) and os.path.getsize(path) == size


def main(argv=None) -> int:
  """The command line: 0, or 2 with one line ``error: ...``."""
  def body(values, positional):
    if positional or not (values.dataset and values.data_dir and values.local_dir):
      raise UserError(f"usage: {PROG} --dataset=NAME --data_dir=gs://BUCKET/tensorflow_datasets"
                      " --local_dir=/LOCAL/DISK/tensorflow_datasets [--copy_threads=16]")
    stage(values.dataset, data_dir=values.data_dir, local_dir=values.local_dir,
          copy_threads=values.copy_threads)

  return cli.run_argv(_define_flags, sys.argv[1:] if argv is None else argv, PROG, body)


if __name__ == "__main__":
  logging.use_absl_handler()
  sys.exit(main())
