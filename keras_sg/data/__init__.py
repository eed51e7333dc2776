"""Input pipelines: tensorflow-datasets image sets, offline folders included."""

from keras_sg.data.synthetic import synthetic_images
from keras_sg.data.tfds_images import (
    KNOWN_SPLITS,
    MANUAL_DIR_VARIABLES,
    SUPPORTED,
    batches,
    content_digest,
    epoch_permutation,
    expected_files,
    image_dataset,
    load_split,
    manual_dir_from_env,
    manual_dir_variable,
    prepare,
    steps_per_epoch,
    verify_split,
)

__all__ = [
    "KNOWN_SPLITS",
    "MANUAL_DIR_VARIABLES",
    "SUPPORTED",
    "batches",
    "content_digest",
    "epoch_permutation",
    "expected_files",
    "image_dataset",
    "load_split",
    "manual_dir_from_env",
    "manual_dir_variable",
    "prepare",
    "steps_per_epoch",
    "synthetic_images",
    "verify_split",
]
