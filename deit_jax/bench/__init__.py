"""Performance tooling and compile checks, outside the training core: scripts that print
figures.

    python -m deit_jax.bench.benchmark        the train step (or inference): img/s, MFU, memory
    python -m deit_jax.bench.input_pipeline   the tf.data input pipeline on real JPEGs
    python -m deit_jax.bench.teacher_precompute  teacher logits per second: JAX vs timm
    python -m deit_jax.bench.pod_compile      the trainer's steps compiled for a TPU slice
                                              (libtpu, no TPU): per-chip HBM, largest batch
    python -m deit_jax.bench.pod_table        docs/tpu.md's table: recipes x TPU slices

``options`` holds the benchmark's flags, ``vs_timm`` its timm (PyTorch) side (``--vs_timm``),
``hlo_stats`` the collective and layout counts of an optimized HLO module.
"""
