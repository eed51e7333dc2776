"""keras_sg: train Keras models with synthetic gradients.

Decoupled Neural Interfaces (Jaderberg et al. 2016, arXiv:1608.05343) cut a
network into stages; at each cut a small network, the synthesizer, predicts the
gradient of the loss with respect to the activation, so the stage below can
update before the stage above has run its backward pass.
"""

from keras_sg._backend import check_backend

check_backend()

from keras_sg import (  # noqa: E402
    callbacks,
    data,
    layers,
    models,
    optimizers,
    placement,
    profiling,
)
from keras_sg.layers import (  # noqa: E402
    ConvInputSynthesizer,
    ConvSynthesizer,
    DenseInputSynthesizer,
    DenseSynthesizer,
    InputSynthesizer,
    Interface,
    LowRankSynthesizer,
    Synthesizer,
)
from keras_sg.models import (  # noqa: E402
    METHODS,
    AsyncPipelinedModel,
    BPLambdaModel,
    ClockedPairModel,
    DecoupledModel,
    GPipeModel,
    PipelinedModel,
    StochasticUpdateModel,
    TruncatedBPTTModel,
    UnlockedModel,
    split_stages,
)

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "AsyncPipelinedModel",
    "BPLambdaModel",
    "ConvInputSynthesizer",
    "ConvSynthesizer",
    "DecoupledModel",
    "DenseInputSynthesizer",
    "DenseSynthesizer",
    "GPipeModel",
    "InputSynthesizer",
    "Interface",
    "LowRankSynthesizer",
    "PipelinedModel",
    "StochasticUpdateModel",
    "Synthesizer",
    "TruncatedBPTTModel",
    "ClockedPairModel",
    "UnlockedModel",
    "callbacks",
    "data",
    "layers",
    "models",
    "optimizers",
    "placement",
    "profiling",
    "split_stages",
]
