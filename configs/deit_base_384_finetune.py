"""DeiT-B fine-tuned at 384x384 from a 224 run, 30 epochs (official fine-tuning recipe:
lr 5e-6 per 512, weight decay 1e-8, min lr 5e-6, same augmentation, hard distillation).

Commands:
    python -m deit_jax.main --config=configs/deit_base_384_finetune.py \
        --workdir=gs://BUCKET/runs/deit_base_384 --config.data_dir=gs://BUCKET/tfds \
        --config.init_from=gs://BUCKET/runs/deit_base \
        --config.distill.teacher_logits=gs://BUCKET/teacher_logits/regnety160_384
    # from the official weights instead:
    python -m deit_jax.convert deit_base_distilled_patch16_224-df68dfff.pth \
        --model=deit_base_distilled_patch16_384 --img_size=384 --out=ckpt/deit_b_384
    ... --config.init_from=ckpt/deit_b_384

``init_from`` is a training workdir, an orbax step or a converted model directory; a
224 checkpoint's position embedding is resampled to the 24x24 grid (bicubic, as the
official fine-tuning code). The teacher logits must be of 384 inputs (precompute them
with this config). Expected top-1 (paper): 83.1 (none) / 84.5 (hard distillation).
Expected runtime: ~3 h on a TPU v4-32 (estimate: 30 epochs at 384, ~3.2x the FLOPs of 224).
"""

from configs import imagenet_recipe

VARIANTS = imagenet_recipe.VARIANTS


def get_config(variant: str = "hard"):
  config = imagenet_recipe.recipe("base", variant, img_size=384, epochs=30, batch_size=512,
                                  lr=5e-6, weight_decay=1e-8, min_lr=5e-6)
  config.init_from = "REQUIRED: the 224 run (workdir, checkpoint or converted model dir)"
  return config
