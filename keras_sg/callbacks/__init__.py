"""Callbacks: TensorBoard diagnostics of synthetic gradients."""

from keras_sg.callbacks.sg_monitor import SyntheticGradientMonitor, gradient_diagnostics

__all__ = ["SyntheticGradientMonitor", "gradient_diagnostics"]
