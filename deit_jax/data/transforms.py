"""Per-example image transforms of the DeiT recipe in TensorFlow (for tf.data).

Geometry follows torchvision/timm exactly (RandomResizedCrop's 10 attempts and centre-crop
fallback, timm's eval resize + centre crop, timm's RandomErasing); resampling uses
tf.image's bicubic with antialiasing, the closest match to PIL's bicubic that torchvision
uses. Randomness is stateless: every random transform takes a ``seed`` tensor of shape
(2,) int32/int64, so a batch stream is a pure function of (seed, example position) and a
restarted pipeline replays it exactly.
"""

from __future__ import annotations

import math

import tensorflow as tf

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_ATTEMPTS = 10


def _uniform(seed, shape, low, high):
  return tf.random.stateless_uniform(shape, seed=seed, minval=low, maxval=high,
                                     dtype=tf.float32)


def _randint_inclusive(seed, high):
  """Uniform integer in [0, high] (high >= 0), like Python's random.randint(0, high)."""
  high = tf.cast(high, tf.int32)
  return tf.random.stateless_uniform((), seed=seed, minval=0, maxval=high + 1, dtype=tf.int32)


def random_resized_crop_window(height, width, seed, scale=(0.08, 1.0),
                               ratio=(3 / 4, 4 / 3)) -> tf.Tensor:
  """torchvision ``RandomResizedCrop.get_params``: returns [top, left, crop_h, crop_w].

  Up to 10 (area, log-aspect) draws; the first crop that fits wins; otherwise the
  centre crop at the closest allowed aspect ratio.
  """
  seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 4)
  h_f, w_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
  area = h_f * w_f
  target_area = area * _uniform(seeds[0], (_ATTEMPTS,), scale[0], scale[1])
  aspect = tf.exp(_uniform(seeds[1], (_ATTEMPTS,), math.log(ratio[0]), math.log(ratio[1])))
  # Python's round() is round-half-even, like tf.round.
  w = tf.cast(tf.round(tf.sqrt(target_area * aspect)), tf.int32)
  h = tf.cast(tf.round(tf.sqrt(target_area / aspect)), tf.int32)
  fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
  first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)

  def sampled():
    ch, cw = h[first], w[first]
    top = _randint_inclusive(seeds[2], height - ch)
    left = _randint_inclusive(seeds[3], width - cw)
    return tf.stack([top, left, ch, cw])

  def fallback():
    in_ratio = w_f / h_f
    cw = tf.where(in_ratio < ratio[0], width,
                  tf.where(in_ratio > ratio[1],
                           tf.cast(tf.round(h_f * ratio[1]), tf.int32), width))
    ch = tf.where(in_ratio < ratio[0], tf.cast(tf.round(w_f / ratio[0]), tf.int32), height)
    return tf.stack([(height - ch) // 2, (width - cw) // 2, ch, cw])

  return tf.cond(tf.reduce_any(fits), sampled, fallback)


def resize(image: tf.Tensor, size) -> tf.Tensor:
  """Bicubic resize (antialiased when shrinking, like PIL) to float32 in the input's range.

  tf's antialiased kernel is ~4x slower than plain bicubic and only differs when
  shrinking, so enlargements take the fast path.
  """
  image = tf.cast(image, tf.float32)
  size = tf.convert_to_tensor(size, tf.int32)
  shrinks = tf.reduce_any(tf.shape(image)[:2] > size)
  return tf.cond(
      shrinks,
      lambda: tf.image.resize(image, size, method="bicubic", antialias=True),
      lambda: tf.image.resize(image, size, method="bicubic", antialias=False))


def eval_resize_center_crop(image: tf.Tensor, size: int, crop_pct: float = 0.875) -> tf.Tensor:
  """timm eval: shorter side to floor(size / crop_pct) (bicubic), centre crop size x size."""
  scale_size = int(math.floor(size / crop_pct))
  shape = tf.shape(image)
  h, w = shape[0], shape[1]
  short, long = tf.minimum(h, w), tf.maximum(h, w)
  # torchvision Resize(int): the long side is int(scale_size * long / short).
  new_long = tf.cast(tf.cast(scale_size, tf.float64) * tf.cast(long, tf.float64)
                     / tf.cast(short, tf.float64), tf.int32)
  new_h = tf.where(h <= w, scale_size, new_long)
  new_w = tf.where(h <= w, new_long, scale_size)
  resized = resize(image, tf.stack([new_h, new_w]))
  # torchvision CenterCrop: offsets int(round((dim - size) / 2)).
  top = tf.cast(tf.round(tf.cast(new_h - size, tf.float32) / 2.0), tf.int32)
  left = tf.cast(tf.round(tf.cast(new_w - size, tf.float32) / 2.0), tf.int32)
  return resized[top:top + size, left:left + size]


def normalize(image: tf.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> tf.Tensor:
  """(image / 255 - mean) / std for a float image in 0..255."""
  mean = tf.constant(mean, tf.float32)
  std = tf.constant(std, tf.float32)
  return (tf.cast(image, tf.float32) / 255.0 - mean) / std


def random_erasing(image: tf.Tensor, seed, probability: float = 0.25,
                   min_area: float = 0.02, max_area: float = 1 / 3,
                   min_aspect: float = 0.3) -> tf.Tensor:
  """timm ``RandomErasing(mode="pixel", max_count=1)`` on a normalised HWC float image.

  With ``probability``, up to 10 attempts draw an area fraction in [min_area, max_area]
  and a log-uniform aspect in [min_aspect, 1/min_aspect]; the first box strictly smaller
  than the image is filled with per-pixel N(0, 1) noise.
  """
  seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 6)
  shape = tf.shape(image)
  height, width = shape[0], shape[1]
  area = tf.cast(height * width, tf.float32)
  target_area = _uniform(seeds[0], (_ATTEMPTS,), min_area, max_area) * area
  log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
  aspect = tf.exp(_uniform(seeds[1], (_ATTEMPTS,), *log_aspect))
  h = tf.cast(tf.round(tf.sqrt(target_area * aspect)), tf.int32)
  w = tf.cast(tf.round(tf.sqrt(target_area / aspect)), tf.int32)
  fits = (w < width) & (h < height)
  first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
  apply = (_uniform(seeds[2], (), 0.0, 1.0) < probability) & tf.reduce_any(fits)
  eh, ew = h[first], w[first]

  def erase():
    top = _randint_inclusive(seeds[3], tf.maximum(height - eh, 0))
    left = _randint_inclusive(seeds[4], tf.maximum(width - ew, 0))
    # Noise only for the box, padded into place: the image is left untouched elsewhere.
    noise = tf.random.stateless_normal(tf.stack([eh, ew, shape[2]]), seed=seeds[5],
                                       dtype=image.dtype)
    paddings = [[top, height - top - eh], [left, width - left - ew], [0, 0]]
    inside = tf.pad(tf.ones(tf.stack([eh, ew, 1]), tf.bool), paddings[:2] + [[0, 0]])
    return tf.where(inside, tf.pad(noise, paddings), image)

  return tf.cond(apply, erase, lambda: image)
