"""The evaluation metrics against values worked out by hand on tiny batches: top-1,
top-5, each head, student/teacher agreement, and the padding mask (a padded row must not
count, whatever it holds)."""

import types

import jax.numpy as jnp
import numpy as np
import pytest

from deit_jax.eval_step import evaluate, make_eval_step


class _HandModel:
  """Returns the "images" as its logits: [B, C] plain, [B, 2, C] (cls, dist) distilled."""

  def __init__(self, distilled):
    self.config = types.SimpleNamespace(distilled=distilled)

  def eval(self):
    pass

  def __call__(self, images, head=None):
    return (images[:, 0], images[:, 1]) if head == "both" else images


class _HandDef:

  def __init__(self, distilled):
    self.distilled = distilled

  def merge(self, params, rest):
    return _HandModel(self.distilled)


def _batch(logits, labels, mask, teacher=None):
  batch = {"image": jnp.asarray(logits, jnp.float32), "label": jnp.asarray(labels, jnp.int32),
           "mask": jnp.asarray(mask, bool)}
  if teacher is not None:
    batch["teacher_logits"] = jnp.asarray(teacher, jnp.float32)
  return batch


def _cross_entropy(logits, label):
  logits = np.asarray(logits, np.float64)
  return float(np.log(np.exp(logits).sum()) - logits[label])


def test_top1_top5_and_mask_of_a_plain_model():
  ranked = [6, 5, 4, 3, 2, 1, 0]                 # class k has rank k + 1
  logits = [[0, 0, 5, 0, 0, 0, 0],               # label 2: top-1
            ranked,                              # label 4: rank 5, in the top 5 only
            ranked,                              # label 5: rank 6, in neither
            [9, 0, 0, 0, 0, 0, 0]]               # padding (label 0 would be a top-1 hit)
  labels, mask = [2, 4, 5, 0], [1, 1, 1, 0]
  result = evaluate(make_eval_step(_HandDef(False)), None, None,
                    [_batch(logits, labels, mask)])
  assert result["num_examples"] == 3
  assert result["top1"] == pytest.approx(100 / 3)
  assert result["top5"] == pytest.approx(200 / 3)
  assert result["top1_cls"] == result["top1_dist"] == result["top1"]  # one head
  expected_loss = np.mean([_cross_entropy(logits[i], labels[i]) for i in range(3)])
  assert result["loss"] == pytest.approx(expected_loss, rel=1e-5)
  assert "agreement" not in result and "teacher_top1" not in result


def test_heads_and_agreement_of_a_distilled_model_over_two_batches():
  # (cls logits, dist logits) per row; the eval output is their average.
  first = [[[5, 0, 0, 0], [0, 4, 0, 0]],   # label 0: cls hit, dist miss, average (2.5 vs 2) hit
           [[0, 0, 3, 0], [0, 0, 3, 0]],   # label 2: all hit
           [[1, 0, 0, 0], [0, 0, 0, 4]]]   # label 3: cls miss, dist hit, average (0.5 vs 2) hit
  second = [[[0, 2, 0, 0], [0, 2, 0, 0]],  # label 1: all hit
            [[9, 0, 0, 0], [9, 0, 0, 0]]]  # padding: would hit and agree everywhere
  one_hot = lambda k: [1.0 if c == k else 0.0 for c in range(4)]
  teacher_first = [one_hot(1), one_hot(2), one_hot(3)]
  teacher_second = [one_hot(0), one_hot(0)]
  step = make_eval_step(_HandDef(True))
  result = evaluate(step, None, None, [
      _batch(first, [0, 2, 3], [1, 1, 1], teacher_first),
      _batch(second, [1, 0], [1, 0], teacher_second)])
  assert result["num_examples"] == 4
  assert result["top1_cls"] == pytest.approx(75.0)      # rows a, b, d
  assert result["top1_dist"] == pytest.approx(75.0)     # rows b, c, d
  assert result["top1"] == pytest.approx(100.0)         # all four
  assert result["top5"] == pytest.approx(100.0)         # 4 classes: top-4 holds every label
  # Predictions (cls, dist, average): a (0, 1, 0), b (2, 2, 2), c (0, 3, 3), d (1, 1, 1);
  # the teacher says a 1, b 2, c 3, d 0.
  assert result["agreement_cls"] == pytest.approx(25.0)   # b
  assert result["agreement_dist"] == pytest.approx(75.0)  # a, b, c
  assert result["agreement"] == pytest.approx(50.0)       # b, c
  assert result["teacher_top1"] == pytest.approx(50.0)    # b, c
  rows = [np.mean(r, axis=0) for r in first + second[:1]]
  expected_loss = np.mean([_cross_entropy(r, k) for r, k in zip(rows, [0, 2, 3, 1])])
  assert result["loss"] == pytest.approx(expected_loss, rel=1e-5)


def test_real_top1_per_head_leaves_out_empty_sets_and_padding():
  # Same rows as above (predictions cls, dist, average): a (0, 1, 0), b (2, 2, 2),
  # c (0, 3, 3), d (1, 1, 1); padding e predicts 0 everywhere.
  rows = [[[5, 0, 0, 0], [0, 4, 0, 0]], [[0, 0, 3, 0], [0, 0, 3, 0]],
          [[1, 0, 0, 0], [0, 0, 0, 4]], [[0, 2, 0, 0], [0, 2, 0, 0]],
          [[9, 0, 0, 0], [9, 0, 0, 0]]]
  sets = [{0, 1}, set(), {3}, {2, 3}, {0}]  # b's set is empty; e is padding
  real = [[1 if c in s else 0 for c in range(4)] for s in sets]
  batch = _batch(rows, [0, 2, 3, 1, 0], [1, 1, 1, 1, 0])
  batch["real_label"] = jnp.asarray(real, jnp.uint8)
  result = evaluate(make_eval_step(_HandDef(True)), None, None, [batch])
  assert result["num_examples"] == 4 and result["num_examples_real"] == 3  # a, c, d
  assert result["top1_real"] == pytest.approx(200 / 3)       # a (0 in {0,1}), c (3 in {3})
  assert result["top1_real_cls"] == pytest.approx(100 / 3)   # a only
  assert result["top1_real_dist"] == pytest.approx(200 / 3)  # a (1 in {0,1}), c
  assert result["top1"] == pytest.approx(100.0)              # the original labels: all four
