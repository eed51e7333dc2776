"""Placement: mapping stages to devices, local or on a TensorFlow cluster."""

from keras_sg._remote import WorkerLostError
from keras_sg.placement.cluster import (
    connect_to_cluster,
    start_server,
    worker_addresses,
)
from keras_sg.placement.devices import split_cpu, stage_devices

__all__ = [
    "WorkerLostError",
    "connect_to_cluster",
    "split_cpu",
    "stage_devices",
    "start_server",
    "worker_addresses",
]
