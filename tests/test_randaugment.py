"""RandAugment ops against timm's PIL implementations, and the policy's statistics."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf

from conftest import require
from deit_jax.data import randaugment as ra

timm_aa = require("timm.data.auto_augment")
Image = require("PIL.Image")

FILL = (124, 116, 104)


def _photo_like(h=48, w=64, seed=0):
  rng = np.random.RandomState(seed)
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  img = np.stack([np.sin(xx / (3 + c) + c) * 60 + np.cos(yy / (4 + c)) * 40 + 120
                  for c in range(3)], -1)
  img += rng.randn(h, w, 3) * 12
  return np.clip(img, 0, 255).astype(np.uint8)


def _ours(fn, image, *args):
  return fn(tf.constant(image, tf.float32), *args).numpy()


POINT_OPS = [
    ("auto_contrast", lambda im: timm_aa.auto_contrast(im), lambda x: ra.auto_contrast(x)),
    ("equalize", lambda im: timm_aa.equalize(im), lambda x: ra.equalize(x)),
    ("invert", lambda im: timm_aa.invert(im), lambda x: ra.invert(x)),
    ("posterize1", lambda im: timm_aa.posterize(im, 1), lambda x: ra.posterize(x, 1)),
    ("posterize4", lambda im: timm_aa.posterize(im, 4), lambda x: ra.posterize(x, 4)),
    ("solarize", lambda im: timm_aa.solarize(im, 26), lambda x: ra.solarize(x, 26.0)),
    ("solarize_add", lambda im: timm_aa.solarize_add(im, 99), lambda x: ra.solarize_add(x, 99.0)),
]
ENHANCE_OPS = [
    ("color", timm_aa.color, ra.color),
    ("contrast", timm_aa.contrast, ra.contrast),
    ("brightness", timm_aa.brightness, ra.brightness),
    ("sharpness", timm_aa.sharpness, ra.sharpness),
]


@pytest.mark.parametrize("name, pil_op, tf_op", POINT_OPS, ids=[o[0] for o in POINT_OPS])
def test_point_ops_equal_pil(name, pil_op, tf_op):
  image = _photo_like()
  if name == "auto_contrast":
    image = (image * 0.5 + 40).astype(np.uint8)  # leave room to stretch
  expected = np.asarray(pil_op(Image.fromarray(image)), np.float32)
  got = _ours(lambda x: tf_op(x), image)
  assert np.abs(got - expected).max() <= 1.0, name


@pytest.mark.parametrize("name, pil_op, tf_op", ENHANCE_OPS, ids=[o[0] for o in ENHANCE_OPS])
@pytest.mark.parametrize("factor", [0.19, 1.81])
def test_enhance_ops_match_pil(name, pil_op, tf_op, factor):
  image = _photo_like()
  expected = np.asarray(pil_op(Image.fromarray(image), factor), np.float32)
  got = _ours(lambda x: tf_op(x, factor), image)
  diff = np.abs(got - expected)
  assert diff.mean() < 0.6 and diff.max() <= 3.0, (name, diff.mean(), diff.max())


GEOMETRIC = [
    ("rotate", lambda im, kw: timm_aa.rotate(im, 27.0, **kw), lambda x: ra.rotate(x, 27.0, FILL)),
    ("shear_x", lambda im, kw: timm_aa.shear_x(im, -0.27, **kw),
     lambda x: ra.shear_x(x, -0.27, FILL)),
    ("shear_y", lambda im, kw: timm_aa.shear_y(im, 0.27, **kw),
     lambda x: ra.shear_y(x, 0.27, FILL)),
    ("translate_x", lambda im, kw: timm_aa.translate_x_rel(im, 0.405, **kw),
     lambda x: ra.translate_x(x, 0.405 * 64, FILL)),
    ("translate_y", lambda im, kw: timm_aa.translate_y_rel(im, -0.405, **kw),
     lambda x: ra.translate_y(x, -0.405 * 48, FILL)),
]


@pytest.mark.parametrize("name, pil_op, tf_op", GEOMETRIC, ids=[o[0] for o in GEOMETRIC])
def test_geometric_ops_match_pil_geometry(name, pil_op, tf_op):
  image = _photo_like()
  # Same resampling filter as ours (bilinear) to check the geometry and the fill exactly.
  kwargs = dict(fillcolor=FILL, resample=Image.BILINEAR)
  expected = np.asarray(pil_op(Image.fromarray(image), kwargs), np.float32)
  got = _ours(tf_op, image)
  diff = np.abs(got - expected)
  # Interior pixels agree to rounding; only the antialiased border band may differ.
  assert np.median(diff) <= 1.0 and np.mean(diff > 4) < 0.06, (name, diff.mean())


def test_policy_statistics():
  image = tf.constant(_photo_like(), tf.float32)
  config = ra.RandAugmentConfig.from_string("rand-m9-mstd0.5-inc1")
  assert config == ra.RandAugmentConfig()
  changed = [bool(np.any(ra.rand_augment(image, [i, 3], config).numpy() != image.numpy()))
             for i in range(200)]
  # P(no op fires) = 0.25; a few fired ops are no-ops on this image (e.g. tiny rotations never,
  # but posterize to 4 bits always changes it), so ~75% of images change.
  assert np.mean(changed) == pytest.approx(0.75, abs=0.08)
  out = ra.rand_augment(image, [5, 5], config).numpy()
  assert out.shape == (48, 64, 3) and out.min() >= 0 and out.max() <= 255
  np.testing.assert_array_equal(out, ra.rand_augment(image, [5, 5], config).numpy())


def test_every_op_runs_at_extreme_magnitudes():
  image = tf.constant(_photo_like(), tf.float32)
  config = ra.RandAugmentConfig()
  for op in range(len(ra.INCREASING_OPS)):
    for magnitude in (0.0, 10.0):
      out = ra.apply_op(image, op, magnitude, False, config).numpy()
      assert out.shape == image.shape and np.isfinite(out).all(), ra.INCREASING_OPS[op]


@pytest.mark.parametrize("spec, message", [
    ("augmix-m9", "must start with 'rand'"),
    ("rand-m9-inc0", "only the increasing op set"),
    ("rand-q9", "unknown section"),
])
def test_bad_specs(spec, message):
  with pytest.raises(ValueError, match=message):
    ra.RandAugmentConfig.from_string(spec)
