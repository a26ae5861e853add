"""DeiT-Tiny on ImageNet-1k, 300 epochs, the official recipe (configs/imagenet_recipe.py).

Commands (TPU VM or GPU host; docs/launch.md shows data and teacher logits):
    python -m deit_jax.main --config=configs/deit_tiny.py --workdir=gs://BUCKET/runs/deit_tiny \
        --config.data_dir=gs://BUCKET/tfds \
        --config.distill.teacher_logits=gs://BUCKET/teacher_logits/regnety160
    python -m deit_jax.main --config=configs/deit_tiny.py:none --workdir=...   # no distillation
    python -m deit_jax.main --config=configs/deit_tiny.py:soft --workdir=... \
        --config.distill.teacher_logits=...                                       # soft (KL)

Expected top-1 (paper, 224, 300 epochs): 72.2 / 74.5 (none / hard distillation, head average).
Expected runtime: ~2.5 h on a TPU v4-32 (estimate; the paper: DeiT-Ti trains 2.5x faster
than DeiT-B); batch 1024 global, bf16 compute with fp32 master weights.
Not yet run by us end to end: the figures are the paper's.
"""

from configs import imagenet_recipe

VARIANTS = imagenet_recipe.VARIANTS


def get_config(variant: str = "hard"):
  return imagenet_recipe.recipe("tiny", variant)
