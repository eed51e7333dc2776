"""Input pipelines: tensorflow-datasets image sets, offline folders included."""

from keras_sg.data.synthetic import synthetic_images
from keras_sg.data.tfds_images import (
    SUPPORTED,
    batches,
    epoch_permutation,
    image_dataset,
    load_split,
    prepare,
    steps_per_epoch,
)

__all__ = [
    "SUPPORTED",
    "batches",
    "epoch_permutation",
    "image_dataset",
    "load_split",
    "prepare",
    "steps_per_epoch",
    "synthetic_images",
]
