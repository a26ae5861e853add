"""deit-jax: DeiT (data-efficient image transformers with distillation) in JAX/Flax NNX."""

__version__ = "0.1.0"
