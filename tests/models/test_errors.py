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


# ---------------------------------------------------------------------------
# A table of misuses: what is built, and what the error must say. Each message
# names the value received.


def _functional(*middle, last_interface=False):
    """Input(3) -> the `middle` layers -> Dense(2) (unless it ends on an interface)."""
    inputs = keras.Input((3,))
    h = inputs
    for layer in middle:
        h = layer(h)
    if not last_interface:
        h = keras.layers.Dense(2)(h)
    return keras.Model(inputs, h, name="net")


def _two_cuts(synths, method="dni"):
    net = mlp([4, 4], 3, out_units=2)
    return keras_sg.DecoupledModel(net, synths, method=method)


SHARED = linear_synth(name="shared_synth")
MISUSES = {
    "no_interface_dni": (
        lambda: keras_sg.DecoupledModel(
            mlp([4], 3, out_units=2, interfaces=False), method="dni"
        ),
        r"method='dni'.*no keras_sg.Interface.*Received: a network of 1 stage",
    ),
    "no_interface_cdni": (
        lambda: keras_sg.DecoupledModel(
            mlp([4], 3, out_units=2, interfaces=False), [], method="cdni"
        ),
        r"method='cdni'.*no keras_sg.Interface.*Received: a network of 1 stage",
    ),
    "one_stage_list_dni": (
        lambda: keras_sg.DecoupledModel([keras.layers.Dense(2)], method="dni"),
        r"method='dni'.*list of stages holds one stage.*Received: a network of 1 "
        r"stage",
    ),
    "one_synthesizer_for_two_cuts": (
        lambda: _two_cuts([SHARED, SHARED]),
        r"same synthesizer 'shared_synth' at 'cut_1' and 'cut_2' "
        r"\(synthesizers\[0\] is synthesizers\[1\]\)",
    ),
    "one_synthesizer_for_two_cuts_cdni": (
        lambda: _two_cuts([linear_synth(num_classes=2, name="s")] * 2, "cdni"),
        r"same synthesizer 's' at 'cut_1' and 'cut_2'",
    ),
    "interface_first_functional": (
        lambda: keras_sg.DecoupledModel(
            _functional(keras_sg.Interface(name="first"), keras.layers.Dense(4)),
            method="backprop",
        ),
        r"Interface 'first' is the first layer in 'net'.*stage 0 without a "
        r"layer.*Received: stage 0 holding only \['first'\]",
    ),
    "interfaces_back_to_back_functional": (
        lambda: keras_sg.DecoupledModel(
            _functional(
                keras.layers.Dense(4),
                keras_sg.Interface(name="i1"),
                keras_sg.Interface(name="i2"),
            ),
            method="backprop",
        ),
        r"Interfaces 'i1' and 'i2' follow each other in 'net'.*stage 1 without "
        r"a layer.*Received: stage 1 holding only \['i2'\]",
    ),
    "interface_last_functional": (
        lambda: keras_sg.DecoupledModel(
            _functional(
                keras.layers.Dense(4),
                keras_sg.Interface(name="end"),
                last_interface=True,
            ),
            method="backprop",
        ),
        r"Interface 'end' is the last layer of 'net'.*Received: an Interface "
        r"as an output of 'net'",
    ),
    "interface_first_sequential": (
        lambda: keras_sg.DecoupledModel(
            keras.Sequential(
                [keras.Input((3,)), keras_sg.Interface(name="first")]
                + [keras.layers.Dense(2)]
            ),
            method="backprop",
        ),
        r"Interface 'first' of '.*' leaves stage 0 without a layer",
    ),
    "interfaces_back_to_back_sequential": (
        lambda: keras_sg.DecoupledModel(
            keras.Sequential(
                [keras.Input((3,)), keras.layers.Dense(4)]
                + [keras_sg.Interface(name="i1"), keras_sg.Interface(name="i2")]
                + [keras.layers.Dense(2)]
            ),
            method="backprop",
        ),
        r"Interface 'i2' of '.*' leaves stage 1 without a layer",
    ),
    "sg_loss_weight_inf": (
        lambda: keras_sg.DecoupledModel(
            mlp([4], 3, out_units=2), [linear_synth()], sg_loss_weight=float("inf")
        ),
        r"finite number >= 0. Received: sg_loss_weight=inf",
    ),
    "sg_loss_weight_nan": (
        lambda: keras_sg.DecoupledModel(
            mlp([4], 3, out_units=2), [linear_synth()], sg_loss_weight=float("nan")
        ),
        r"Received: sg_loss_weight=nan",
    ),
    "sg_loss_weight_none": (
        lambda: keras_sg.DecoupledModel(
            mlp([4], 3, out_units=2), [linear_synth()], sg_loss_weight=None
        ),
        r"Received: sg_loss_weight=None",
    ),
}


@pytest.mark.parametrize("case", sorted(MISUSES))
def test_misuse_gets_an_error_naming_the_value(case):
    make, message = MISUSES[case]
    with pytest.raises(ValueError, match=message):
        make()


def _cdni_model():
    model = keras_sg.DecoupledModel(
        mlp([4], 3, out_units=2), [linear_synth(num_classes=2)], method="cdni"
    )
    model.compile(optimizer="sgd", loss=LOSS)
    return model


@pytest.mark.parametrize(
    "labels, where",
    [
        ([0, 1, 0, 1, 5, 0, 1, 0], r"1 labels outside it, y\[4\]=5, min=0, max=5"),
        ([0, -1, 0, 1, 1, 0, 2, 0], r"2 labels outside it, y\[1\]=-1, min=-1, max=2"),
        ([[0], [1], [0], [1], [0], [0], [1], [7]], r"y\[7, 0\]=7, min=0, max=7"),
    ],
)
def test_cdni_labels_out_of_range_stop_fit_before_it_starts(labels, where):
    model = _cdni_model()
    x = np.zeros((8, 3), "float32")
    before = model.get_weights()
    with pytest.raises(ValueError, match=r"\[0, num_classes=2\).*" + where):
        model.fit(x, np.array(labels), batch_size=4, epochs=1, verbose=0)
    assert int(model.optimizer.iterations) == 0
    for a, b in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(a, b)


def test_cdni_labels_out_of_range_in_a_dataset_are_one_clear_line():
    import tensorflow as tf

    model = _cdni_model()
    initial = model.get_weights()
    y = np.array([0, 1, 0, 1, 0, 0, 1, 0, 1, 0, 3, 1])
    x = np.random.default_rng(0).normal(size=(12, 3)).astype("float32")
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    with pytest.raises(ValueError) as caught:
        model.fit(data, epochs=1, verbose=0)
    assert str(caught.value) == (
        "cDNI labels must lie in [0, num_classes=2) (the synthesizers one-hot "
        "encode them). Received: a batch of labels with min=0, max=3"
    )
    # The two good batches trained; nothing of the bad one was applied.
    reference = _cdni_model()
    reference.set_weights(initial)
    reference.fit(x[:8], y[:8], batch_size=4, shuffle=False, epochs=1, verbose=0)
    for a, b in zip(model.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    after = model.get_weights()
    moved = [np.abs(a - b).max() for a, b in zip(after, initial, strict=True)]
    assert max(moved) > 1e-3  # it did train


@pytest.mark.parametrize("suffix", [".h5", ".hdf5"])
def test_legacy_h5_save_is_refused(tmp_path, suffix):
    model = keras_sg.DecoupledModel(mlp([4], 3, out_units=2), [linear_synth()])
    path = tmp_path / f"model{suffix}"
    with pytest.raises(ValueError, match=rf"`\.keras` format.*filepath='.*{suffix}'"):
        model.save(path)
    assert not path.exists()
    model.save_weights(tmp_path / "model.weights.h5")  # weights alone still go
    model.save(tmp_path / "model.keras")
