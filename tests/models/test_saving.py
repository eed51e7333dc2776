"""`.keras` round trips, configs, and resuming fit after a load."""

import keras
import numpy as np
import pytest
from conftest import classification_data, mlp, weights_of

import keras_sg

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _trained_model(method="cdni"):
    net = mlp([8, 8], 6, activation="relu", out_units=3)
    conditioned = 3 if method == "cdni" else None
    synths = [
        keras_sg.DenseSynthesizer(hidden_layers=1, units=16, num_classes=conditioned),
        keras_sg.DenseSynthesizer(hidden_layers=0, num_classes=conditioned),
    ]
    model = keras_sg.DecoupledModel(
        net, synthesizers=synths, method=method, sg_loss_weight=0.5
    )
    model.compile(optimizer="adam", loss=LOSS, metrics=["accuracy"])
    x, y = classification_data(n=64)
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    return model, x, y


@pytest.mark.parametrize("method", ["dni", "cdni", "backprop"])
def test_keras_round_trip_keeps_weights_optimizer_and_resumes(tmp_path, method):
    model, x, y = _trained_model(method)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)

    assert isinstance(loaded, keras_sg.DecoupledModel)
    assert loaded.method == method and loaded.sg_loss_weight == 0.5
    assert loaded.cut_names == model.cut_names
    assert len(loaded.get_weights()) == len(model.get_weights())
    for a, b in zip(loaded.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(
        weights_of(loaded.synthesizers), weights_of(model.synthesizers), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    assert (
        loaded.optimizer.iterations.numpy() == model.optimizer.iterations.numpy() == 8
    )
    for a, b in zip(loaded.optimizer.variables, model.optimizer.variables, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6
    )

    # Training on from the file continues exactly as the original does.
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    loaded.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    assert loaded.optimizer.iterations.numpy() == 12
    for a, b in zip(loaded.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_config_round_trip_rebuilds_an_equivalent_model():
    model, x, _ = _trained_model()
    config = model.get_config()
    clone = keras_sg.DecoupledModel.from_config(config)
    assert clone.method == "cdni"
    assert [type(s) for s in clone.synthesizers] == [
        type(s) for s in model.synthesizers
    ]
    assert clone.synthesizers[0].units == 16
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(
        clone.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6
    )


@pytest.mark.parametrize(
    "layer",
    [
        keras_sg.Interface(name="cut"),
        keras_sg.DenseSynthesizer(
            hidden_layers=2, units=5, use_batch_norm=False, num_classes=4
        ),
        keras_sg.ConvSynthesizer(
            hidden_layers=1, filters=3, kernel_size=3, num_classes=2
        ),
        keras_sg.LowRankSynthesizer(rank=3, num_classes=2),
    ],
    ids=["interface", "dense", "conv", "low_rank"],
)
def test_layer_config_round_trip(layer):
    config = keras.saving.serialize_keras_object(layer)
    clone = keras.saving.deserialize_keras_object(config)
    assert type(clone) is type(layer)
    assert clone.get_config() == layer.get_config()
