"""Input data: TFDS datasets and tf.data pipelines."""
