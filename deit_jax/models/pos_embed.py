"""Position-embedding resampling for another input resolution, as the official DeiT
fine-tuning code does it (torch bicubic interpolation of the patch grid, prefix tokens
kept): used by weight conversion and by fine-tuning from a checkpoint of another size.
"""

from __future__ import annotations

import numpy as np

from deit_jax.errors import ConversionError


def _torch_bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out, in) weights of torch's bicubic resize, align_corners=False, A=-0.75, no antialias."""
  a = -0.75
  scale = in_size / out_size
  weights = np.zeros((out_size, in_size), np.float64)
  for i in range(out_size):
    src = (i + 0.5) * scale - 0.5
    base = int(np.floor(src))
    t = src - base
    w = [((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
         ((a + 2) * t - (a + 3)) * t * t + 1,
         ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1]
    w.append(1.0 - sum(w))
    for offset, wk in zip((-1, 0, 1, 2), w):
      weights[i, min(max(base + offset, 0), in_size - 1)] += wk
  return weights


def resample_pos_embed(pos_embed: np.ndarray, num_prefix_tokens: int,
                       new_grid: int) -> np.ndarray:
  """Resizes the patch rows of a (1, prefix + g*g, D) embedding to new_grid x new_grid."""
  prefix, patches = pos_embed[:, :num_prefix_tokens], pos_embed[0, num_prefix_tokens:]
  old_grid = int(round(np.sqrt(patches.shape[0])))
  if old_grid * old_grid != patches.shape[0]:
    raise ConversionError(f"pos_embed has {patches.shape[0]} patch rows, not a square grid")
  m = _torch_bicubic_matrix(old_grid, new_grid)
  grid = patches.reshape(old_grid, old_grid, -1).astype(np.float64)
  resized = np.einsum("yi,xj,ijd->yxd", m, m, grid).reshape(1, new_grid * new_grid, -1)
  return np.concatenate([prefix, resized.astype(pos_embed.dtype)], axis=1)
