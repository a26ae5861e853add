"""The Fashion-MNIST student with hard distillation: configs/fashion_mnist_deit_tiny.py's
model with the distillation token (deit_tiny_distilled_patch16_224 resized for 28x28),
same recipe and budget, hard labels from the CNN teacher (alpha 0.5 as in the paper).

Commands (2 CPU cores; the teacher logits come from deit_jax.teacher precompute, and
``python -m deit_jax.chain`` runs teacher, logits, student and evaluation in one go):
    python -m deit_jax.main --config=configs/fashion_mnist_deit_tiny_distilled.py \
        --workdir=workdirs/fmnist_student \
        --config.distill.teacher_logits=workdirs/fashion_mnist/teacher_logits/train
    # online teacher instead of precomputed logits:
    ... --config.distill.teacher=workdirs/fashion_mnist/teacher

Variants (``--config=...py:<variant>``): quick (default: 500 steps, ~4 min, what the
chain runs) and full (1,200 steps, the no-distillation config's budget, ~10 min).
Measured accuracy of both, with each teacher and distillation setting: docs/reproduction.md
(launch/reproduce_fashion_mnist.py).
"""

from configs import fashion_mnist_deit_tiny

VARIANTS = ("quick", "full")


def get_config(variant: str = "quick"):
  if variant not in VARIANTS:
    raise ValueError(f"variant must be quick or full, got {variant!r}")
  config = fashion_mnist_deit_tiny.get_config()
  config.model.name = "deit_tiny_distilled_patch16_224"
  config.distill.type = "hard"
  config.total_steps = 500 if variant == "quick" else 1200
  config.eval_every_steps = 0
  return config
