"""Convert official DeiT / timm PyTorch weights into a model directory that evaluation,
fine-tuning (``init_from``) and teachers restore (``deit_jax.models.torch_weights``).

    python -m deit_jax.convert deit_base_distilled_patch16_224-df68dfff.pth \\
        --model=deit_base_distilled_patch16_224 --out=/ckpt/deit_b_dist \\
        [--num_classes=N] [--img_size=384] [--overwrite]
"""

from __future__ import annotations

import os
import sys

from absl import flags, logging

from deit_jax import checkpoint, cli
from deit_jax.errors import ConversionError, UserError
from deit_jax.models.pos_embed import resample_pos_embed
from deit_jax.models.torch_weights import (apply_state_dict, load_torch_checkpoint,
                                           read_state_dict)

__all__ = ["ConversionError", "apply_state_dict", "load_torch_checkpoint", "main",
           "read_state_dict", "resample_pos_embed"]


def _define_flags(values: flags.FlagValues) -> None:
  d = dict(flag_values=values)
  flags.DEFINE_string("model", None, "registry name, e.g. deit_base_distilled_patch16_224",
                      **d)
  flags.DEFINE_string("out", None, "output directory (local or gs://)", **d)
  flags.DEFINE_integer("num_classes", None, "re-initialise the heads for N classes", **d)
  flags.DEFINE_integer("img_size", None, "fine-tune resolution (resamples pos_embed)", **d)
  flags.DEFINE_bool("overwrite", False, "replace an existing --out", **d)


def main(argv=None) -> int:
  """``python -m deit_jax.convert WEIGHTS --model=NAME --out=DIR``: 0, or 2 with one line
  ``error: ...`` on bad input."""
  argv = sys.argv[1:] if argv is None else argv
  try:
    values, positional = cli.parse_argv(_define_flags, argv, "python -m deit_jax.convert")
    if len(positional) != 1 or not values.model or not values.out:
      raise UserError("usage: python -m deit_jax.convert WEIGHTS --model=NAME --out=DIR "
                      "[--num_classes=N] [--img_size=S] [--overwrite]")
    src = positional[0]
    overrides = {k: v for k, v in (("num_classes", values.num_classes),
                                   ("img_size", values.img_size)) if v is not None}
    model = load_torch_checkpoint(src, values.model, **overrides)
    out = checkpoint.save_model(values.out, model, name=values.model, overrides=overrides,
                                source=os.path.abspath(src), overwrite=values.overwrite)
  except cli.USER_ERRORS as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {values.model} ({checkpoint.count_params(model):,} parameters) to {out}")
  return 0


if __name__ == "__main__":
  logging.use_absl_handler()
  sys.exit(main())
