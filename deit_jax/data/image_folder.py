"""What an image folder ``<root>/<split>/<class>/<image>`` holds, and in which class order.

A class's label is its position in the class order, so the order decides every label:

* ``string``: class folder names sorted as strings (torchvision's and TFDS's ImageFolder);
  folders ``0 ... 11`` come as 0, 1, 10, 11, 2, ...
* ``numeric``: every folder name an integer, sorted by value; labels are the ranks, so
  folders ``1 ... 102`` (Flowers-102 as commonly unpacked) get 0 ... 101 and sparse ids
  keep their order.
* ``auto`` (the default): ``numeric`` when every name is an integer and they run
  ``0 ... N-1`` (ImageNet-V2's class indices) or ``1 ... N``; ``string`` when not every
  name is an integer; any other set of integers is one line asking for a choice, since
  string and numeric order would label it differently.

A split other than ``train`` takes its class names from ``train/`` when all of its folders
are among them (a split missing some classes keeps train's labels); a split of integer
folders beside a ``train/`` of other names (ImageNet-V2 unpacked next to ImageNet's
synset folders) is ordered by its own folders.

Listing goes through ``deit_jax.files``, which is strict: a storage fault on one class
folder stops with one line instead of dropping that class without a word.
"""

from __future__ import annotations

import os

from deit_jax import files
from deit_jax.errors import ConfigError, DatasetError, some

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
CLASS_ORDERS = ("auto", "numeric", "string")


def class_order(names: list[str], where: str, order: str = "auto") -> list[str]:
  """Class folder names in label order (module docstring)."""
  if order not in CLASS_ORDERS:
    raise ConfigError(f"class_order must be one of {', '.join(CLASS_ORDERS)}, got {order!r}")
  integers = bool(names) and all(n.isdecimal() for n in names)
  if order == "string" or (order == "auto" and not integers):
    return sorted(names)
  if not integers:
    raise DatasetError(f"{where}: class_order=numeric needs integer class folders, found "
                       f"{some(sorted(n for n in names if not n.isdecimal()))}")
  numbers = sorted(int(n) for n in names)
  if len(set(numbers)) < len(numbers):
    twice = sorted((n for n in names if numbers.count(int(n)) > 1), key=int)
    raise DatasetError(f"{where}: class folders name the same number twice: {some(twice)}")
  n = len(numbers)
  if order == "auto" and numbers not in (list(range(n)), list(range(1, n + 1))):
    missing = sorted(set(range(numbers[0] > 0, numbers[-1] + 1)) - set(numbers))
    raise DatasetError(
        f"{where}: the class folders are integers but run neither 0..{n - 1} nor 1..{n} "
        f"({len(missing)} missing, e.g. {some(missing, 5)}); set --config.class_order="
        "numeric to label them in numeric order (by rank) or string for string order")
  return sorted(names, key=int)


def _subfolders(path: str) -> list[str]:
  return [d for d in files.listdir(path) if files.isdir(os.path.join(path, d))]


def list_image_folder(root: str, split: str,
                      order: str = "auto") -> tuple[list[str], list[int], list[str]]:
  """Sorted (paths, labels, class names in label order) of ``<root>/<split>/<class>/<image>``."""
  if not files.isdir(root):
    raise DatasetError(f"image folder {root} does not exist")
  splits = sorted(_subfolders(root))
  if split not in splits:
    raise DatasetError(f"image folder {root} has no split {split!r} (found: "
                       f"{some(splits) or 'no sub-folders'}; expected "
                       f"<root>/<split>/<class>/<image>)")

  def folders(s):
    return _subfolders(os.path.join(root, s))

  own = folders(split)
  if split != "train" and "train" in splits:
    train = folders("train")
    if set(own) <= set(train):
      class_names = class_order(train, os.path.join(root, "train"), order)
    elif own and all(n.isdecimal() for n in own) and not all(n.isdecimal() for n in train):
      class_names = class_order(own, os.path.join(root, split), order)
    else:
      raise DatasetError(f"{root}/{split}: class folders not present in the train split: "
                         f"{some(sorted(set(own) - set(train)))}")
  else:
    class_names = class_order(own, os.path.join(root, split), order)
  label = {name: i for i, name in enumerate(class_names)}
  paths, labels = [], []
  for cls in sorted(own, key=label.get):
    folder = os.path.join(root, split, cls)
    images = [f for f in files.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS)]
    paths += [os.path.join(folder, f) for f in images]
    labels += [label[cls]] * len(images)
  if not paths:
    raise DatasetError(f"image folder {root}/{split} holds no images "
                       f"({', '.join(IMAGE_EXTENSIONS)} files under <class>/ folders)")
  return paths, labels, class_names
