"""tf.data transforms: torchvision/timm geometry, determinism, JPEG window decoding."""

import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf

from conftest import require
from deit_jax.data import transforms


def _texture(h, w, seed=0):
  """A smooth but detailed test picture (sums of random sinusoids), uint8 HWC."""
  rng = np.random.RandomState(seed)
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  img = np.zeros((h, w, 3), np.float32)
  for c in range(3):
    for _ in range(6):
      fy, fx, phase = rng.uniform(0.01, 0.08), rng.uniform(0.01, 0.08), rng.uniform(0, 6)
      img[..., c] += np.sin(fy * yy + fx * xx + phase)
  img = (img - img.min()) / (img.max() - img.min()) * 255
  return img.astype(np.uint8)


def _windows(height, width, n=400, **kwargs):
  return np.array([transforms.random_resized_crop_window(height, width, [i, 7], **kwargs).numpy()
                   for i in range(n)])


def test_random_resized_crop_windows_obey_torchvision_bounds():
  wins = _windows(375, 500)
  top, left, h, w = wins.T
  assert np.all((top >= 0) & (left >= 0) & (top + h <= 375) & (left + w <= 500))
  area = h * w / (375 * 500)
  assert area.min() >= 0.08 - 0.01 and area.max() <= 1.0
  assert np.all((w / h > 3 / 4 - 0.02) & (w / h < 4 / 3 + 0.02))
  assert len({tuple(x) for x in wins}) > 390  # really random


def test_random_resized_crop_is_a_function_of_the_seed():
  a = transforms.random_resized_crop_window(300, 300, [3, 4]).numpy()
  b = transforms.random_resized_crop_window(300, 300, [3, 4]).numpy()
  np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("height, width, expected", [
    (20, 1000, (0, 486, 20, 27)),    # too wide: full height, width round(20 * 4/3)
    (1000, 20, (486, 0, 27, 20)),    # too tall: full width, height round(20 / (3/4))
])
def test_random_resized_crop_fallback_is_torchvision_centre_crop(height, width, expected):
  # scale (0.9, 1) cannot fit an allowed aspect into these strips: every attempt fails.
  win = transforms.random_resized_crop_window(height, width, [0, 1], scale=(0.9, 1.0))
  assert tuple(win.numpy()) == expected


def test_decode_only_the_crop_window_equals_full_decode_then_crop():
  from deit_jax.data import pipeline, sources
  image = _texture(375, 500)
  jpeg = tf.io.encode_jpeg(image, quality=95)
  decoded = tf.io.decode_jpeg(jpeg, channels=3)
  source = lambda encoded: sources.Source("x", "train", 1, 1, 3, encoded, fetch=None)
  config = pipeline.AugmentConfig(image_size=64)
  for i in range(5):
    seeds = tf.random.experimental.stateless_split(tf.constant([i, 11], tf.int64), 5)
    view = pipeline.sample_view(jpeg, seeds, source(True), config)
    assert tuple(view.numpy()) == tuple(pipeline.sample_view(decoded, seeds, source(False),
                                                             config).numpy())
    top, left, h, w, _ = view.numpy()
    from_window = pipeline.apply_view(jpeg, view, source(True), config)
    from_full = pipeline.apply_view(decoded, view, source(False), config)
    assert from_window.shape == (64, 64, 3)
    assert np.abs(from_window.numpy() - from_full.numpy()).mean() < 0.5
    # The window holds the image's own pixels there; libjpeg's chroma upsampling differs
    # only along the window's edge (a few levels, a fraction of a percent of the pixels).
    crop = tf.image.decode_and_crop_jpeg(jpeg, [top, left, h, w], channels=3).numpy()
    diff = np.abs(crop.astype(int) - decoded.numpy()[top:top + h, left:left + w].astype(int))
    assert diff.max() <= 8 and np.mean(diff > 0) < 0.01


def test_eval_transform_matches_torchvision():
  tv = require("torchvision.transforms")
  pil = require("PIL.Image")
  for h, w in [(375, 500), (500, 333), (224, 224)]:
    image = _texture(h, w, seed=h)
    ours = transforms.eval_resize_center_crop(tf.constant(image), 224).numpy()
    pipeline = tv.Compose([tv.Resize(int(math.floor(224 / 0.875)),
                                      interpolation=tv.InterpolationMode.BICUBIC),
                           tv.CenterCrop(224)])
    expected = np.asarray(pipeline(pil.fromarray(image)), np.float32)
    assert ours.shape == expected.shape == (224, 224, 3)
    # Different bicubic implementations (PIL vs TF): close, and far closer than a
    # one-pixel shift of the crop would be.
    err = np.abs(ours - expected).mean()
    shifted = np.abs(ours[1:] - expected[:-1]).mean()
    assert err < 1.5 and err < shifted / 3, (h, w, err, shifted)


def test_random_erasing_follows_timm_pixel_mode():
  image = tf.zeros((224, 224, 3))
  erased_fraction, areas = [], []
  for i in range(400):
    out = transforms.random_erasing(image, [i, 5]).numpy()
    mask = np.any(out != 0, axis=-1)
    erased_fraction.append(mask.any())
    if mask.any():
      rows, cols = np.where(mask.any(1))[0], np.where(mask.any(0))[0]
      box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
      assert box == mask.sum()  # one solid rectangle
      areas.append(box / 224 ** 2)
      assert abs(out[mask].std() - 1.0) < 0.2  # per-pixel N(0, 1)
  assert np.mean(erased_fraction) == pytest.approx(0.25, abs=0.06)
  assert min(areas) >= 0.02 * 0.9 and max(areas) <= 1 / 3 * 1.1
  np.testing.assert_array_equal(transforms.random_erasing(image, [1, 2]),
                                transforms.random_erasing(image, [1, 2]))


def test_normalize():
  out = transforms.normalize(tf.fill((2, 2, 3), 255.0 * 0.485)).numpy()
  np.testing.assert_allclose(out[..., 0], 0.0, atol=1e-6)
