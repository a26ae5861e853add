"""Export one of our checkpoints as a timm state dict (the inverse of ``deit_jax.convert``).

    python -m deit_jax.export CKPT --out=model.safetensors [--ema] [--overwrite]

CKPT is a training workdir (its latest committed checkpoint), one orbax step directory or a
model directory; ``--ema`` takes a training checkpoint's EMA weights. CKPT and ``--out`` may
be local or ``gs://``. The suffix of ``--out``
picks the format: ``.safetensors`` (the timm/HF default; the timm model name and keyword
arguments go into its metadata) or ``.pth``/``.pt`` (a plain ``torch.save`` of the tensors,
loadable with ``weights_only=True``). The command prints the exact timm call, e.g.::

    model = timm.create_model("deit_tiny_patch16_224", num_classes=10, img_size=28,
                              patch_size=4, in_chans=1, embed_dim=96, depth=6)
    model.load_state_dict(state_dict, strict=True)

The key table is ``deit_jax.convert``'s (``deit_jax.models.torch_weights``), applied
in reverse, so a model family gets
export by getting import. Families without a timm counterpart (the CIFAR ResNets) are
refused with one line.
"""

from __future__ import annotations

import io
import json
import sys
from typing import Any

import numpy as np
from absl import flags, logging

from deit_jax import checkpoint, cli, files, torch_stack
from deit_jax.errors import ConfigError, OutputExistsError, UserError
from deit_jax.models import model_config
from deit_jax.models.torch_weights import timm_family, to_state_dict

_FORMATS = (".safetensors", ".pth", ".pt")


def state_dict(model) -> dict[str, np.ndarray]:
  """``model``'s parameters under timm's keys and layouts (float32, C-contiguous)."""
  return to_state_dict(model)


def timm_kwargs(model, name: str, overrides: dict[str, Any]) -> dict[str, Any]:
  """Keyword arguments that make ``timm.create_model(name, **kwargs)`` this architecture:
  num_classes always, the others where our config differs from the registry default."""
  family = timm_family(model)
  default, ours = model_config(name), model_config(name, **overrides)
  kwargs = {"num_classes": model.config.num_classes}
  for key in family.timm_kwargs:
    if key != "num_classes" and ours.get(key, default.get(key)) != default.get(key):
      kwargs[key] = ours[key]
  return kwargs


def timm_call(name: str, kwargs: dict[str, Any]) -> str:
  args = "".join(f", {k}={v!r}" for k, v in kwargs.items())
  return f"timm.create_model({name!r}{args})"


def write(path: str, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
  """Writes ``tensors`` in the suffix's format, atomically, local or ``gs://``
  (``deit_jax.files``)."""
  # safetensors and torch are optional (the [torch] extra): imported only when needed.
  if path.endswith(".safetensors"):
    from safetensors.numpy import save
    data = save(tensors, metadata=metadata)
  else:
    torch = torch_stack.import_torch()
    buffer = io.BytesIO()
    torch.save({k: torch.from_numpy(v) for k, v in tensors.items()}, buffer)
    data = buffer.getvalue()
  files.write_bytes(path, data)


def export(checkpoint_path: str, out: str, *, ema: bool = False,
           overwrite: bool = False) -> tuple[str, dict[str, Any]]:
  """Writes the checkpoint's weights to ``out``; returns (timm name, timm kwargs).

  Raises a ``UserError`` (ConfigError, ConversionError, OutputExistsError...) before
  writing anything.
  """
  if not out.endswith(_FORMATS):
    raise ConfigError(f"--out {out}: the suffix picks the format, one of "
                      f"{', '.join(_FORMATS)}")
  if files.exists(out) and not overwrite:
    raise OutputExistsError(f"{out} already exists (pass --overwrite to replace it)")
  model, info = checkpoint.load_trained_model(checkpoint_path, ema=ema)
  kwargs = timm_kwargs(model, info["name"], info["overrides"])  # refuses non-timm families
  tensors = state_dict(model)
  write(out, tensors, {"format": "pt", "timm_model": info["name"],
                       "timm_kwargs": json.dumps(kwargs), "source": info["path"],
                       "step": str(info["step"]), "ema": str(ema)})
  return info["name"], kwargs


def _define_flags(values: flags.FlagValues) -> None:
  d = dict(flag_values=values)
  flags.DEFINE_string("out", None, "output file: .safetensors, .pth or .pt", **d)
  flags.DEFINE_bool("ema", False, "export a training checkpoint's EMA weights", **d)
  flags.DEFINE_bool("overwrite", False, "replace an existing --out", **d)


def main(argv=None) -> int:
  """``python -m deit_jax.export CKPT --out=FILE``: 0, or 2 with one line ``error: ...``
  on bad input."""
  argv = sys.argv[1:] if argv is None else argv
  logging.set_verbosity(logging.WARNING)  # no backend/orbax chatter around the one line
  try:
    values, positional = cli.parse_argv(_define_flags, argv, "python -m deit_jax.export")
    if len(positional) != 1 or not values.out:
      raise UserError("usage: python -m deit_jax.export CKPT "
                      "--out=FILE.safetensors|FILE.pth [--ema] [--overwrite]")
    name, kwargs = export(positional[0], values.out, ema=values.ema,
                          overwrite=values.overwrite)
  except cli.USER_ERRORS as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    return 2
  print(f"wrote {values.out}; load it with\n"
        f"  model = {timm_call(name, kwargs)}\n"
        "  model.load_state_dict(state_dict, strict=True)")
  return 0


if __name__ == "__main__":
  logging.use_absl_handler()
  sys.exit(main())
