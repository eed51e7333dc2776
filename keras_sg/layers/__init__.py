"""Layers: the interface that marks a cut and the synthesizers that sit at it."""

from keras_sg.layers.conv_input_synthesizer import ConvInputSynthesizer
from keras_sg.layers.conv_synthesizer import ConvSynthesizer
from keras_sg.layers.dense_input_synthesizer import DenseInputSynthesizer
from keras_sg.layers.dense_synthesizer import DenseSynthesizer
from keras_sg.layers.input_synthesizer import InputSynthesizer
from keras_sg.layers.interface import Interface
from keras_sg.layers.low_rank_synthesizer import LowRankSynthesizer
from keras_sg.layers.synthesizer import Synthesizer

__all__ = [
    "ConvInputSynthesizer",
    "ConvSynthesizer",
    "DenseInputSynthesizer",
    "DenseSynthesizer",
    "InputSynthesizer",
    "Interface",
    "LowRankSynthesizer",
    "Synthesizer",
]
