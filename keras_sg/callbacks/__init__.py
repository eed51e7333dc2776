"""Callbacks: TensorBoard diagnostics of synthetic gradients, a divergence
guard and a rollback, and checkpoints that survive kills and never hold NaN."""

from keras_sg.callbacks.checkpoint import (
    FiniteCheckpoint,
    load_latest,
    save_atomically,
)
from keras_sg.callbacks.divergence import (
    RollBackOnDivergence,
    StopOnDivergence,
    training_state,
)
from keras_sg.callbacks.sg_monitor import SyntheticGradientMonitor, gradient_diagnostics

__all__ = [
    "FiniteCheckpoint",
    "RollBackOnDivergence",
    "StopOnDivergence",
    "SyntheticGradientMonitor",
    "gradient_diagnostics",
    "load_latest",
    "save_atomically",
    "training_state",
]
