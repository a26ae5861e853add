"""RandAugment ``rand-m9-mstd0.5-inc1`` (timm, as the DeiT recipe uses it) in TensorFlow.

Per image: 2 ops drawn uniformly *with* replacement from timm's "increasing" set of 15;
each op fires with probability 0.5 at a magnitude drawn from N(9, 0.5) clipped to
[0, 10]; signed ops (rotate, shear, translate, enhance) flip sign with probability 0.5.
Level -> argument maps, fill colour (the ImageNet mean in 0..255) and PIL's pixel
arithmetic (uint8 after every op, PIL's grayscale weights, Equalize/AutoContrast LUTs,
the SMOOTH kernel of Sharpness) follow timm/PIL. One deviation, by necessity: geometric
ops resample bilinearly (tf's projective transform has no bicubic), where the recipe's
PIL path uses bicubic.

Images are HWC float32 in 0..255 (integral values); randomness is stateless from ``seed``.
"""

from __future__ import annotations

import dataclasses
import math

import tensorflow as tf

from deit_jax.errors import ConfigError

INCREASING_OPS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing",
    "SolarizeIncreasing", "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing",
    "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel",
    "TranslateYRel",
)
_LEVEL_DENOM = 10.0


@dataclasses.dataclass(frozen=True)
class RandAugmentConfig:
  num_layers: int = 2
  magnitude: float = 9.0
  magnitude_std: float = 0.5
  prob: float = 0.5                       # per-op application probability
  fill: tuple[int, int, int] = (124, 116, 104)  # round(255 * ImageNet mean), as timm
  translate_pct: float = 0.45

  @classmethod
  def from_string(cls, spec: str, fill=(124, 116, 104)) -> "RandAugmentConfig":
    """Parses timm's ``rand-m9-mstd0.5-inc1`` style strings (only the increasing set)."""
    parts = spec.split("-")
    if parts[0] != "rand":
      raise ValueError(f"RandAugment spec must start with 'rand', got {spec!r}")
    values = {"fill": tuple(fill)}
    for part in parts[1:]:
      key = part.rstrip("0123456789.")
      number = part[len(key):]
      try:
        if key == "m":
          values["magnitude"] = float(number)
        elif key == "n":
          values["num_layers"] = int(number)
        elif key == "mstd":
          values["magnitude_std"] = float(number)
        elif key == "p":
          values["prob"] = float(number)
        elif key == "inc":
          if int(number) != 1:
            raise ValueError("only the increasing op set (inc1) is implemented")
        else:
          raise ValueError(f"unknown section {part!r}")
      except ValueError as e:
        raise ConfigError(f"bad RandAugment spec {spec!r}: {e}") from None
    return cls(**values)


def _to_uint8_range(image):
  return tf.clip_by_value(tf.round(image), 0.0, 255.0)


def _grayscale(image):
  # PIL's RGB -> L: (R*299 + G*587 + B*114) / 1000, rounded.
  gray = tf.tensordot(image, tf.constant([0.299, 0.587, 0.114]), axes=[[2], [0]])
  return tf.round(gray)[..., None]


def _blend(degenerate, image, factor):
  # PIL Image.blend(degenerate, image, factor), clipped to uint8.
  return _to_uint8_range(degenerate + factor * (image - degenerate))


def auto_contrast(image):
  lo = tf.reduce_min(image, axis=[0, 1], keepdims=True)
  hi = tf.reduce_max(image, axis=[0, 1], keepdims=True)
  scale = 255.0 / tf.maximum(hi - lo, 1.0)
  stretched = tf.clip_by_value(tf.floor(image * scale - lo * scale), 0.0, 255.0)
  return tf.where(hi > lo, stretched, image)


def equalize(image):
  """PIL ImageOps.equalize, all three channels with one histogram pass."""
  values = tf.cast(image, tf.int32) + tf.constant([0, 256, 512])
  hist = tf.reshape(tf.math.bincount(tf.reshape(values, [-1]), minlength=768, maxlength=768),
                    (3, 256))
  # PIL drops the count of the last non-empty bin from the total before dividing.
  last_nonzero = 255 - tf.argmax(tf.cast(tf.reverse(hist, [1]) > 0, tf.int32), axis=1,
                                 output_type=tf.int32)
  last_count = tf.gather(hist, last_nonzero, batch_dims=1)
  step = (tf.reduce_sum(hist, axis=1) - last_count) // 255
  safe_step = tf.maximum(step, 1)[:, None]
  lut = tf.clip_by_value((tf.cumsum(hist, axis=1, exclusive=True) + safe_step // 2) // safe_step,
                         0, 255)
  lut = tf.where(step[:, None] > 0, lut, tf.range(256)[None, :])  # flat channel: identity
  return tf.cast(tf.gather(tf.reshape(lut, [-1]), values), tf.float32)


def invert(image):
  return 255.0 - image


def posterize(image, bits):
  """Keeps the ``bits`` most significant bits (x & ~(2^(8-bits) - 1))."""
  quantum = tf.pow(2.0, tf.cast(8 - bits, tf.float32))
  return tf.where(bits >= 8, image, tf.floor(image / quantum) * quantum)


def solarize(image, threshold):
  return tf.where(image < threshold, image, 255.0 - image)


def solarize_add(image, addition, threshold=128.0):
  return tf.where(image < threshold, tf.minimum(image + addition, 255.0), image)


def color(image, factor):
  return _blend(_grayscale(image), image, factor)


def contrast(image, factor):
  mean = tf.floor(tf.reduce_mean(_grayscale(image)) + 0.5)  # PIL: int(mean + 0.5)
  return _blend(tf.fill(tf.shape(image), mean), image, factor)


def brightness(image, factor):
  return _blend(tf.zeros_like(image), image, factor)


def sharpness(image, factor):
  """PIL ImageEnhance.Sharpness: blend with the SMOOTH-filtered image (borders unchanged)."""
  kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
  smooth = tf.nn.depthwise_conv2d(image[None], kernel, [1, 1, 1, 1], "VALID")[0]
  smooth = tf.round(smooth)
  degenerate = tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])
  interior = tf.pad(tf.ones_like(smooth), [[1, 1], [1, 1], [0, 0]]) > 0
  degenerate = tf.where(interior, degenerate, image)
  return _blend(degenerate, image, factor)


def _affine(image, matrix, fill):
  """PIL Image.transform(AFFINE, (a, b, c, d, e, f)): output (x, y) samples input
  (a*x + b*y + c, d*x + e*y + f), pixel centres at +0.5; outside filled with ``fill``."""
  a, b, c, d, e, f = tf.unstack(tf.cast(matrix, tf.float32))
  # tf's transform maps output coordinates to input coordinates at pixel corners; shift by
  # half a pixel on both sides to use PIL's centre convention.
  c2 = c + 0.5 * (a + b) - 0.5
  f2 = f + 0.5 * (d + e) - 0.5
  transform = tf.stack([a, b, c2, d, e, f2, 0.0, 0.0])[None]
  # Warping (image - fill) with zeros outside and adding fill back is the same as
  # filling with ``fill`` (bilinear weights sum to one), with no mask channel to carry.
  fill = tf.constant(fill, tf.float32)
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=(image - fill)[None], transforms=transform, output_shape=tf.shape(image)[:2],
      fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")[0]
  return _to_uint8_range(out + fill)


def rotate(image, degrees, fill):
  """PIL Image.rotate(degrees) (counter-clockwise) about the image centre."""
  h = tf.cast(tf.shape(image)[0], tf.float32)
  w = tf.cast(tf.shape(image)[1], tf.float32)
  angle = -degrees * math.pi / 180.0
  cos, sin = tf.cos(angle), tf.sin(angle)
  cx, cy = w / 2.0, h / 2.0
  # PIL: matrix (cos, sin, 0, -sin, cos, 0) applied about the centre.
  c = cos * (-cx) + sin * (-cy) + cx
  f = -sin * (-cx) + cos * (-cy) + cy
  return _affine(image, tf.stack([cos, sin, c, -sin, cos, f]), fill)


def shear_x(image, factor, fill):
  return _affine(image, tf.stack([1.0, factor, 0.0, 0.0, 1.0, 0.0]), fill)


def shear_y(image, factor, fill):
  return _affine(image, tf.stack([1.0, 0.0, 0.0, factor, 1.0, 0.0]), fill)


def translate_x(image, pixels, fill):
  return _affine(image, tf.stack([1.0, 0.0, pixels, 0.0, 1.0, 0.0]), fill)


def translate_y(image, pixels, fill):
  return _affine(image, tf.stack([1.0, 0.0, 0.0, 0.0, 1.0, pixels]), fill)


def apply_op(image, op_index, magnitude, negate, config: RandAugmentConfig):
  """Applies INCREASING_OPS[op_index] at ``magnitude`` (0..10); ``negate`` flips signed args."""
  op_index = tf.convert_to_tensor(op_index, tf.int32)
  level = tf.convert_to_tensor(magnitude, tf.float32) / _LEVEL_DENOM
  sign = tf.where(tf.convert_to_tensor(negate, tf.bool), -1.0, 1.0)
  fill = config.fill
  w = tf.cast(tf.shape(image)[1], tf.float32)
  h = tf.cast(tf.shape(image)[0], tf.float32)
  enhance = tf.maximum(0.1, 1.0 + sign * level * 0.9)
  branches = [
      lambda: auto_contrast(image),
      lambda: equalize(image),
      lambda: invert(image),
      lambda: rotate(image, sign * level * 30.0, fill),
      lambda: posterize(image, 4 - tf.cast(tf.floor(level * 4), tf.int32)),
      lambda: solarize(image, 256.0 - tf.minimum(256.0, tf.floor(level * 256.0))),
      lambda: solarize_add(image, tf.minimum(128.0, tf.floor(level * 110.0))),
      lambda: color(image, enhance),
      lambda: contrast(image, enhance),
      lambda: brightness(image, enhance),
      lambda: sharpness(image, enhance),
      lambda: shear_x(image, sign * level * 0.3, fill),
      lambda: shear_y(image, sign * level * 0.3, fill),
      lambda: translate_x(image, sign * level * config.translate_pct * w, fill),
      lambda: translate_y(image, sign * level * config.translate_pct * h, fill),
  ]
  assert len(branches) == len(INCREASING_OPS)
  return tf.ensure_shape(tf.switch_case(op_index, branches), image.shape)


def rand_augment(image, seed, config: RandAugmentConfig = RandAugmentConfig()):
  """``num_layers`` random ops, each applied with ``prob`` at a jittered magnitude.

  The input is rounded and clipped to 0..255 first (a bicubic resize overshoots), as PIL
  would hold it.
  """
  image = _to_uint8_range(image)
  seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 4)
  n = config.num_layers
  ops = tf.random.stateless_uniform([n], seeds[0], 0, len(INCREASING_OPS), dtype=tf.int32)
  fire = tf.random.stateless_uniform([n], seeds[1]) < config.prob
  magnitude = config.magnitude + config.magnitude_std * tf.random.stateless_normal([n], seeds[2])
  magnitude = tf.clip_by_value(magnitude, 0.0, _LEVEL_DENOM)
  negate = tf.random.stateless_uniform([n], seeds[3]) > 0.5
  for i in range(n):
    image = tf.cond(fire[i], lambda: apply_op(image, ops[i], magnitude[i], negate[i], config),
                    lambda: image)
  return image
