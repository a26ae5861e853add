"""DeiT: the ViT of Dosovitskiy et al. plus the distillation token of Touvron et al.

Layout follows the official code (facebookresearch/deit, on top of timm's ViT):
tokens ``[cls, dist, patch_1..patch_N]`` (row-major patches), one learned position
embedding added to all of them, pre-norm blocks with exact GELU and LayerNorm eps
1e-6, a final LayerNorm and one linear head per token.

Numerics: matmuls, attention and GELU compute in ``dtype`` (e.g. bfloat16), LayerNorm
statistics and the attention softmax in float32, and the residual stream (the sums
``x + branch``) in ``residual_dtype``, float32 by default like the official AMP training.

Every parameter carries logical axis names (see ``LOGICAL_AXES``) in its ``out_sharding``
metadata; they stay metadata (``eager_sharding=False``) until the trainer maps them to a
mesh with its rules table.

Train/eval convention (NNX): ``model.train()`` makes a distilled model return the pair
``(cls_logits, dist_logits)`` -- each head gets its own loss -- and enables dropout and
drop-path; ``model.eval()`` returns ``(cls + dist) / 2``, the logit average the published
accuracies use. ``model(x, head=...)`` picks a head explicitly ("cls", "dist", "avg",
"both") for analysis.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from deit_jax.errors import ConfigError
from deit_jax.models.convnet import dtype_problems
from deit_jax.sharding import constrain

# Vocabulary of logical axis names; the sharding rules table maps these to mesh axes.
LOGICAL_AXES = ("embed", "mlp", "heads", "kv", "classes", "qkv", "patch")
# The residual stream (batch, tokens, embed): split by examples only, whatever the
# parameters' sharding (deit_jax.sharding.constrain).
_TOKENS = ("batch", None, None)

HeadChoice = Literal["cls", "dist", "avg", "both"]
AttentionImpl = Literal["xla", "dot_product", "cudnn"]

# timm's trunc_normal_(std=.02) truncates at +-2 in absolute units, i.e. at +-100 std:
# in effect a plain normal. jax's bounds are in units of std, so say so explicitly.
_trunc_normal_02 = nnx.initializers.truncated_normal(stddev=0.02, lower=-100.0, upper=100.0)
_zeros = nnx.initializers.zeros_init()
_ones = nnx.initializers.ones_init()


@dataclasses.dataclass(frozen=True)
class DeiTConfig:
  """Architecture and numerics of one DeiT variant (all JSON-serialisable)."""

  num_classes: int = 1000
  img_size: int = 224
  patch_size: int = 16
  in_chans: int = 3
  embed_dim: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  distilled: bool = False
  drop_rate: float = 0.0
  attn_drop_rate: float = 0.0
  drop_path_rate: float = 0.0
  dtype: str = "float32"        # compute dtype
  param_dtype: str = "float32"  # storage dtype of the master weights
  # The residual stream's dtype: float32 as the official AMP run (its autocast computes
  # matmuls in half precision, but the block sums x + branch, like the LayerNorms, stay in
  # float32); set it to ``dtype`` to carry the stream in the compute dtype.
  residual_dtype: str = "float32"
  remat: bool = False           # rematerialise each block in the backward pass
  attn_impl: AttentionImpl = "xla"

  def __post_init__(self):
    problems = []
    for key in ("num_classes", "img_size", "patch_size", "in_chans", "embed_dim",
                "depth", "num_heads"):
      value = getattr(self, key)
      if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        problems.append(f"{key} must be a positive integer, got {value!r}")
    if not problems:
      if self.img_size % self.patch_size:
        problems.append(f"img_size {self.img_size} is not a multiple of patch_size "
                        f"{self.patch_size}")
      if self.embed_dim % self.num_heads:
        problems.append(f"embed_dim {self.embed_dim} is not divisible by num_heads "
                        f"{self.num_heads}")
      if int(self.embed_dim * self.mlp_ratio) < 1:
        problems.append(f"mlp_ratio {self.mlp_ratio} gives an empty MLP")
    for key in ("drop_rate", "attn_drop_rate", "drop_path_rate"):
      value = getattr(self, key)
      if not 0.0 <= value < 1.0:
        problems.append(f"{key} must be in [0, 1), got {value!r}")
    problems += dtype_problems(self)
    try:
      jnp.dtype(self.residual_dtype)
    except TypeError:
      problems.append(f"residual_dtype {self.residual_dtype!r} is not a dtype name")
    if self.attn_impl not in ("xla", "dot_product", "cudnn"):
      problems.append(f"attn_impl must be 'xla', 'dot_product' or 'cudnn', "
                      f"got {self.attn_impl!r}")
    elif self.attn_impl != "xla" and self.attn_drop_rate:
      problems.append("attn_drop_rate > 0 needs attn_impl='xla' (fused attention has "
                      "no dropout on the probabilities)")
    if problems:
      raise ConfigError("invalid DeiT config: " + "; ".join(problems))

  @property
  def grid_size(self) -> int:
    return self.img_size // self.patch_size

  @property
  def num_patches(self) -> int:
    return self.grid_size ** 2

  @property
  def num_prefix_tokens(self) -> int:
    return 2 if self.distilled else 1

  @property
  def head_dim(self) -> int:
    return self.embed_dim // self.num_heads

  @property
  def mlp_dim(self) -> int:
    return int(self.embed_dim * self.mlp_ratio)


def _param(rngs: nnx.Rngs, init, shape, names, param_dtype) -> nnx.Param:
  """A parameter annotated with logical axis names (metadata only, no eager sharding)."""
  assert len(names) == len(shape), (names, shape)
  return nnx.Param(init(rngs.params(), shape, param_dtype), out_sharding=tuple(names),
                   eager_sharding=False)


def _torch_default_uniform(fan_in: int):
  """PyTorch's default Conv/Linear init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def _layer_norm(dim: int, cfg: DeiTConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
  # use_fast_variance=False: E[(x-mean)^2] like torch, not E[x^2]-mean^2.
  return nnx.LayerNorm(
      dim, epsilon=1e-6, use_fast_variance=False, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
      scale_init=nnx.with_partitioning(_ones, ("embed",), eager_sharding=False),
      bias_init=nnx.with_partitioning(_zeros, ("embed",), eager_sharding=False),
      rngs=rngs)


def _linear(din: int, dout: int, names, cfg: DeiTConfig, rngs: nnx.Rngs) -> nnx.Linear:
  return nnx.Linear(
      din, dout, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
      kernel_init=nnx.with_partitioning(_trunc_normal_02, names, eager_sharding=False),
      bias_init=nnx.with_partitioning(_zeros, names[-1:], eager_sharding=False),
      rngs=rngs)


class PatchEmbed(nnx.Module):
  """Conv(k=p, stride=p) as reshape + matmul; the kernel keeps the conv's HWIO shape."""

  def __init__(self, cfg: DeiTConfig, *, rngs: nnx.Rngs):
    p, c, d = cfg.patch_size, cfg.in_chans, cfg.embed_dim
    init = _torch_default_uniform(p * p * c)  # the official code leaves the conv at torch's init
    self.patch_size = p
    self.dtype = cfg.dtype
    self.kernel = _param(rngs, init, (p, p, c, d), ("patch", "patch", None, "embed"),
                         cfg.param_dtype)
    self.bias = _param(rngs, init, (d,), ("embed",), cfg.param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    p = self.patch_size
    x = x.astype(self.dtype).reshape(b, h // p, p, w // p, p, c)
    x = x.transpose(0, 1, 3, 2, 4, 5).reshape(b, (h // p) * (w // p), p * p * c)
    kernel = self.kernel[...].astype(self.dtype).reshape(p * p * c, -1)
    return x @ kernel + self.bias[...].astype(self.dtype)


class Attention(nnx.Module):
  """Multi-head self-attention; fused qkv kernel stored as (D, 3, heads, head_dim)."""

  def __init__(self, cfg: DeiTConfig, *, rngs: nnx.Rngs):
    d, h, k = cfg.embed_dim, cfg.num_heads, cfg.head_dim
    pd = cfg.param_dtype
    self.dtype = cfg.dtype
    self.impl = cfg.attn_impl
    self.scale = k ** -0.5
    self.qkv_kernel = _param(rngs, _trunc_normal_02, (d, 3, h, k),
                             ("embed", "qkv", "heads", "kv"), pd)
    self.qkv_bias = (_param(rngs, _zeros, (3, h, k), ("qkv", "heads", "kv"), pd)
                     if cfg.qkv_bias else None)
    self.proj_kernel = _param(rngs, _trunc_normal_02, (h, k, d), ("heads", "kv", "embed"), pd)
    self.proj_bias = _param(rngs, _zeros, (d,), ("embed",), pd)
    self.attn_drop = nnx.Dropout(cfg.attn_drop_rate, rngs=rngs)
    self.proj_drop = nnx.Dropout(cfg.drop_rate, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    dt = self.dtype
    if self.impl == "xla":
      # Heads-major (B, H, N, hd) with plain batched matmuls: the fastest layout on
      # XLA:CPU, and the only path with dropout on the attention probabilities.
      qkv = jnp.einsum("bnd,dthk->tbhnk", x, self.qkv_kernel[...].astype(dt))
      if self.qkv_bias is not None:
        qkv = qkv + self.qkv_bias[...].astype(dt)[:, None, :, None, :]
      q, k, v = qkv[0] * jnp.asarray(self.scale, dt), qkv[1], qkv[2]
      logits = jnp.einsum("bhqk,bhnk->bhqn", q, k)
      probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(dt)
      probs = self.attn_drop(probs)
      out = jnp.einsum("bhqn,bhnk->bhqk", probs, v)
      y = jnp.einsum("bhqk,hkd->bqd", out, self.proj_kernel[...].astype(dt))
    else:
      qkv = jnp.einsum("bnd,dthk->tbnhk", x, self.qkv_kernel[...].astype(dt))
      if self.qkv_bias is not None:
        qkv = qkv + self.qkv_bias[...].astype(dt)[:, None, None, :, :]
      out = jax.nn.dot_product_attention(
          qkv[0], qkv[1], qkv[2], scale=self.scale,
          implementation="cudnn" if self.impl == "cudnn" else None)
      y = jnp.einsum("bnhk,hkd->bnd", out, self.proj_kernel[...].astype(dt))
    return self.proj_drop(y + self.proj_bias[...].astype(dt))


@jax.custom_jvp
def gelu(x: jax.Array) -> jax.Array:
  """Exact GELU, x * Phi(x), as torch.nn.GELU().

  Written with erf and a hand-written derivative: ``jax.nn.gelu(approximate=False)``
  goes through erfc, whose branchy expansion XLA:CPU recomputes in several fusions of the
  backward pass; this form cut GELU's share of a DeiT-Ti train step from ~170 to ~60 ms
  (profiled on 2 cores). Matches jax.nn.gelu to 1e-6.
  """
  return x * _normal_cdf(x)


def _normal_cdf(x):
  return 0.5 * (1.0 + jax.lax.erf(x * np.asarray(2 ** -0.5, x.dtype)))


@gelu.defjvp
def _gelu_jvp(primals, tangents):
  (x,), (dx,) = primals, tangents
  cdf = _normal_cdf(x)
  pdf = jnp.exp(-0.5 * x * x) * np.asarray((2 * np.pi) ** -0.5, x.dtype)
  return x * cdf, (cdf + x * pdf) * dx


class Mlp(nnx.Module):

  def __init__(self, cfg: DeiTConfig, *, rngs: nnx.Rngs):
    self.fc1 = _linear(cfg.embed_dim, cfg.mlp_dim, ("embed", "mlp"), cfg, rngs)
    self.fc2 = _linear(cfg.mlp_dim, cfg.embed_dim, ("mlp", "embed"), cfg, rngs)
    self.drop = nnx.Dropout(cfg.drop_rate, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.drop(gelu(self.fc1(x)))
    return self.drop(self.fc2(x))


class DropPath(nnx.Module):
  """Stochastic depth: drop whole samples of a residual branch, rescale the kept ones."""

  def __init__(self, rate: float, *, rngs: nnx.Rngs, deterministic: bool = False):
    self.rate = float(rate)
    self.deterministic = deterministic
    self.rngs = rngs["dropout"].fork() if self.rate > 0 else nnx.data(None)

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.deterministic or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    mask = jax.random.bernoulli(self.rngs(), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros((), x.dtype))


class Block(nnx.Module):
  """Pre-norm transformer block: x + DropPath(Attn(LN(x))), x + DropPath(MLP(LN(x)))."""

  def __init__(self, cfg: DeiTConfig, drop_path: float, *, rngs: nnx.Rngs):
    self.norm1 = _layer_norm(cfg.embed_dim, cfg, rngs)
    self.attn = Attention(cfg, rngs=rngs)
    self.drop_path1 = DropPath(drop_path, rngs=rngs)
    self.norm2 = _layer_norm(cfg.embed_dim, cfg, rngs)
    self.mlp = Mlp(cfg, rngs=rngs)
    self.drop_path2 = DropPath(drop_path, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """``x`` in the residual dtype; the branches compute in the compute dtype."""
    x = x + self.drop_path1(self.attn(self.norm1(x))).astype(x.dtype)
    return x + self.drop_path2(self.mlp(self.norm2(x))).astype(x.dtype)


def _apply_block(block: Block, x: jax.Array) -> jax.Array:
  return block(x)


class VisionTransformer(nnx.Module):
  """DeiT / ViT classifier; ``config.distilled`` adds the distillation token and head."""

  def __init__(self, config: DeiTConfig, *, rngs: nnx.Rngs):
    cfg = self.config = config
    d, pd = cfg.embed_dim, cfg.param_dtype
    self.patch_embed = PatchEmbed(cfg, rngs=rngs)
    self.cls_token = _param(rngs, _trunc_normal_02, (1, 1, d), (None, None, "embed"), pd)
    self.dist_token = (_param(rngs, _trunc_normal_02, (1, 1, d), (None, None, "embed"), pd)
                       if cfg.distilled else None)
    self.pos_embed = _param(rngs, _trunc_normal_02,
                            (1, cfg.num_patches + cfg.num_prefix_tokens, d),
                            (None, None, "embed"), pd)
    self.pos_drop = nnx.Dropout(cfg.drop_rate, rngs=rngs)
    # Stochastic depth grows linearly from 0 at the first block to the rate at the last.
    rates = np.linspace(0.0, cfg.drop_path_rate, cfg.depth)
    self.blocks = nnx.List([Block(cfg, float(r), rngs=rngs) for r in rates])
    self.norm = _layer_norm(d, cfg, rngs)
    self.head = _linear(d, cfg.num_classes, ("embed", "classes"), cfg, rngs)
    self.head_dist = (_linear(d, cfg.num_classes, ("embed", "classes"), cfg, rngs)
                      if cfg.distilled else None)
    self.deterministic = False  # flipped by model.train() / model.eval()

  def _check_input(self, images: jax.Array) -> None:
    cfg = self.config
    want = (cfg.img_size, cfg.img_size, cfg.in_chans)
    if images.ndim != 4 or tuple(images.shape[1:]) != want:
      raise ValueError(f"expected images of shape (batch, {want[0]}, {want[1]}, {want[2]}) "
                       f"(NHWC), got {tuple(images.shape)}")

  def forward_features(self, images: jax.Array) -> jax.Array:
    """Images (B, H, W, C) -> final-LayerNorm token features (B, prefix + N, D)."""
    self._check_input(images)
    cfg = self.config
    x = self.patch_embed(images)
    b, rd = x.shape[0], cfg.residual_dtype
    prefix = [self.cls_token] + ([self.dist_token] if cfg.distilled else [])
    tokens = [jnp.broadcast_to(t[...].astype(rd), (b, 1, cfg.embed_dim)) for t in prefix]
    x = jnp.concatenate(tokens + [x.astype(rd)], axis=1) + self.pos_embed[...].astype(rd)
    x = constrain(self.pos_drop(x), _TOKENS)
    block_fn = nnx.remat(_apply_block) if cfg.remat else _apply_block
    for block in self.blocks:
      x = constrain(block_fn(block, x), _TOKENS)
    return self.norm(x)

  def __call__(self, images: jax.Array, *, head: HeadChoice | None = None):
    """Logits in float32; see the module docstring for what ``head`` selects."""
    if head not in (None, "cls", "dist", "avg", "both"):
      raise ValueError(f"head must be one of 'cls', 'dist', 'avg', 'both', got {head!r}")
    x = self.forward_features(images)
    cls_logits = self.head(x[:, 0]).astype(jnp.float32)
    if not self.config.distilled:
      if head in ("dist", "both"):
        raise ValueError(f"head={head!r} needs a distilled model (this one has no "
                         "distillation token)")
      return cls_logits
    dist_logits = self.head_dist(x[:, 1]).astype(jnp.float32)
    if head is None:
      head = "avg" if self.deterministic else "both"
    if head == "cls":
      return cls_logits
    if head == "dist":
      return dist_logits
    if head == "avg":
      return (cls_logits + dist_logits) / 2
    return cls_logits, dist_logits
