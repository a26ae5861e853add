"""DeiT-B fine-tuned from ImageNet weights on the paper's transfer datasets (its Table 7).

Variant: ``<dataset>[,distilled][,384]``, dataset one of cifar10, cifar100, flowers, cars,
inat18, inat19. ``distilled`` fine-tunes DeiT-B-distilled with hard distillation from
teacher logits precomputed on the target dataset (the authors keep the distillation
signal while fine-tuning a distilled model); ``384`` fine-tunes at 384x384. Images of
every dataset are upscaled to the model's resolution; the patch size stays 16.

Commands (ImageNet weights: a converted official checkpoint, or any of our runs):
    python -m deit_jax.convert deit_base_patch16_224-b5f2ef4d.pth \
        --model deit_base_patch16_224 --out ckpt/deit_b
    python -m deit_jax.main --config=configs/transfer.py:cifar10 --workdir=runs/c10 \
        --config.init_from=ckpt/deit_b --config.data_dir=gs://BUCKET/tfds
    # distilled: the teacher's logits on the target train split first
    python -m deit_jax.teacher precompute --config=configs/transfer.py:cifar10,distilled \
        --checkpoint=<teacher fine-tuned on cifar10> --split=train --out=logits/c10
    python -m deit_jax.main --config=configs/transfer.py:cifar10,distilled \
        --workdir=runs/c10_dist --config.init_from=ckpt/deit_b_dist \
        --config.distill.teacher_logits=logits/c10
    # iNaturalist: your copy as an image folder <root>/{train,val}/<class>/<image>
    python -m deit_jax.main --config=configs/transfer.py:inat18 --workdir=runs/inat18 \
        --config.init_from=ckpt/deit_b --config.dataset=imagefolder:/data/inat2018

``init_from`` re-initialises the classifier head(s) for the new class count and resamples
the position embedding for 384 (the trainer logs both).

Recipes, as the DeiT authors gave them in the official repository's issues
(facebookresearch/deit #45, #105, #175): CIFAR-10 and Stanford Cars with SGD (momentum
0.9), lr 0.01 per 512 images, weight decay 1e-4, batch 768, 1000 epochs, no random erasing
and no stochastic depth, everything else as the ImageNet recipe; CIFAR-100 with AdamW, lr
5e-6, weight decay 0.05, 1000 epochs and the full ImageNet augmentation; iNaturalist
2018/2019 with AdamW, lr 7.5e-5, 360 epochs, random erasing 0.1. Flowers-102 has no
published recipe: it uses the Cars one (another small fine-grained set; our choice).

Expected top-1 (paper Table 7; DeiT-B / DeiT-B 384 / DeiT-B-distilled / distilled 384):
    CIFAR-10     99.1 / 99.1 / 99.1 / 99.1
    CIFAR-100    90.8 / 90.8 / 91.3 / 91.3
    Flowers-102  98.4 / 98.5 / 98.8 / 98.9
    Stanford Cars 92.1 / 93.3 / 92.9 / 93.9
    iNat-2018    73.2 / 79.5 / 73.7 / 80.1
    iNat-2019    77.7 / 81.4 / 78.4 / 83.0
Expected runtime: CIFAR (50k images x 1000 epochs at 224) ~ 160 ImageNet-epochs of DeiT-B,
about 5 h on a TPU v4-32 (estimate from the ImageNet config's). Not run by us: the
datasets need downloads this project's test machines do not have.
"""

from configs import imagenet_recipe

# dataset key -> (TFDS name or image folder, train split, eval split, classes, recipe)
DATASETS = {
    "cifar10": ("cifar10", "train", "test", 10, "sgd"),
    "cifar100": ("cifar100", "train", "test", 100, "adamw_cifar"),
    "flowers": ("oxford_flowers102", "train", "test", 102, "sgd"),
    "cars": ("cars196", "train", "test", 196, "sgd"),
    "inat18": ("imagefolder:REQUIRED_inat2018_root", "train", "val", 8142, "adamw_inat"),
    "inat19": ("imagefolder:REQUIRED_inat2019_root", "train", "val", 1010, "adamw_inat"),
}
# Every dataset with and without distillation, at 224 and 384.
VARIANTS = tuple(",".join([d, *extra]) for d in DATASETS
                 for extra in ((), ("distilled",), ("384",), ("distilled", "384")))


def get_config(variant: str = "cifar10"):
  dataset, *options = [part.strip() for part in variant.split(",")]
  if dataset not in DATASETS or not set(options) <= {"distilled", "384"}:
    raise ValueError(f"variant must be <dataset>[,distilled][,384] with dataset one of "
                     f"{', '.join(DATASETS)}, got {variant!r}")
  name, train_split, eval_split, classes, recipe = DATASETS[dataset]
  img_size = 384 if "384" in options else 224
  config = imagenet_recipe.recipe("base", "hard" if "distilled" in options else "none",
                                  img_size=img_size, batch_size=768)
  config.dataset, config.num_classes = name, classes
  config.train_split, config.eval_split = train_split, eval_split
  config.init_from = "REQUIRED: ImageNet weights (converted model dir, workdir or checkpoint)"
  if recipe == "sgd":
    config.optimizer.update(dict(name="sgd", lr=0.01, weight_decay=1e-4))
    config.model.drop_path_rate = 0.0
    config.aug.random_erasing = 0.0
    config.num_epochs = 1000.0
  elif recipe == "adamw_cifar":
    config.optimizer.update(dict(lr=5e-6, weight_decay=0.05))
    config.num_epochs = 1000.0
  else:
    config.optimizer.update(dict(lr=7.5e-5, weight_decay=0.05))
    config.aug.random_erasing = 0.1
    config.num_epochs = 360.0
  config.eval_every_steps = 2000
  return config

