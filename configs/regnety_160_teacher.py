"""The DeiT teacher, RegNetY-16GF (timm's ``regnety_160``), on ImageNet-1k: the data and eval
transform for running the official teacher weights, not a recipe to train it.

The weights: facebookresearch/deit's ``regnety_160-a5fe301d.pth`` (the file its main.py
loads with ``--teacher-path``), converted once on any machine with PyTorch
(``bash launch/setup.sh torch``; docs/launch.md step 4):
    python -m deit_jax.convert regnety_160-a5fe301d.pth --model=regnety_160 \
        --out=gs://BUCKET/models/regnety_160

Commands:
    python -m deit_jax.evaluate --config=configs/regnety_160_teacher.py \
        --checkpoint=gs://BUCKET/models/regnety_160 --config.data_dir=gs://BUCKET/tfds
        # the teacher's ImageNet top-1 (the DeiT paper's Table 2: 82.9%)
    python -m deit_jax.teacher precompute --config=configs/regnety_160_teacher.py \
        --checkpoint=gs://BUCKET/models/regnety_160 --split=train \
        --out=gs://BUCKET/teacher_logits/regnety160 [--multihost]
        # the logits that configs/deit_*.py read (distill.teacher_logits);
        # launch/tpu_vm.sh precompute runs this on every worker of a TPU VM

The architecture comes from the model directory; this config gives the dataset, the class
count and the eval transform: resize to 224 / 0.875 = 256 (bicubic), centre crop 224,
ImageNet mean/std -- DeiT's own eval transform (facebookresearch/deit datasets.py,
``build_transform``), the geometry the teacher's online logits see in the paper's recipe.
timm's default config for these weights says crop_pct 0.95 (its RegNet default):
``--config.aug.crop_pct=0.95`` follows it. ``batch_size`` is per process in precompute
(split over the process's local devices) and global in evaluate; fp32 forward.
"""

import ml_collections

from configs import default


def get_config():
  config = default.get_config()
  # evaluate's compute dtype is model.dtype; precompute runs the model as saved (fp32)
  config.model = ml_collections.ConfigDict(dict(name="regnety_160", drop_rate=0.0,
                                                dtype="float32"))
  config.aug.image_size = 224
  config.aug.crop_pct = 0.875
  config.batch_size = 1024
  config.distill.type = "none"
  return config
