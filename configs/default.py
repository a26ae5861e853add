"""The base config: every key a run reads, with the values of the DeiT ImageNet-1k recipe
(DeiT paper arXiv 2012.12877, Table 9; the official repo facebookresearch/deit, main.py
defaults). Every other file in configs/ starts from ``get_config()`` here and changes a
few keys, so each key is named and explained once.

Not a runnable config by itself (``model.name`` must be chosen): see ``deit_tiny.py``,
``fashion_mnist_deit_tiny.py`` and the others.
"""

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.dataset = "imagenet2012"     # a TFDS name, or "imagefolder:<root>"
  # An image folder's class order, which decides its labels: "string" (sorted names),
  # "numeric" (integer folder names by value; labels are ranks) or "auto" (numeric for
  # integer folders 0..N-1 or 1..N, string for other names). Checkpoints and teacher logits
  # record the class names they were made with and refuse data in another order.
  config.class_order = "auto"
  config.data_dir = ml_collections.config_dict.placeholder(str)    # e.g. gs://BUCKET/tfds
  config.manual_dir = ml_collections.config_dict.placeholder(str)  # e.g. the ILSVRC2012 tars
  config.train_split = "train"
  config.eval_split = "validation"
  config.num_classes = 1000
  # A subset of the data (transfer and few-label runs): class names or indices, comma
  # separated ("" = all), relabelled 0..k-1 in that order; per_class > 0 keeps that many
  # training examples of each (drawn with this seed); evaluation keeps the whole classes.
  config.subset = ml_collections.ConfigDict(dict(classes="", per_class=0, seed=0))

  # A registry name (timm's) plus overrides of its config; the keys depend on the model.
  # dtype: the compute dtype of matmuls, attention, GELU; residual_dtype: the residual
  # stream's (the official AMP run keeps it, LayerNorm, softmax and the loss in float32).
  config.model = ml_collections.ConfigDict(dict(
      name="REQUIRED", drop_path_rate=0.1, dtype="bfloat16", residual_dtype="float32",
      remat=False, attn_impl="xla"))
  config.aug = ml_collections.ConfigDict(dict(
      image_size=224, crop="rrc", pad=0, hflip=True, randaugment="rand-m9-mstd0.5-inc1",
      random_erasing=0.25, repeated_aug=3, crop_pct=0.875,
      mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), in_chans=3))
  config.mixup = ml_collections.ConfigDict(dict(
      mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, label_smoothing=0.1))

  config.batch_size = 1024            # global
  # The official run's GPU count: the global batch is laid out as this many equal groups of
  # rows, one GPU's batch each there: repeated-augmentation copies land in consecutive groups
  # (the official RASampler), and Mixup/CutMix draw once per group (per GPU, as timm's Mixup
  # does in each process). configs/imagenet_recipe.py sets the official commands' values.
  config.batch_groups = 1
  config.num_epochs = 300.0
  config.total_steps = 0              # > 0 overrides num_epochs
  config.grad_accum_steps = 1
  config.optimizer = ml_collections.ConfigDict(dict(
      name="adamw",                   # or "sgd" (Nesterov momentum, as timm's "sgd")
      momentum=0.9,                   # sgd only
      lr=5e-4, weight_decay=0.05, b1=0.9, b2=0.999, eps=1e-8,
      warmup_steps=-1,                # -1: warmup_epochs; 0: none; > 0: that many steps
      warmup_epochs=5.0, warmup_lr=1e-6, min_lr=1e-5, grad_clip_norm=0.0,
      # "epoch": timm's cosine stepped after each epoch, as the official loop (epoch k trains
      # at the value for k - 1); "step": per step, the cosine after the warm-up (short runs)
      schedule="epoch",
      decay_dist_token=True))         # the official code decays dist_token (not cls/pos)
  config.lr_scale_batch = 512         # lr = optimizer.lr * batch_size / lr_scale_batch

  config.distill = ml_collections.ConfigDict(dict(
      type="none",                    # none, soft (KL) or hard (teacher's argmax)
      alpha=0.5, tau=1.0, kl_reduction="numel",
      hard_smoothing=0.0,             # label smoothing of the teacher's hard label (paper: 0.1)
      teacher_logits="",              # precomputed: python -m deit_jax.teacher precompute
      teacher="",                     # or online: a checkpoint run inside the train step
      teacher_dtype="bfloat16"))

  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  config.seed = 0
  config.ema_decay = 0.99996          # 0: no EMA
  config.init_from = ""               # fine-tuning: a workdir, checkpoint, model dir or model name
  # "auto": keep init_from's classifier head(s) when the class count fits, re-initialise
  # otherwise; "reset": always re-initialise (other classes of the same count).
  config.init_from_head = "auto"
  config.log_every_steps = 100
  config.eval_every_steps = 5000      # 0: at the end only; < 0: never
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3
  config.best_metric = ""             # e.g. "eval_top1" or "eval_ema_top1": keep <workdir>/best
  return config
