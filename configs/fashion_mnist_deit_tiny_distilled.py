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
Measured (quick, in the chain, teacher = the 1-epoch cifar_resnet20 at 84.67%): test
top-1 71.78% (cls 71.62%, dist 71.60%), agreement with the teacher 77.0%; ~4.5 min.
Measured (full, seeds 0 and 1, mean +- half-range; teacher = the 10-epoch cifar_resnet20
at 93.15%; ~10 min each): hard from per-image logits 78.74 +- 0.66% (cls 78.64, dist
78.65), crop-consistent logits 78.48 +- 0.92%, online teacher 77.67 +- 0.62%; soft
(distill.type=soft, alpha 0.5, tau 1) 78.56 +- 0.17%, the paper's soft (alpha 0.1, tau 3)
78.89 +- 0.12%; the plain config 78.37 +- 0.51%. Table and figure: README "Fashion-MNIST
reproduction" (launch/reproduce_fashion_mnist.py).
"""

from configs import fashion_mnist_deit_tiny


def get_config(variant: str = "quick"):
  if variant not in ("quick", "full"):
    raise ValueError(f"variant must be quick or full, got {variant!r}")
  config = fashion_mnist_deit_tiny.get_config()
  config.model.name = "deit_tiny_distilled_patch16_224"
  config.distill.type = "hard"
  config.total_steps = 500 if variant == "quick" else 1200
  config.eval_every_steps = 0
  return config
