"""The DeiT ImageNet-1k recipe (Touvron et al. 2021, arXiv 2012.12877, and the
official repo facebookresearch/deit), shared by configs/deit_*.py.

Not a config by itself: ``deit_tiny.py``, ``deit_small.py``, ``deit_base.py`` and
``deit_base_384_finetune.py`` call ``recipe(...)`` with their model and schedule.
``variant`` picks one row of the paper's distillation ablation (its Table 3):

  none      the plain model, no teacher                          ("no distillation")
  soft_cls  the plain model, soft distillation on its class token ("usual distillation"):
            the paper's setting tau 3, lambda 0.1, KL averaged per example (batchmean)
  hard_cls  the plain model, hard distillation on its class token ("hard distillation")
  hard      the distilled model (class + distillation token), hard labels -- DeiT-alembic,
            the published distilled weights; evaluate it by cls, dist or both heads
  soft      the distilled model with soft distillation on its distillation token (not a
            paper row; the official code's soft setting tau 1, alpha 0.5, numel)
  online    "hard" with the RegNetY-16GF run inside the train step on the augmented, mixed
            batch -- the paper's exact recipe; give ``--config.distill.teacher=<model dir>``
            written by ``python -m deit_jax.convert regnety_160-a5fe301d.pth --model
            regnety_160 --out DIR``

Every teacher variant reads precomputed RegNetY-16GF logits (distill.teacher_logits) or
runs a teacher online (distill.teacher).

Which command reproduces which figure: the paper's teacher saw the augmented, mixed batch
(official engine.py), so the distilled figures (hard, hard_cls, soft_cls) come from a
teacher run online: ``:online`` for the hard row, ``none`` needs no teacher, and
``hard_cls``/``soft_cls`` as in the paper take ``--config.distill.teacher=<model dir>``
instead of teacher logits. The precomputed variants (``hard`` by default, ``hard_cls``,
``soft_cls``, ``soft`` with ``distill.teacher_logits``) show the teacher the eval centre
crop and mix its logits with the images' lambda: an approximation of that recipe at a
fraction of its cost (docs/fidelity.md). Everything else follows the official code
(per-epoch schedule, weight decay on dist_token, one Mixup draw per GPU of the official
run: ``batch_groups``).
"""

import ml_collections

from configs import default

# The official commands' GPUs (README_deit.md): DeiT-Ti/S on one node of 4 GPUs x 256
# images, DeiT-B (and its 384 fine-tune) on 2 nodes x 8 GPUs x 64 (x 32): config.batch_groups.
OFFICIAL_GPUS = {"tiny": 4, "small": 4, "base": 16}
VARIANTS = ("hard", "soft", "none", "hard_cls", "soft_cls", "online")
# variant -> (distill.type, distilled model, alpha, tau, kl_reduction)
_DISTILLATION = {
    "none": ("none", False, 0.5, 1.0, "numel"),
    "soft_cls": ("soft", False, 0.1, 3.0, "batchmean"),
    "hard_cls": ("hard", False, 0.5, 1.0, "numel"),
    "hard": ("hard", True, 0.5, 1.0, "numel"),
    "soft": ("soft", True, 0.5, 1.0, "numel"),
    "online": ("hard", True, 0.5, 1.0, "numel"),  # hard, teacher from distill.teacher
}


def recipe(size: str, variant: str, *, img_size: int = 224, epochs: float = 300,
           batch_size: int = 1024, lr: float = 5e-4, weight_decay: float = 0.05,
           min_lr: float = 1e-5, drop_path_rate: float = 0.1):
  if variant not in VARIANTS:
    raise ValueError(f"config variant must be one of {VARIANTS}, got {variant!r}")
  distill_type, distilled, alpha, tau, kl_reduction = _DISTILLATION[variant]
  config = default.get_config()
  config.model.name = f"deit_{size}{'_distilled' if distilled else ''}_patch16_{img_size}"
  config.model.drop_path_rate = drop_path_rate
  # None: the architecture's depth; a number only for a quick check of the whole recipe on
  # a small machine (the test suite's pod rehearsal uses 1 block).
  config.model.depth = ml_collections.config_dict.placeholder(int)
  config.aug.image_size = img_size
  # Evaluation resizes to int(img_size / 0.875) and centre-crops, at 384 too (438 -> 384):
  # the official datasets.py of the paper's release (int(256 / 224 * input_size)).
  config.aug.crop_pct = 0.875
  config.batch_size = batch_size
  config.batch_groups = OFFICIAL_GPUS[size]
  config.num_epochs = float(epochs)
  config.optimizer.lr = lr
  config.optimizer.weight_decay = weight_decay
  config.optimizer.min_lr = min_lr
  # "hard"/"soft" learn from precomputed RegNetY-16GF logits of the train split (python -m
  # deit_jax.teacher precompute --timm=regnety_160 ...) or an online distill.teacher.
  config.distill.update(dict(type=distill_type, alpha=alpha, tau=tau,
                             kl_reduction=kl_reduction))
  return config
