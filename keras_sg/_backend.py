"""Refuses to load keras_sg under a Keras backend other than TensorFlow."""

import os


def _refuse(backend: str) -> None:
    raise ImportError(
        "keras_sg requires the TensorFlow backend of Keras; Keras is set to "
        f"KERAS_BACKEND={backend!r}. Set the environment variable "
        "KERAS_BACKEND=tensorflow (or unset it) before importing keras or "
        "keras_sg."
    )


def check_backend() -> None:
    """Raises ImportError unless Keras runs on the TensorFlow backend.

    keras_sg builds its train step from `tf.GradientTape` vector-Jacobian
    products and places stages with `tf.device`, so it needs TensorFlow under
    Keras. The environment variable is read before Keras is imported, so the
    error is ours even when the other backend is not installed.
    """
    requested = os.environ.get("KERAS_BACKEND")
    if requested and requested != "tensorflow":
        _refuse(requested)
    import keras

    if keras.backend.backend() != "tensorflow":
        _refuse(keras.backend.backend())
