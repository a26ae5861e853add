"""CNN teachers for Fashion-MNIST: cifar_resnet8 for the chain, cifar_resnet20 for the
reproduction; plain CE.

Commands (2 CPU cores):
    python -m deit_jax.main --config=configs/fashion_mnist_resnet_teacher.py \
        --workdir=workdirs/fmnist_teacher                      # quick: 1 epoch
    python -m deit_jax.main --config=configs/fashion_mnist_resnet_teacher.py:full \
        --workdir=workdirs/fmnist_teacher_full                 # 10 epochs

DeiT's finding is that a convnet teacher beats a transformer teacher of equal accuracy;
these ResNets (He et al. 2016, CIFAR variant, zero-init last BN per block) are that
teacher for 28x28 images. Recipe: AdamW (lr 3e-3 at batch 128, i.e. 1.2e-2 per 512),
weight decay 0.05, no label smoothing, warm-up + cosine, fp32.

Variants:
  quick  cifar_resnet8 (78k parameters, ~2.6x fewer FLOPs than resnet20), 468 steps = 1
         epoch, no augmentation (a single epoch gains nothing from it: 85.1% test without,
         80.7% with pad-crop + flip) -- what the chain trains;
  full   cifar_resnet20 (0.27M), 4,680 steps = 10 epochs, pad-2 random crop + flip -- the
         reproduction's teacher.
Measured time and accuracy: docs/reproduction.md.
"""

import ml_collections

from configs import fashion_mnist_deit_tiny

VARIANTS = ("quick", "full")


def get_config(variant: str = "quick"):
  if variant not in VARIANTS:
    raise ValueError(f"variant must be quick or full, got {variant!r}")
  config = fashion_mnist_deit_tiny.get_config()
  config.model = ml_collections.ConfigDict(dict(
      name="cifar_resnet8" if variant == "quick" else "cifar_resnet20", img_size=28,
      in_chans=1, width=1, drop_rate=0.0, dtype="float32"))
  config.total_steps = 468 if variant == "quick" else 468 * 10
  config.optimizer.lr = 3e-3 * 4
  config.optimizer.warmup_steps = 50 if variant == "quick" else 200
  config.mixup.label_smoothing = 0.0
  config.ema_decay = 0.0
  if variant == "quick":
    config.aug.pad, config.aug.hflip = 0, False
  config.eval_every_steps = 0 if variant == "quick" else 468 * 5
  config.checkpoint_every_steps = 234
  return config
