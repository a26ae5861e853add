"""DeiT-B fine-tuned at 384x384 from a 224 run, 30 epochs: the official fine-tuning command
(facebookresearch/deit README_deit.md: 2 nodes x 8 GPUs x 32 images, lr 5e-6 per 512,
weight decay 1e-8, min lr 5e-6, the 224 recipe's augmentation).

As the official code that made the paper's 384 models (the release of 2021-01-18,
commit ab57153) fine-tunes: the model stays in eval mode while fine-tuning
(``set_training_mode=args.finetune == ''`` in main.py), so no stochastic depth
(``drop_path_rate=0``); evaluation resizes to 438 and centre-crops 384 (its datasets.py:
int(256 / 224 * 384)); the position embedding of the 224 checkpoint is resampled to the
24x24 grid (bicubic).

Variants, with the ImageNet top-1 at 384 the paper (arXiv 2012.12877) reports:
  none  DeiT-B 384 from a plain DeiT-B: 83.1 (the released weights: 82.9, README_deit.md)
        python -m deit_jax.main --config=configs/deit_base_384_finetune.py:none \
            --workdir=gs://BUCKET/runs/deit_base_384 --config.data_dir=gs://BUCKET/tfds \
            --config.init_from=gs://BUCKET/runs/deit_base
  hard  (default) DeiT-B-distilled 384 with hard distillation kept while fine-tuning, the
        teacher's logits of 384 inputs: 84.5 (300 epochs at 224; 85.2 after 1000)
        ... --config=configs/deit_base_384_finetune.py \
            --config.init_from=gs://BUCKET/runs/deit_base_distilled \
            --config.distill.teacher_logits=gs://BUCKET/teacher_logits/regnety160_384
  online  "hard" with the teacher run on the batch (distill.teacher), as the paper's text
          describes (the teacher at the target resolution)
The official code has no command for the distilled 384 model: its main.py refuses
fine-tuning with distillation ("not yet supported"), the distilled 384 weights were added
without training code (facebookresearch/deit#55), and the authors advise keeping the
distillation signal while fine-tuning (facebookresearch/deit#45). The precomputed variant
approximates the online teacher (docs/fidelity.md).

From the official weights instead of a run of ours:
    python -m deit_jax.convert deit_base_distilled_patch16_224-df68dfff.pth \
        --model=deit_base_distilled_patch16_384 --img_size=384 --out=ckpt/deit_b_384
    ... --config.init_from=ckpt/deit_b_384

Expected runtime: ~3 h on a TPU v4-32 (estimate: 30 epochs at 384, ~3.2x the FLOPs of 224).

The paper's Table 5 (arXiv 2012.12877; top-1 % on ImageNet val / ImageNet-ReaL /
ImageNet-V2 matched frequency; images/s on one 16GB V100):
  DeiT-B↑384    83.1 / 87.7 / 72.4, 85.9 images/s
  DeiT-B⚗↑384   84.5 / 89.0 / 74.8, 85.8 images/s (300 epochs at 224; 1000: 85.2 / 89.3 / 75.2)
A checkpoint's own row: python -m deit_jax.table5 (docs/training.md).
"""

from configs import imagenet_recipe

VARIANTS = imagenet_recipe.VARIANTS


def get_config(variant: str = "hard"):
  config = imagenet_recipe.recipe("base", variant, img_size=384, epochs=30, batch_size=512,
                                  lr=5e-6, weight_decay=1e-8, min_lr=5e-6, drop_path_rate=0.0)
  config.init_from = "REQUIRED: the 224 run (workdir, checkpoint or converted model dir)"
  return config
