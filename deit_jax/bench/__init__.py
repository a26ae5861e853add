"""Performance tooling, outside the training core: scripts that print figures.

    python -m deit_jax.bench.benchmark        the train step (or inference): img/s, MFU, memory
    python -m deit_jax.bench.input_pipeline   the tf.data input pipeline on real JPEGs

``options`` holds the benchmark's flags, ``vs_timm`` its timm (PyTorch) side (``--vs_timm``).
"""
