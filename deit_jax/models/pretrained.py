"""Official DeiT weights by name: downloaded once, verified, converted once, reused.

    from deit_jax.models import create_model
    model = create_model("deit_small_patch16_224", pretrained=True)   # loads through here
    python -m deit_jax.main ... --config.init_from=deit_base_patch16_224   # fine-tune

Like timm, weights by name live in the models package: this module needs only the
registry and the torch key table beside it, never the training checkpoint format, so
``create_model(..., pretrained=True)`` imports nothing above the models.

``WEIGHTS`` lists the published files (facebookresearch/deit README; timm's pretrained
configs point at the same URLs). Their names carry the first 8 hex digits of the file's
SHA-256 (torch.hub's convention, e.g. ``deit_base_patch16_224-b5f2ef4d.pth``); no full
digest is published beside them, so that prefix is what the table records and what a
download is checked against. An entry with a full 64-digit digest is checked in full.

Cache (``$DEIT_JAX_CACHE``, default ``~/.cache/deit_jax``)::

    downloads/<file>.pth   the verified download (a partial or refused one is deleted)
    params/<name>.npz      its parameters under timm's keys (float32; one flat file, read
                           with numpy alone), with the SHA-256 of the download it came from

A parameter file whose recorded download does not pass the table's checksum (the table
changed, or the file was put there by hand) is converted again from a verified download.
``$DEIT_JAX_WEIGHTS_URL`` replaces the URLs' directory (a mirror holding the same file
names). Without network, put the file at the path the error names and run again.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.error
import urllib.request
from typing import Any

import numpy as np
from absl import logging

from deit_jax.errors import ConversionError, PretrainedError
from deit_jax.models import registry
from deit_jax.models.torch_weights import apply_state_dict, check_fits, read_state_dict

_FB = "https://dl.fbaipublicfiles.com/deit/"

# name -> (url, SHA-256 as published: the 8-digit prefix in the official file names)
WEIGHTS: dict[str, tuple[str, str]] = {
    "deit_tiny_patch16_224": (_FB + "deit_tiny_patch16_224-a1311bcf.pth", "a1311bcf"),
    "deit_small_patch16_224": (_FB + "deit_small_patch16_224-cd65a155.pth", "cd65a155"),
    "deit_base_patch16_224": (_FB + "deit_base_patch16_224-b5f2ef4d.pth", "b5f2ef4d"),
    "deit_base_patch16_384": (_FB + "deit_base_patch16_384-8de9b5d1.pth", "8de9b5d1"),
    "deit_tiny_distilled_patch16_224": (
        _FB + "deit_tiny_distilled_patch16_224-b40b3cf7.pth", "b40b3cf7"),
    "deit_small_distilled_patch16_224": (
        _FB + "deit_small_distilled_patch16_224-649709d9.pth", "649709d9"),
    "deit_base_distilled_patch16_224": (
        _FB + "deit_base_distilled_patch16_224-df68dfff.pth", "df68dfff"),
    "deit_base_distilled_patch16_384": (
        _FB + "deit_base_distilled_patch16_384-d0272ac0.pth", "d0272ac0"),
    # The DeiT recipe's teacher (RegNetY-16GF); converts once our registry has regnety_160.
    "regnety_160": (_FB + "regnety_160-a5fe301d.pth", "a5fe301d"),
}

_CHUNK = 1 << 20


def cache_dir() -> str:
  return os.path.expanduser(os.environ.get("DEIT_JAX_CACHE") or "~/.cache/deit_jax")


def is_pretrained_name(value: str) -> bool:
  """Whether ``value`` names published weights (and is not also a path on disk)."""
  return value in WEIGHTS and not os.path.exists(value)


def _entry(name: str) -> tuple[str, str]:
  if name not in WEIGHTS:
    raise PretrainedError(f"no pretrained weights named {name!r} (known: "
                          f"{', '.join(sorted(WEIGHTS))})")
  url, sha256 = WEIGHTS[name]
  base = os.environ.get("DEIT_JAX_WEIGHTS_URL")
  if base:
    url = base.rstrip("/") + "/" + url.rsplit("/", 1)[1]
  return url, sha256


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(_CHUNK), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _check(path: str, url: str, expected: str) -> str:
  """The file's SHA-256 if it passes ``expected``; else the file is deleted and refused."""
  actual = _sha256(path)
  if not actual.startswith(expected.lower()):
    os.remove(path)
    raise PretrainedError(f"checksum mismatch for {url}: SHA-256 {actual[:16]}..., expected "
                          f"{expected[:16]}{'...' if len(expected) > 16 else ''}; the file "
                          "was deleted, nothing was cached")
  return actual


def download(name: str, timeout_s: float = 60.0) -> str:
  """Path of the verified weights file of ``name``, downloading it if not cached."""
  url, expected = _entry(name)
  path = os.path.join(cache_dir(), "downloads", url.rsplit("/", 1)[1])
  if os.path.isfile(path):
    return path
  os.makedirs(os.path.dirname(path), exist_ok=True)
  partial = path + ".partial"
  logging.warning("downloading %s to %s", url, path)
  try:
    with urllib.request.urlopen(url, timeout=timeout_s) as response, open(partial, "wb") as f:
      shutil.copyfileobj(response, f, _CHUNK)
  except (urllib.error.URLError, OSError) as e:
    if os.path.exists(partial):
      os.remove(partial)
    reason = getattr(e, "reason", None) or e
    raise PretrainedError(f"cannot download {url} ({reason}); without network, fetch it "
                          f"elsewhere and put it at {path}") from None
  _check(partial, url, expected)
  os.replace(partial, path)
  return path


SOURCE_KEY = "__source_sha256__"  # in a parameter file: the download it was converted from


def params_file(name: str) -> str:
  """The flat parameter file of ``name`` (downloaded and converted on first use)."""
  url, expected = _entry(name)
  out = os.path.join(cache_dir(), "params", name + ".npz")
  if os.path.isfile(out) and _source(out).startswith(expected.lower()):
    return out
  weights = download(name)
  digest = _check(weights, url, expected)  # a file put there by hand is verified too
  state = read_state_dict(weights)
  try:
    check_fits(name, state)  # before anything is cached
  except ConversionError as e:
    raise ConversionError(f"{weights} -> {name}: {e}") from None
  os.makedirs(os.path.dirname(out), exist_ok=True)
  partial = out + ".partial"
  with open(partial, "wb") as f:
    np.savez(f, **state, **{SOURCE_KEY: np.array(digest)})
  os.replace(partial, out)
  return out


def _source(path: str) -> str:
  """The SHA-256 of the download a parameter file was converted from ("" if unreadable)."""
  try:
    with np.load(path) as f:
      return str(f[SOURCE_KEY]) if SOURCE_KEY in f.files else ""
  except (OSError, ValueError):  # cut short or not an npz: convert again
    return ""


def load(name: str, *, seed: int = 0, **overrides: Any):
  """``registry.create_model(name, seed=seed, **overrides)`` with the published weights.

  Another ``num_classes`` keeps freshly initialised heads (seeded by ``seed``); another
  ``img_size`` resamples the position embedding, as ``deit_jax.convert`` does.
  """
  with np.load(params_file(name)) as f:
    state = {key: f[key] for key in f.files if key != SOURCE_KEY}
  model = registry.create_model(name, seed=seed, **overrides)
  apply_state_dict(model, state)
  return model
