"""Placement: mapping stages to devices."""

from keras_sg.placement.devices import split_cpu, stage_devices

__all__ = ["split_cpu", "stage_devices"]
