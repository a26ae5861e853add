"""DeiT-Base on ImageNet-1k, 300 epochs, the official recipe (configs/imagenet_recipe.py).

Commands (TPU VM or GPU host; docs/launch.md shows data and teacher logits):
    python -m deit_jax.main --config=configs/deit_base.py --workdir=gs://BUCKET/runs/deit_base \
        --config.data_dir=gs://BUCKET/tfds \
        --config.distill.teacher_logits=gs://BUCKET/teacher_logits/regnety160
    python -m deit_jax.main --config=configs/deit_base.py:<variant> --workdir=... \
        [--config.distill.teacher_logits=...]      # one row of the paper's Table 3, below
    python -m deit_jax.main --config=configs/deit_base.py:online --workdir=... \
        --config.distill.teacher=gs://BUCKET/models/regnety_160   # online RegNetY-16GF teacher

Variants, one per row of the paper's distillation ablation (Table 3 of arXiv 2012.12877),
with the DeiT-B top-1 it reports (ImageNet val, 224, 300 epochs, RegNetY-16GF teacher):
  none      plain model, no distillation                       81.8
  soft_cls  plain model, soft distillation of the class token  81.8  (tau 3, lambda 0.1)
  hard_cls  plain model, hard distillation of the class token  83.0
  hard      distilled model (default), hard labels: by the cls head 83.0, by the dist
            head 83.1, by both (the average, what evaluate reports as top1) 83.4
  soft      distilled model, soft distillation (no paper figure for this one)
  online    "hard" with the RegNetY-16GF run inside the train step (the paper's exact
            recipe; distill.teacher: a model directory written by deit_jax.convert)
The paper's point: hard beats soft even on the class token alone, and the two tokens
together beat either head alone.
The distilled figures come from the teacher run on the augmented, mixed batch
(``:online``); what the precomputed variants approximate: configs/imagenet_recipe.py.

Expected runtime: ~9 h on a TPU v4-32 or 8xH100 (estimate; the paper: 53 h on one 8xV100
node); batch 1024 global, bf16 compute with fp32 master weights.
Not yet run by us end to end: the figures are the paper's.

The paper's Table 5 (arXiv 2012.12877; top-1 % on ImageNet val / ImageNet-ReaL /
ImageNet-V2 matched frequency; images/s on one 16GB V100):
  DeiT-B    81.8 / 86.7 / 71.5, 292.3 images/s
  DeiT-B⚗   83.4 / 88.3 / 73.2, 290.9 images/s (distilled, 300 epochs; 1000: 84.2 / 88.7 / 73.9)
A checkpoint's own row: python -m deit_jax.table5 (docs/training.md).
"""

from configs import imagenet_recipe

VARIANTS = imagenet_recipe.VARIANTS


def get_config(variant: str = "hard"):
  return imagenet_recipe.recipe("base", variant)
