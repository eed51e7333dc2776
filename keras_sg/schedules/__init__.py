"""Pipeline schedule simulator: naive model parallelism, GPipe, 1F1B,
interleaved 1F1B, Zero Bubble ZB-H1, pipelined DNI, DNI one batch per step,
the fully unlocked step (synthetic inputs) and asynchronous DNI stages,
timed event by event.

Pure Python: no TensorFlow or Keras (matplotlib only inside `draw_timeline`).

    from keras_sg.schedules import simulate, draw_timeline

    result = simulate("1f1b", num_devices=4, num_microbatches=8,
                      forward=1.0, backward=2.0)
    result.step_time, result.bubble_fraction   # 33.0, 3/11
    draw_timeline(result, "1f1b.png")

References: GPipe (Huang et al. 2019, arXiv:1811.06965); PipeDream and
PipeDream-Flush 1F1B (Narayanan et al. 2019, 2021); Megatron-LM interleaved
1F1B (Narayanan et al. 2021, arXiv:2104.04473); Zero Bubble pipeline
parallelism (Qi et al. 2023, arXiv:2401.10241); DNI (Jaderberg et al. 2016,
arXiv:1608.05343).
"""

from keras_sg.schedules.async_stages import async_orders
from keras_sg.schedules.drawing import draw_timeline
from keras_sg.schedules.engine import list_schedule
from keras_sg.schedules.orders import (
    gpipe_orders,
    interleaved_orders,
    naive_orders,
    one_f_one_b_orders,
    zb_h1_orders,
)
from keras_sg.schedules.pipelined_dni import dni_orders
from keras_sg.schedules.simulator import SCHEDULES, simulate
from keras_sg.schedules.timeline import KINDS, Event, SimulationResult, Warmup
from keras_sg.schedules.unlocked import unlocked_orders

__all__ = [
    "KINDS",
    "SCHEDULES",
    "Event",
    "SimulationResult",
    "Warmup",
    "async_orders",
    "dni_orders",
    "draw_timeline",
    "gpipe_orders",
    "interleaved_orders",
    "list_schedule",
    "naive_orders",
    "one_f_one_b_orders",
    "simulate",
    "unlocked_orders",
    "zb_h1_orders",
]
