"""The DeiT ImageNet-1k recipes (configs/default.py) by model size and distillation,
shared by configs/deit_*.py.

Not a config by itself: ``deit_tiny.py``, ``deit_small.py``, ``deit_base.py`` and
``deit_base_384_finetune.py`` call ``recipe(...)`` with their model and schedule.
``variant`` picks the distillation: "hard" (the paper's DeiT-alembic rows: distilled
model, hard labels from precomputed RegNetY-16GF logits), "soft" (KL, tau 1, alpha 0.5 —
the official code's soft setting), or "none" (the plain model, the undistilled rows).
"""

from configs import default

VARIANTS = ("hard", "soft", "none")


def recipe(size: str, variant: str, *, img_size: int = 224, epochs: float = 300,
           batch_size: int = 1024, lr: float = 5e-4, weight_decay: float = 0.05,
           min_lr: float = 1e-5, drop_path_rate: float = 0.1):
  if variant not in VARIANTS:
    raise ValueError(f"config variant must be one of {VARIANTS}, got {variant!r}")
  distilled = variant != "none"
  config = default.get_config()
  config.model.name = f"deit_{size}{'_distilled' if distilled else ''}_patch16_{img_size}"
  config.model.drop_path_rate = drop_path_rate
  config.aug.image_size = img_size
  config.aug.crop_pct = 0.875 if img_size == 224 else 1.0
  config.batch_size = batch_size
  config.num_epochs = float(epochs)
  config.optimizer.lr = lr
  config.optimizer.weight_decay = weight_decay
  config.optimizer.min_lr = min_lr
  # "hard"/"soft" learn from precomputed RegNetY-16GF logits of the train split (python -m
  # deit_jax.teacher precompute --timm=regnety_160 ...) or an online distill.teacher.
  config.distill.type = variant
  return config
