"""Mixup/CutMix against timm's Mixup (the DeiT recipe's), and our sampler's statistics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import require
from deit_jax.data import mixup

torch = require("torch")
timm_mixup = require("timm.data.mixup")

C = 10


def _timm_reference(seed, x_nhwc, labels):
  """Runs timm's Mixup and recovers the lambda / box it drew from the same numpy stream."""
  mixer = timm_mixup.Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5,
                           mode="batch", label_smoothing=0.1, num_classes=C)
  np.random.seed(seed)
  lam, use_cutmix = mixer._params_per_batch()
  box = (0, 0, 0, 0)
  if use_cutmix:
    box, lam = timm_mixup.cutmix_bbox_and_lam(x_nhwc.transpose(0, 3, 1, 2).shape, lam,
                                              correct_lam=True)
  np.random.seed(seed)
  x = torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2).copy())
  mixed, targets = mixer(x, torch.from_numpy(labels))
  params = mixup.MixParams(jnp.float32(lam), jnp.asarray(use_cutmix),
                           jnp.asarray(box, jnp.int32))
  return params, mixed.numpy().transpose(0, 2, 3, 1), targets.numpy()


@pytest.mark.parametrize("seed", range(8))
def test_matches_timm_mixup(seed):
  rng = np.random.RandomState(100 + seed)
  x = rng.randn(6, 20, 24, 3).astype(np.float32)
  labels = rng.randint(0, C, size=6)
  params, expected_x, expected_t = _timm_reference(seed, x, labels)
  np.testing.assert_allclose(mixup.mix_images(jnp.asarray(x), params), expected_x, atol=1e-6)
  np.testing.assert_allclose(mixup.mix_targets(jnp.asarray(labels), C, params, 0.1),
                             expected_t, atol=1e-6)


def test_teacher_is_mixed_with_the_same_lambda_and_pairing():
  teacher = jnp.asarray(np.random.RandomState(0).randn(4, C), jnp.float32)
  params = mixup.MixParams(jnp.float32(0.3), jnp.asarray(True), jnp.asarray([0, 4, 0, 4]))
  np.testing.assert_allclose(mixup.mix_teacher(teacher, params),
                             0.3 * teacher + 0.7 * teacher[::-1], atol=1e-6)


def test_groups_mix_within_each_group_with_their_own_draw():
  """One draw per group of rows (per GPU of the official run), mirrored within the group."""
  x = jnp.arange(8.0).reshape(8, 1, 1, 1)
  params = mixup.MixParams(jnp.asarray([0.0, 0.25]), jnp.asarray([False, False]),
                           jnp.zeros((2, 4), jnp.int32))
  out = mixup.mix_images(x, params).ravel()
  np.testing.assert_allclose(out, [3, 2, 1, 0, 0.25 * 4 + 0.75 * 7, 0.25 * 5 + 0.75 * 6,
                                   0.25 * 6 + 0.75 * 5, 0.25 * 7 + 0.75 * 4])
  targets = mixup.mix_targets(jnp.arange(8) % C, C, params, 0.0)
  assert targets[0, 3] == 1 and targets[4, 4] == 0.25 and targets[4, 7] == 0.75
  with pytest.raises(ValueError, match="even number of examples per group"):
    mixup.mix_images(jnp.zeros((6, 2, 2, 1)), params)
  draws = mixup.draw(jax.random.key(0), mixup.MixupConfig(groups=4), 8, 8)
  assert draws.lam.shape == (4,) and len(set(np.asarray(draws.lam).tolist())) == 4


def test_sampler_statistics_follow_the_recipe():
  config = mixup.MixupConfig()
  sample = jax.jit(jax.vmap(lambda k: mixup.sample_mix_params(k, config, 224, 224)))
  params = sample(jax.random.split(jax.random.key(0), 4000))
  cut = np.asarray(params.use_cutmix)
  assert cut.mean() == pytest.approx(0.5, abs=0.03)
  lam = np.asarray(params.lam)
  assert lam[~cut].mean() == pytest.approx(0.5, abs=0.03)  # Beta(0.8, 0.8) is symmetric
  box = np.asarray(params.box)[cut]
  area = (box[:, 1] - box[:, 0]) * (box[:, 3] - box[:, 2])
  np.testing.assert_allclose(lam[cut], 1 - area / 224 ** 2, atol=1e-6)


def test_disabled_or_skipped_mixing_leaves_batch_alone():
  x = jnp.asarray(np.random.RandomState(0).randn(4, 8, 8, 3), jnp.float32)
  labels = jnp.asarray([1, 2, 3, 4])
  for config in (mixup.MixupConfig(prob=0.0), mixup.MixupConfig(0.0, 0.0)):
    images, targets, _ = mixup.mixup_batch(jax.random.key(1), x, labels, C, config)
    np.testing.assert_array_equal(images, x)
    np.testing.assert_allclose(targets.argmax(-1), labels)
    np.testing.assert_allclose(targets.max(-1), 0.9 + 0.01, rtol=1e-6)


def test_mixup_lambda_follows_beta_distribution():
  config = mixup.MixupConfig(cutmix_alpha=0.0)  # Mixup only: lam ~ Beta(0.8, 0.8)
  sample = jax.jit(jax.vmap(lambda k: mixup.sample_mix_params(k, config, 32, 32).lam))
  lam = np.asarray(sample(jax.random.split(jax.random.key(3), 20000)))
  reference = np.random.RandomState(0).beta(0.8, 0.8, size=200000)
  quantiles = np.linspace(0.05, 0.95, 19)
  np.testing.assert_allclose(np.quantile(lam, quantiles), np.quantile(reference, quantiles),
                             atol=0.02)
