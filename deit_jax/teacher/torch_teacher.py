"""A timm model in PyTorch as teacher (optional ``torch`` extra): the RegNetY-16GF
(``regnety_160``) whose logits the DeiT ImageNet recipe distils from.

Images arrive through our eval transform (normalised NHWC float32) and are handed to
PyTorch as NCHW; the model runs in eval mode under ``torch.inference_mode`` on CUDA when
available, else on the CPU.
"""

from __future__ import annotations

import hashlib

import numpy as np

from deit_jax.errors import ConversionError
from deit_jax.models.torch_weights import read_state_dict
from deit_jax.teacher.precompute import LogitsFn


def timm_logits_fn(name: str, weights: str | None, *, num_classes: int, in_chans: int,
                   device: str | None = None) -> tuple[LogitsFn, dict]:
  """(logits_fn, description) for timm model ``name`` with the user's ``weights`` file
  (.pth/.safetensors, official or timm layout; None = random init, for tests)."""
  try:
    import timm
    import torch
  except ImportError as e:
    raise ConversionError("a timm teacher needs PyTorch and timm: "
                          "pip install 'deit_jax[torch]'") from e

  try:
    model = timm.create_model(name, pretrained=False, num_classes=num_classes,
                              in_chans=in_chans)
  except RuntimeError as e:  # timm: "Unknown model (...)"
    raise ConversionError(f"timm teacher: {e}") from e
  digest = hashlib.sha256()
  if weights:
    state = read_state_dict(weights)
    try:
      model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v))
                             for k, v in state.items()})
    except RuntimeError as e:
      raise ConversionError(f"{weights} does not fit timm {name} with {num_classes} classes: "
                       f"{str(e).splitlines()[0]}") from e
  for key, value in sorted(model.state_dict().items()):
    digest.update(key.encode())
    digest.update(value.detach().cpu().numpy().tobytes())
  device = device or ("cuda" if torch.cuda.is_available() else "cpu")
  model = model.eval().to(device)

  def logits_fn(images: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device)
    with torch.inference_mode():
      return model(x).float().cpu().numpy()

  return logits_fn, {"name": f"timm:{name}", "checkpoint": weights, "sha256": digest.hexdigest(),
                     "framework": "torch"}
