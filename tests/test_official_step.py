"""Step for step against the official DeiT training loop (docs/fidelity.md).

The reference is the official training loop written out here from its source,
facebookresearch/deit at commit 7e160fe43f0252d17191b71cbb5826254114ea5b (the release
that trained the paper's models, ab57153 of 2021-01-18, has the same pieces used here):

* main.py: the linear lr scaling ``lr * batch_size * world_size / 512``, timm's
  ``create_optimizer(args, model)`` (AdamW; its weight-decay groups leave out 1-d
  parameters, biases and ``model.no_weight_decay()``), timm's ``create_scheduler(args,
  optimizer)`` stepped with ``lr_scheduler.step(epoch)`` after every epoch, timm's
  ``Mixup(mode="batch", label_smoothing=0.1)``, ``SoftTargetCrossEntropy`` wrapped in
  ``DistillationLoss``, ``ModelEma``;
* engine.py ``train_one_epoch``: ``mixup_fn(samples, targets)``, ``model(samples)``,
  ``criterion(samples, outputs, targets)`` -- the teacher runs on the mixed samples --,
  backward, optimizer step, EMA update;
* losses.py ``DistillationLoss`` (``_distillation_loss`` below);
* models.py ``DistilledVisionTransformer``: timm's ``VisionTransformerDistilled`` has its
  forward; its ``no_weight_decay`` is timm 0.3.2 VisionTransformer's {pos_embed,
  cls_token} (the official subclass adds nothing, so dist_token is decayed);
* several GPUs: every process runs Mixup on its own batch and DistributedDataParallel
  averages the gradients, i.e. the gradient of the mean of the processes' losses.

timm's Mixup draws from ``numpy.random``; the test hands it our draws for the same step
(``deit_jax.data.mixup.draw``), so both sides mix identically. Both sides start from the
same weights (``deit_jax.models.torch_weights``), see the same images and run a teacher
with the same weights. fp32, no drop path (its masks cannot be matched). The schedule is
shortened (6 epochs of 4 steps, 2 warm-up epochs), lr 1e-3 after scaling.
"""

import contextlib
import functools
import types

import jax
import numpy as np
import pytest

from configs import default
from conftest import require
from deit_jax import builder, sharding, train_step as ts
from deit_jax.data import mixup
from deit_jax.models import torch_weights
from deit_jax.teacher.feed import OnlineTeacher, Teacher

torch = require("torch")
timm = require("timm")
timm_mixup = require("timm.data.mixup")
F = torch.nn.functional
from timm.loss import SoftTargetCrossEntropy  # noqa: E402
from timm.optim import create_optimizer  # noqa: E402
from timm.scheduler import create_scheduler  # noqa: E402
from timm.utils import ModelEma  # noqa: E402

SMALL = dict(img_size=32, patch_size=8, in_chans=3, embed_dim=64, depth=2, num_heads=2)
CLASSES, BATCH, GROUPS, STEPS_PER_EPOCH, EPOCHS, WARMUP = 5, 16, 2, 4, 6, 2
LR = 1e-3 * 512 / BATCH  # optimizer.lr per 512 images: 1e-3 for this batch
OFFICIAL_NO_WEIGHT_DECAY = {"pos_embed", "cls_token"}  # timm 0.3.2 VisionTransformer


def _config(distilled, distillation, alpha=0.5, tau=1.0):
  """Our run: configs/default.py (the recipe's defaults) on a tiny model."""
  config = default.get_config()
  config.model.name = f"deit_tiny{'_distilled' if distilled else ''}_patch16_224"
  config.model.update(dict(SMALL, dtype="float32", drop_path_rate=0.0))
  config.num_classes = CLASSES
  config.batch_size = BATCH
  config.batch_groups = GROUPS
  config.num_epochs = float(EPOCHS)
  config.optimizer.lr = LR
  config.optimizer.warmup_epochs = float(WARMUP)
  config.ema_decay = 0.9
  config.distill.update(dict(type=distillation, alpha=alpha, tau=tau))
  return config


def _official_args(config):
  """main.py's argparse defaults, with this run's sizes."""
  return types.SimpleNamespace(
      opt="adamw", opt_eps=1e-8, opt_betas=None, momentum=0.9, weight_decay=0.05,
      lr=LR * (BATCH // GROUPS) * GROUPS / 512.0,  # main.py's linear scaling
      sched="cosine", epochs=EPOCHS, warmup_epochs=WARMUP, warmup_lr=1e-6, min_lr=1e-5,
      decay_rate=0.1, cooldown_epochs=10, lr_noise=None, seed=0,
      mixup=0.8, cutmix=1.0, cutmix_minmax=None, mixup_prob=1.0, mixup_switch_prob=0.5,
      mixup_mode="batch", smoothing=0.1,
      distillation_type=config.distill.type, distillation_alpha=config.distill.alpha,
      distillation_tau=config.distill.tau)


def _distillation_loss(base_criterion, teacher, kind, alpha, tau, inputs, outputs, labels):
  """losses.py ``DistillationLoss.forward``."""
  outputs_kd = None
  if not isinstance(outputs, torch.Tensor):
    outputs, outputs_kd = outputs
  base_loss = base_criterion(outputs, labels)
  if kind == "none":
    return base_loss
  with torch.no_grad():
    teacher_outputs = teacher(inputs)
  if kind == "soft":
    distillation_loss = F.kl_div(F.log_softmax(outputs_kd / tau, dim=1),
                                 F.log_softmax(teacher_outputs / tau, dim=1),
                                 reduction="sum", log_target=True)
    distillation_loss = distillation_loss * (tau * tau) / outputs_kd.numel()
  else:
    distillation_loss = F.cross_entropy(outputs_kd, teacher_outputs.argmax(dim=1))
  return base_loss * (1 - alpha) + distillation_loss * alpha


def _rand_bbox_0_3_2(img_shape, lam, margin=0., count=None):
  """timm 0.3.2's ``rand_bbox`` (data/mixup.py; the version the official requirements.txt
  pins): the box spans [c - cut // 2, c + cut // 2). Later timm versions end it at
  c + (cut + 1) // 2, one row/column more for odd sides."""
  ratio = np.sqrt(1 - lam)
  img_h, img_w = img_shape[-2:]
  cut_h, cut_w = int(img_h * ratio), int(img_w * ratio)
  margin_y, margin_x = int(margin * cut_h), int(margin * cut_w)
  cy = timm_mixup.np.random.randint(0 + margin_y, img_h - margin_y, size=count)
  cx = timm_mixup.np.random.randint(0 + margin_x, img_w - margin_x, size=count)
  return (np.clip(cy - cut_h // 2, 0, img_h), np.clip(cy + cut_h // 2, 0, img_h),
          np.clip(cx - cut_w // 2, 0, img_w), np.clip(cx + cut_w // 2, 0, img_w))


@contextlib.contextmanager
def _official_mixup_draws(draws: mixup.MixDraws, group: int):
  """timm's Mixup as of 0.3.2, drawing one group's ``draws``."""
  saved = timm_mixup.np, timm_mixup.rand_bbox
  timm_mixup.np, timm_mixup.rand_bbox = _ScriptedNumpy(draws, group), _rand_bbox_0_3_2
  try:
    yield
  finally:
    timm_mixup.np, timm_mixup.rand_bbox = saved


class _ScriptedNumpy:
  """``numpy`` for timm's mixup module, whose ``random`` replays one group's draws in the
  order timm takes them: rand() < prob, rand() < switch_prob, beta(), randint() x2."""

  def __init__(self, draws: mixup.MixDraws, group: int):
    self._rand = iter([0.0 if draws.apply[group] else 1.0,
                       0.0 if draws.use_cutmix[group] else 0.999])
    self._ints = iter(int(c) for c in draws.center[group])
    self._lam = float(draws.lam[group])
    self.random = types.SimpleNamespace(rand=lambda: next(self._rand),
                                        beta=lambda a, b: self._lam,
                                        randint=lambda low, high, size=None: next(self._ints))

  def __getattr__(self, name):
    return getattr(np, name)


def _torch_model(config, weights):
  model = timm.create_model(config.model.name, num_classes=CLASSES, drop_path_rate=0.0,
                            **SMALL)
  model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
  model.no_weight_decay = lambda: set(OFFICIAL_NO_WEIGHT_DECAY)
  if hasattr(model, "set_distilled_training"):
    model.set_distilled_training(True)  # the official forward: (cls, dist) in training
  return model


def _teacher(config, model, state, mesh):
  """A teacher of the student's architecture whose weights are the student's start moved
  by noise (spread-out logits), as ours (run online in our step) and as a timm model."""
  rng = np.random.RandomState(1)
  params = jax.tree.map(lambda p: np.asarray(p) + 0.1 * rng.randn(*p.shape).astype(np.float32),
                        jax.device_get(state.params))
  ours = model.definition.merge(params, jax.device_get(state.rest))
  return OnlineTeacher(ours, mesh), _torch_model(config, torch_weights.to_state_dict(ours)).eval()


def _batches():
  rng = np.random.RandomState(0)
  for _ in range(EPOCHS * STEPS_PER_EPOCH):
    yield (rng.randn(BATCH, SMALL["img_size"], SMALL["img_size"], 3).astype(np.float32),
           rng.randint(0, CLASSES, BATCH).astype(np.int32))


@functools.lru_cache(maxsize=None)
def _ours(distilled):
  """Our model, optimizer and compiled initialisation (shared by the distilled cases)."""
  config = _config(distilled, "hard" if distilled else "none")
  model = builder.model_from_config(config)
  tx, schedule, _ = builder.optimizer_from_config(
      config, model, steps_per_epoch=STEPS_PER_EPOCH, total_steps=EPOCHS * STEPS_PER_EPOCH)
  mesh = sharding.make_mesh(config.mesh.to_dict())
  state_sharding, init = builder.build_state(model, tx, mesh, seed=config.seed, ema=True)
  return model, tx, schedule, mesh, state_sharding, init


_draw = jax.jit(mixup.draw, static_argnames=("config", "height", "width"))


def run_both(config):
  """(our per-step losses, official per-step losses, our final params / EMA as timm state
  dicts, the official model's and its EMA's)."""
  model, tx, schedule, mesh, state_sharding, init = _ours("_distilled" in config.model.name)
  state = init()
  to_torch = lambda params: torch_weights.to_state_dict(
      model.definition.merge(params, state.rest))
  teacher, torch_teacher = Teacher(), None
  if config.distill.type != "none":
    teacher, torch_teacher = _teacher(config, model, state, mesh)
  step = builder.train_step_from_config(config, model, tx, schedule, state_sharding, mesh,
                                        teacher)
  # One draw per official process, whatever our config plumbing does with batch_groups.
  per_process = mixup.MixupConfig(**config.mixup.to_dict(), groups=GROUPS)
  draw = functools.partial(_draw, config=per_process, height=SMALL["img_size"],
                           width=SMALL["img_size"])

  args = _official_args(config)
  official = _torch_model(config, to_torch(state.params))
  optimizer = create_optimizer(args, official)
  lr_scheduler, _ = create_scheduler(args, optimizer)
  ema = ModelEma(official, decay=config.ema_decay)
  mixup_fn = timm_mixup.Mixup(
      mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
      prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
      label_smoothing=args.smoothing, num_classes=CLASSES)
  criterion = SoftTargetCrossEntropy()
  per_gpu = BATCH // GROUPS

  ours, theirs = [], []
  batches = _batches()
  for epoch in range(EPOCHS):
    official.train()
    for _ in range(STEPS_PER_EPOCH):
      images, labels = next(batches)
      draws = jax.device_get(draw(ts.step_key(state.rng, state.step)))
      state, metrics = step(state, {"image": images, "label": labels})
      ours.append(float(metrics["train_loss"]))

      losses = []
      for g in range(GROUPS):  # one official process per group
        rows = slice(g * per_gpu, (g + 1) * per_gpu)
        samples = torch.from_numpy(images[rows].transpose(0, 3, 1, 2).copy())
        targets = torch.from_numpy(labels[rows].astype(np.int64))
        with _official_mixup_draws(draws, g):
          samples, targets = mixup_fn(samples, targets)
        outputs = official(samples)
        losses.append(_distillation_loss(criterion, torch_teacher, args.distillation_type,
                                         args.distillation_alpha, args.distillation_tau,
                                         samples, outputs, targets))
      loss = torch.stack(losses).mean()  # DDP: the gradient of the processes' mean
      theirs.append(loss.item())
      optimizer.zero_grad()
      loss.backward()
      optimizer.step()
      ema.update(official)
    lr_scheduler.step(epoch)
  return (np.array(ours), np.array(theirs), to_torch(state.params), to_torch(state.ema),
          official.state_dict(), ema.ema.state_dict())


CASES = {
    "plain": (False, "none"),
    "distilled_hard": (True, "hard"),
    "distilled_soft": (True, "soft"),
}


@pytest.fixture
def one_torch_thread():
  """timm's side of a model this small runs fastest (and steadiest) on one thread."""
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


@pytest.mark.parametrize("case", CASES)
def test_training_matches_the_official_loop_step_for_step(case, one_torch_thread):
  assert_matches(*run_both(_config(*CASES[case])))


def assert_matches(ours, theirs, params, ema, official, official_ema):
  assert len(ours) == EPOCHS * STEPS_PER_EPOCH
  np.testing.assert_allclose(ours, theirs, rtol=1e-4, err_msg="per-step losses")
  assert set(params) == set(official)
  for key, want in official.items():
    np.testing.assert_allclose(params[key], want.numpy(), atol=1e-4, err_msg=key)
    np.testing.assert_allclose(ema[key], official_ema[key].numpy(), atol=1e-4, err_msg=key)
  # Tighter, so that small recipe differences (e.g. weight decay on dist_token: ~1e-5 here)
  # cannot hide under the tolerance. Rounding leaves ~1e-7, except on the attention's key
  # bias: softmax ignores it, its true gradient is zero and Adam turns its rounding noise
  # into updates of ~1e-5, so it is held to the 1e-4 above only. The EMA is held to the
  # same tolerance as the parameters, so that an off-by-one in its update order (the EMA of
  # the weights before the step instead of after it) fails.
  for ours_, theirs_, what in ((params, official, "params"), (ema, official_ema, "EMA")):
    for key, want in theirs_.items():
      got, want = ours_[key], want.numpy()
      if key.endswith("attn.qkv.bias"):
        width = got.shape[0] // 3
        got = np.delete(got, np.s_[width:2 * width])
        want = np.delete(want, np.s_[width:2 * width])
      np.testing.assert_allclose(got, want, rtol=0, atol=2e-6, err_msg=f"{what} {key}")


@pytest.mark.parametrize("residual_dtype", ["float32", "bfloat16"])
def test_bf16_compute_carries_the_residual_stream_in_residual_dtype(residual_dtype,
                                                                    monkeypatch):
  """Official AMP sums the residual stream in float32 (fp16 autocast covers the matmuls):
  the default; ``residual_dtype=bfloat16`` carries it in the compute dtype."""
  from deit_jax.models import create_model, vit
  seen = []
  monkeypatch.setattr(vit, "constrain", lambda x, names: seen.append(x.dtype) or x)
  overrides = dict(SMALL, num_classes=CLASSES, dtype="bfloat16")
  if residual_dtype != "float32":
    overrides["residual_dtype"] = residual_dtype

  def train_forward(images):
    model = create_model("deit_tiny_distilled_patch16_224", **overrides)
    model.train()
    return model(images)

  outputs = jax.eval_shape(train_forward, jax.ShapeDtypeStruct((2, 32, 32, 3), "float32"))
  assert seen == [np.dtype(residual_dtype)] * (1 + SMALL["depth"])  # tokens, every block
  assert all(o.dtype == np.float32 for o in outputs)


def test_384_finetune_follows_the_official_code():
  """No stochastic depth while fine-tuning (the official code keeps the model in eval mode)
  and evaluation resized to 438 then centre-cropped to 384 (crop_pct 0.875)."""
  from configs import deit_base_384_finetune
  for variant in ("none", "hard"):
    config = deit_base_384_finetune.get_config(variant)
    assert config.model.drop_path_rate == 0.0
    assert int(config.aug.image_size / config.aug.crop_pct) == 438
