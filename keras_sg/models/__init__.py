"""Models: the decoupled model, its stages and the pure functions of its step."""

from keras_sg.models import costs, steps, unlocked_steps
from keras_sg.models.async_pipelined_model import AsyncPipelinedModel
from keras_sg.models.bp_lambda_model import BPLambdaModel
from keras_sg.models.clocked_pair_model import (
    CLOCK_METHODS,
    ClockedPairModel,
    tick_schedule,
    update_dependencies,
)
from keras_sg.models.decoupled_model import METHODS, SG_TARGETS, DecoupledModel
from keras_sg.models.gpipe_model import GPipeModel
from keras_sg.models.networks import convolutional, fully_connected
from keras_sg.models.pipelined_model import PipelinedModel
from keras_sg.models.stages import split_stages
from keras_sg.models.stochastic_update_model import StochasticUpdateModel
from keras_sg.models.truncated_bptt_model import TIME_METHODS, TruncatedBPTTModel
from keras_sg.models.unlocked_model import UnlockedModel

__all__ = [
    "METHODS",
    "AsyncPipelinedModel",
    "SG_TARGETS",
    "BPLambdaModel",
    "CLOCK_METHODS",
    "ClockedPairModel",
    "DecoupledModel",
    "GPipeModel",
    "PipelinedModel",
    "StochasticUpdateModel",
    "TIME_METHODS",
    "TruncatedBPTTModel",
    "UnlockedModel",
    "convolutional",
    "costs",
    "fully_connected",
    "split_stages",
    "tick_schedule",
    "update_dependencies",
    "steps",
    "unlocked_steps",
]
