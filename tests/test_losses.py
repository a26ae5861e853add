"""DeiT losses against independent PyTorch formulas of the official code."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import require
from deit_jax import losses

torch = require("torch")
F = torch.nn.functional
timm_loss = require("timm.loss")
timm_mixup = require("timm.data.mixup")

B, C = 8, 10


def official_distillation_loss(outputs, targets, teacher, distillation, alpha, tau,
                               kl_reduction, soft_targets):
  """facebookresearch/deit losses.DistillationLoss, written out in PyTorch."""
  if soft_targets:
    base_criterion = timm_loss.SoftTargetCrossEntropy()
  else:
    base_criterion = timm_loss.LabelSmoothingCrossEntropy(smoothing=0.1)
  outputs_cls, outputs_kd = outputs if isinstance(outputs, tuple) else (outputs, None)
  base = base_criterion(outputs_cls, targets)
  if distillation == "none":
    return base
  if distillation == "soft":
    kl = F.kl_div(F.log_softmax(outputs_kd / tau, dim=1), F.log_softmax(teacher / tau, dim=1),
                  reduction="sum", log_target=True) * (tau * tau)
    distill = kl / (outputs_kd.numel() if kl_reduction == "numel" else outputs_kd.shape[0])
  else:
    distill = F.cross_entropy(outputs_kd, teacher.argmax(dim=1))
  return base * (1 - alpha) + distill * alpha


def _data(seed=0, scale=3.0):
  rng = np.random.RandomState(seed)
  cls_logits = (rng.randn(B, C) * scale).astype(np.float32)
  dist_logits = (rng.randn(B, C) * scale).astype(np.float32)
  teacher = (rng.randn(B, C) * scale).astype(np.float32)
  labels = rng.randint(0, C, size=B)
  return cls_logits, dist_logits, teacher, labels


def _mixup_targets(labels, lam=0.7):
  # timm's mixup_target: smoothing 0.1 folded in, mixed with the flipped batch.
  return timm_mixup.mixup_target(torch.from_numpy(labels), C, lam=lam, smoothing=0.1).numpy()


@pytest.mark.parametrize("distillation", ["none", "soft", "hard"])
@pytest.mark.parametrize("kl_reduction", ["numel", "batchmean"])
@pytest.mark.parametrize("soft_targets", [False, True])
@pytest.mark.parametrize("alpha, tau", [(0.5, 1.0), (0.1, 3.0)])
def test_deit_loss_matches_official_code(distillation, kl_reduction, soft_targets, alpha, tau):
  cls_logits, dist_logits, teacher, labels = _data()
  targets = _mixup_targets(labels) if soft_targets else labels
  expected = official_distillation_loss(
      (torch.from_numpy(cls_logits), torch.from_numpy(dist_logits)), torch.from_numpy(targets),
      torch.from_numpy(teacher), distillation, alpha, tau, kl_reduction, soft_targets).item()
  got = losses.deit_loss((jnp.asarray(cls_logits), jnp.asarray(dist_logits)),
                         jnp.asarray(targets), jnp.asarray(teacher), distillation=distillation,
                         alpha=alpha, tau=tau, kl_reduction=kl_reduction)
  np.testing.assert_allclose(float(got), expected, rtol=1e-5, atol=1e-6)


def test_numel_and_batchmean_differ_by_class_count():
  cls_logits, dist_logits, teacher, _ = _data()
  numel = losses.soft_distillation_loss(dist_logits, teacher, tau=3.0, kl_reduction="numel")
  batchmean = losses.soft_distillation_loss(dist_logits, teacher, tau=3.0,
                                            kl_reduction="batchmean")
  np.testing.assert_allclose(float(batchmean), float(numel) * C, rtol=1e-6)


def test_plain_model_with_none_and_int_labels():
  cls_logits, _, _, labels = _data()
  expected = timm_loss.LabelSmoothingCrossEntropy(0.1)(torch.from_numpy(cls_logits),
                                                       torch.from_numpy(labels)).item()
  np.testing.assert_allclose(float(losses.deit_loss(jnp.asarray(cls_logits), labels)),
                             expected, rtol=1e-6)
  unsmoothed = F.cross_entropy(torch.from_numpy(cls_logits), torch.from_numpy(labels)).item()
  np.testing.assert_allclose(
      float(losses.label_smoothing_cross_entropy(cls_logits, labels, smoothing=0.0)),
      unsmoothed, rtol=1e-6)


def _np_log_softmax(z):
  z = z.astype(np.float64)
  z = z - z.max(axis=1, keepdims=True)
  return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def class_token_distillation_reference(logits, targets, teacher, distillation, alpha, tau,
                                       kl_reduction, smoothing=0.1):
  """The paper's class-token-only objective in numpy, written from its formulas:
  (1 - a) CE(Z_s, y) + a * D(Z_s, Z_t) on the one output Z_s, with D = tau^2 KL or CE
  with the teacher's argmax (unsmoothed); y smoothed if integer, else used as given."""
  b, c = logits.shape
  log_p = _np_log_softmax(logits)
  if targets.ndim == 1:
    y = np.full((b, c), smoothing / c)
    y[np.arange(b), targets] += 1.0 - smoothing
  else:
    y = targets.astype(np.float64)
  base = -(y * log_p).sum(axis=1).mean()
  if distillation == "soft":
    log_s, log_t = _np_log_softmax(logits / tau), _np_log_softmax(teacher / tau)
    kl = (np.exp(log_t) * (log_t - log_s)).sum() * tau * tau
    distill = kl / (b * c if kl_reduction == "numel" else b)
  else:
    distill = -log_p[np.arange(b), teacher.argmax(axis=1)].mean()
  return (1.0 - alpha) * base + alpha * distill


@pytest.mark.parametrize("distillation", ["soft", "hard"])
@pytest.mark.parametrize("kl_reduction", ["numel", "batchmean"])
@pytest.mark.parametrize("soft_targets", [False, True])
@pytest.mark.parametrize("alpha, tau", [(0.5, 1.0), (0.1, 3.0)])
def test_class_token_only_distillation_matches_paper_formula(distillation, kl_reduction,
                                                             soft_targets, alpha, tau):
  logits, _, teacher, labels = _data(seed=3)
  targets = _mixup_targets(labels) if soft_targets else labels
  expected = class_token_distillation_reference(logits, targets, teacher, distillation, alpha,
                                                tau, kl_reduction)
  terms = losses.deit_loss_terms(jnp.asarray(logits), jnp.asarray(targets),
                                 jnp.asarray(teacher), distillation=distillation,
                                 alpha=alpha, tau=tau, kl_reduction=kl_reduction)
  np.testing.assert_allclose(float(terms.total), expected, rtol=1e-5, atol=1e-6)
  assert float(terms.distill) > 0


def test_class_token_only_gradient_has_both_terms():
  logits, _, teacher, labels = _data(seed=4)
  grad = jax.grad(lambda z: losses.deit_loss(z, labels, teacher, distillation="hard"))(logits)
  p = np.exp(_np_log_softmax(logits))
  y = np.full((B, C), 0.1 / C)
  y[np.arange(B), labels] += 0.9
  teacher_onehot = np.eye(C)[teacher.argmax(1)]
  expected = (0.5 * (p - y) + 0.5 * (p - teacher_onehot)) / B
  np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6)


def test_hard_distillation_accepts_teacher_labels_and_never_smooths():
  _, dist_logits, teacher, _ = _data()
  from_logits = losses.hard_distillation_loss(dist_logits, teacher)
  from_labels = losses.hard_distillation_loss(dist_logits, jnp.argmax(teacher, -1))
  plain_ce = F.cross_entropy(torch.from_numpy(dist_logits),
                             torch.from_numpy(teacher).argmax(1)).item()
  np.testing.assert_allclose([float(from_logits), float(from_labels)], [plain_ce] * 2, rtol=1e-6)


def test_hard_smoothing_smooths_the_teacher_label_only():
  """distill.hard_smoothing (the paper's text, eps 0.1): torch's label-smoothed CE against
  the teacher's argmax on the dist head; the class head's term is unchanged."""
  cls_logits, dist_logits, teacher, labels = _data(seed=5)
  got = losses.deit_loss_terms((cls_logits, dist_logits), labels, teacher, distillation="hard",
                               hard_smoothing=0.1)
  smoothed_ce = F.cross_entropy(torch.from_numpy(dist_logits),
                                torch.from_numpy(teacher).argmax(1), label_smoothing=0.1).item()
  plain = losses.deit_loss_terms((cls_logits, dist_logits), labels, teacher,
                                 distillation="hard")
  np.testing.assert_allclose(float(got.distill), smoothed_ce, rtol=1e-6)
  np.testing.assert_allclose(float(got.base), float(plain.base), rtol=1e-7)
  assert float(got.distill) != pytest.approx(float(plain.distill))


@pytest.mark.parametrize("distillation", ["none", "soft", "hard"])
def test_each_head_gets_its_own_term(distillation):
  cls_logits, dist_logits, teacher, labels = _data()

  def loss(cls, dist):
    return losses.deit_loss((cls, dist), labels, teacher, distillation=distillation)

  g_cls, g_dist = jax.grad(loss, argnums=(0, 1))(cls_logits, dist_logits)
  base_grad = jax.grad(lambda c: losses.base_loss(c, labels))(cls_logits)
  weight = 1.0 if distillation == "none" else 0.5
  np.testing.assert_allclose(g_cls, weight * base_grad, rtol=1e-5, atol=1e-7)
  assert bool(jnp.all(g_dist == 0)) == (distillation == "none")


def test_terms_and_jit():
  cls_logits, dist_logits, teacher, labels = _data()
  terms = losses.deit_loss_terms((cls_logits, dist_logits), labels, teacher,
                                 distillation="hard", alpha=0.3)
  np.testing.assert_allclose(float(terms.total), 0.7 * float(terms.base) +
                             0.3 * float(terms.distill), rtol=1e-6)
  jitted = jax.jit(lambda o, t, te: losses.deit_loss(o, t, te, distillation="soft", tau=3.0))
  np.testing.assert_allclose(
      float(jitted((cls_logits, dist_logits), labels, teacher)),
      float(losses.deit_loss((cls_logits, dist_logits), labels, teacher, distillation="soft",
                             tau=3.0)), rtol=1e-6)


@pytest.mark.parametrize("call, message", [
    (lambda d: losses.deit_loss((d[0], d[1]), d[3], d[2][:, :5], distillation="hard"),
     r"teacher_logits of shape \(8, 5\) do not match student distillation logits of shape "
     r"\(8, 10\)"),
    (lambda d: losses.deit_loss((d[0], d[1]), d[3], d[2][:4], distillation="soft"),
     r"teacher_logits of shape \(4, 10\)"),
    (lambda d: losses.deit_loss((d[0], d[1]), d[3], None, distillation="hard"),
     "needs teacher_logits"),
    (lambda d: losses.deit_loss((d[0], d[1]), d[3], d[2], distillation="sofft"),
     "distillation must be 'none', 'soft' or 'hard'"),
    (lambda d: losses.deit_loss((d[0], d[1]), d[3], d[2], distillation="soft",
                                kl_reduction="mean"), "kl_reduction must be"),
    (lambda d: losses.deit_loss(d[0], d[3][:3]), r"integer targets of shape \(3,\)"),
    (lambda d: losses.deit_loss(d[0], np.ones((8, 7), np.float32)),
     r"targets of shape \(8, 7\) do not match logits"),
])
def test_bad_inputs_are_clear_errors(call, message):
  with pytest.raises(ValueError, match=message):
    call(_data())
