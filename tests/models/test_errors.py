"""Bad input to the decoupled model gets an error that names it."""

import keras
import numpy as np
import pytest
from conftest import classification_data, linear_synth, mlp

import keras_sg

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def test_unknown_method():
    with pytest.raises(ValueError, match=r"method='sgd'"):
        keras_sg.DecoupledModel(mlp([4], 3, out_units=2), method="sgd")


def test_unknown_sg_target_and_negative_weight():
    net = mlp([4], 3, out_units=2)
    with pytest.raises(ValueError, match=r"sg_target='true'"):
        keras_sg.DecoupledModel(net, [linear_synth()], sg_target="true")
    with pytest.raises(ValueError, match=r"sg_loss_weight=-1"):
        keras_sg.DecoupledModel(net, [linear_synth()], sg_loss_weight=-1)
    with pytest.raises(ValueError, match=r"sg_loss_weight='big'"):
        keras_sg.DecoupledModel(net, [linear_synth()], sg_loss_weight="big")


def test_synthesizer_count_must_match_interfaces():
    net = mlp([4, 4], 3, out_units=2)
    with pytest.raises(ValueError, match=r"2 interfaces.*Received: 1 synthesizers"):
        keras_sg.DecoupledModel(net, [linear_synth()], method="dni")
    with pytest.raises(ValueError, match=r"synthesizers=None"):
        keras_sg.DecoupledModel(net, method="dni")


def test_synthesizer_output_must_match_the_activation():
    net = mlp([4], 3, out_units=2)
    with pytest.raises(
        ValueError, match=r"activation's shape \(None, 4\).*\(None, 7\)"
    ):
        keras_sg.DecoupledModel(net, [keras.layers.Dense(7)], method="dni")


def test_conv_synthesizer_on_a_flat_activation():
    net = mlp([4], 3, out_units=2)
    with pytest.raises(ValueError, match=r"At interface 'cut_1'.*4-D activation"):
        keras_sg.DecoupledModel(net, [keras_sg.ConvSynthesizer()], method="dni")


def test_cdni_needs_conditioned_synthesizers_and_dni_refuses_them():
    net = mlp([4], 3, out_units=2)
    with pytest.raises(ValueError, match=r"num_classes=<number of classes>"):
        keras_sg.DecoupledModel(net, [linear_synth()], method="cdni")
    with pytest.raises(ValueError, match=r"method='cdni'"):
        keras_sg.DecoupledModel(net, [linear_synth(num_classes=2)], method="dni")


def test_cdni_without_labels():
    model = keras_sg.DecoupledModel(
        mlp([4], 3, out_units=2), [linear_synth(num_classes=2)], method="cdni"
    )
    model.compile(optimizer="sgd", loss=LOSS)
    x = np.zeros((8, 3), "float32")
    with pytest.raises(ValueError, match=r"y=None"):
        model.fit(x, epochs=1, verbose=0)


def test_cdni_labels_out_of_range():
    model = keras_sg.DecoupledModel(
        mlp([4], 3, out_units=2), [linear_synth(num_classes=2)], method="cdni"
    )
    model.compile(optimizer="sgd", loss=LOSS)
    x = np.zeros((8, 3), "float32")
    y = np.array([0, 1, 0, 1, 5, 0, 1, 0])
    with pytest.raises(Exception, match=r"num_classes=2\).*min.*0.*max.*5"):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)


def test_fit_before_compile():
    model = keras_sg.DecoupledModel(mlp([4], 3, out_units=2), [linear_synth()])
    x, y = classification_data(n=8, dim=3, classes=2)
    with pytest.raises(ValueError, match=r"compile"):
        model.fit(x, y, verbose=0)


def test_interface_without_a_layer_on_one_side():
    net = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(2), keras_sg.Interface(name="dangling")]
    )
    with pytest.raises(ValueError, match=r"'dangling'"):
        keras_sg.DecoupledModel(net, method="backprop")


def test_skip_connection_across_an_interface():
    inputs = keras.Input((3,))
    low = keras.layers.Dense(4)(inputs)
    cut = keras_sg.Interface(name="leaky")(low)
    outputs = keras.layers.Add()([keras.layers.Dense(4)(cut), low])
    net = keras.Model(inputs, outputs)
    with pytest.raises(ValueError, match=r"'leaky'.*skips across it"):
        keras_sg.DecoupledModel(net, method="backprop")


def test_stages_must_be_layers():
    with pytest.raises(TypeError, match=r"stage 1 of type str"):
        keras_sg.DecoupledModel([keras.layers.Dense(2), "dense"], method="backprop")
