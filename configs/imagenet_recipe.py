"""The DeiT ImageNet-1k recipe (REFERENCE.md section 3), shared by configs/deit_*.py.

Not a config by itself: ``deit_tiny.py``, ``deit_small.py``, ``deit_base.py`` and
``deit_base_384_finetune.py`` call ``recipe(...)`` with their model and schedule.
``variant`` picks the distillation: "hard" (the paper's DeiT-alembic rows: distilled
model, hard labels from precomputed RegNetY-16GF logits), "soft" (KL, tau 1, alpha 0.5 —
the official code's soft setting), or "none" (the plain model, the undistilled rows).
"""

import ml_collections

VARIANTS = ("hard", "soft", "none")


def recipe(size: str, variant: str, *, img_size: int = 224, epochs: float = 300,
           batch_size: int = 1024, lr: float = 5e-4, weight_decay: float = 0.05,
           min_lr: float = 1e-5, drop_path_rate: float = 0.1):
  if variant not in VARIANTS:
    raise ValueError(f"config variant must be one of {VARIANTS}, got {variant!r}")
  distilled = variant != "none"
  config = ml_collections.ConfigDict()
  config.dataset = "imagenet2012"
  config.data_dir = ml_collections.config_dict.placeholder(str)    # e.g. gs://BUCKET/tfds
  config.manual_dir = ml_collections.config_dict.placeholder(str)  # ILSVRC2012 tars
  config.train_split = "train"
  config.eval_split = "validation"
  config.num_classes = 1000

  config.model = ml_collections.ConfigDict(dict(
      name=f"deit_{size}{'_distilled' if distilled else ''}_patch16_{img_size}",
      drop_path_rate=drop_path_rate, dtype="bfloat16", remat=False, attn_impl="xla"))
  config.aug = ml_collections.ConfigDict(dict(
      image_size=img_size, crop="rrc", pad=0, hflip=True, randaugment="rand-m9-mstd0.5-inc1",
      random_erasing=0.25, repeated_aug=3, crop_pct=0.875 if img_size == 224 else 1.0,
      mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), in_chans=3))
  config.mixup = ml_collections.ConfigDict(dict(
      mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, label_smoothing=0.1))

  config.batch_size = batch_size
  config.num_epochs = float(epochs)
  config.total_steps = 0              # 0: num_epochs decides
  config.grad_accum_steps = 1
  config.optimizer = ml_collections.ConfigDict(dict(
      lr=lr, weight_decay=weight_decay, b1=0.9, b2=0.999, eps=1e-8, warmup_steps=-1,
      warmup_epochs=5.0, warmup_lr=1e-6, min_lr=min_lr, grad_clip_norm=0.0))
  config.lr_scale_batch = 512         # lr = optimizer.lr * batch_size / 512

  config.distill = ml_collections.ConfigDict(dict(
      type=variant, alpha=0.5, tau=1.0, kl_reduction="numel",
      # Precomputed RegNetY-16GF logits of the train split (python -m deit_jax.teacher
      # precompute --timm=regnety_160 ...); or distill.teacher for an online teacher.
      teacher_logits="", teacher="", teacher_dtype="bfloat16"))

  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  config.seed = 0
  config.ema_decay = 0.99996
  config.init_from = ""
  config.log_every_steps = 100
  config.eval_every_steps = 5000
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3
  config.best_metric = ""          # e.g. "eval_top1" or "eval_ema_top1": keep <workdir>/best
  return config
