"""Input pipelines: tensorflow-datasets image sets, offline folders included."""

from keras_sg.data.tfds_images import image_dataset, prepare

__all__ = ["image_dataset", "prepare"]
