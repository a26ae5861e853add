"""Mixup/CutMix against timm's Mixup with the DeiT recipe's settings: batch by batch, and
as distributions over many draws; our side takes its settings from the shipped config."""

import dataclasses
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from conftest import require
from deit_jax import builder
from deit_jax.data import mixup

torch = require("torch")
timm_mixup = require("timm.data.mixup")

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # configs/, as the CLI
from configs import deit_small  # noqa: E402

C = 10
# The official DeiT main.py's defaults (--mixup 0.8 --cutmix 1.0 --mixup-prob 1.0
# --mixup-switch-prob 0.5 --mixup-mode batch --smoothing 0.1), written out here so that a
# change to our config cannot move the reference with it.
OFFICIAL = dict(mixup_alpha=0.8, cutmix_alpha=1.0, cutmix_minmax=None, prob=1.0,
                switch_prob=0.5, mode="batch", label_smoothing=0.1, correct_lam=True)
RECIPE = deit_small.get_config()    # an ImageNet recipe config as shipped (4 groups)
OURS = builder.mixup_config(RECIPE)


def _timm_reference(seed, x_nhwc, labels):
  """Runs timm's Mixup and recovers the lambda / box it drew from the same numpy stream."""
  mixer = timm_mixup.Mixup(**OFFICIAL, num_classes=C)
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
  np.testing.assert_allclose(mixup.mix_targets(jnp.asarray(labels), C, params,
                                                OURS.label_smoothing), expected_t, atol=1e-6)


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


def test_disabled_or_skipped_mixing_leaves_batch_alone():
  x = jnp.asarray(np.random.RandomState(0).randn(4, 8, 8, 3), jnp.float32)
  labels = jnp.asarray([1, 2, 3, 4])
  for config in (mixup.MixupConfig(prob=0.0), mixup.MixupConfig(0.0, 0.0)):
    images, targets, _ = mixup.mixup_batch(jax.random.key(1), x, labels, C, config)
    np.testing.assert_array_equal(images, x)
    np.testing.assert_allclose(targets.argmax(-1), labels)
    np.testing.assert_allclose(targets.max(-1), 0.9 + 0.01, rtol=1e-6)


# ---------------------------------------------------------------------------
# The distribution over many draws
# ---------------------------------------------------------------------------

NONE, MIXUP, CUTMIX = range(3)
DRAWS = 40000


def _timm_draws(n, size, seed=0):
  """(mode, lambda) of ``n`` batches as timm's Mixup draws them in "batch" mode
  (``_params_per_batch``, then ``cutmix_bbox_and_lam`` on a CutMix batch, as ``_mix_batch``
  does); lambda after CutMix's correction is 1 - the pasted box's share of the image."""
  mixer = timm_mixup.Mixup(**OFFICIAL, num_classes=C)
  np.random.seed(seed)
  modes, lams = np.zeros(n, np.int64), np.ones(n)
  for i in range(n):
    lam, use_cutmix = mixer._params_per_batch()
    if use_cutmix:
      _, lam = timm_mixup.cutmix_bbox_and_lam((2, 3, size, size), lam,
                                              ratio_minmax=mixer.cutmix_minmax,
                                              correct_lam=mixer.correct_lam)
    modes[i] = CUTMIX if use_cutmix else (MIXUP if lam != 1.0 else NONE)
    lams[i] = lam
  return modes, lams


def _our_draws(config, n, size, seed=0):
  """The same of ours, every group's draw counted as one batch of the official run."""
  def one(key):
    draws = mixup.draw(key, config, size, size)
    return draws.apply, mixup.resolve(draws, config, size, size)
  apply, params = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(seed),
                                                          n // config.groups))
  apply, cut = np.asarray(apply).ravel(), np.asarray(params.use_cutmix).ravel()
  return np.where(cut, CUTMIX, np.where(apply, MIXUP, NONE)), np.asarray(params.lam).ravel()


def _p_values(ours, theirs):
  """p-values of: the mode frequencies (chi-square over none/Mixup/CutMix), Mixup's lambda
  and CutMix's corrected lambda = 1 - box area (two-sample Kolmogorov-Smirnov)."""
  table = np.array([[np.sum(modes == m) for m in (NONE, MIXUP, CUTMIX)]
                    for modes, _ in (ours, theirs)])
  table = table[:, table.sum(0) > 0]
  out = {"modes": stats.chi2_contingency(table).pvalue}
  for name, mode in (("mixup lambda", MIXUP), ("cutmix area", CUTMIX)):
    a, b = ours[1][ours[0] == mode], theirs[1][theirs[0] == mode]
    out[name] = stats.ks_2samp(a, b).pvalue if len(a) and len(b) else 0.0
  return out


def test_draws_follow_timm_over_many_batches():
  """Over 40,000 batches at the recipe's image size: how often each mode is picked,
  Mixup's lambda and CutMix's box area after correct_lam agree with timm's (every p-value
  above 1e-3), and each single setting changed (a swapped alpha, the switch or mixing
  probability, no lambda correction) is caught (some p-value below 1e-6), which is what
  the sample size and thresholds were chosen for."""
  size = RECIPE.aug.image_size
  theirs = _timm_draws(DRAWS, size)
  assert OURS.groups == 4  # DeiT-S's official 4 GPUs: draws per group are counted alike
  same = _p_values(_our_draws(OURS, DRAWS, size), theirs)
  assert min(same.values()) > 1e-3, same
  changes = [dict(mixup_alpha=1.0), dict(cutmix_alpha=0.8), dict(switch_prob=0.45),
             dict(prob=0.95), dict(correct_lam=False)]
  for change in changes:
    other = _p_values(_our_draws(dataclasses.replace(OURS, **change), DRAWS, size), theirs)
    assert min(other.values()) < 1e-6, (change, other)
