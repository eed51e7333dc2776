"""GPipe: micro-batch gradients accumulate to the full-batch backprop update."""

import keras
import numpy as np
import pytest
from conftest import classification_data, mlp

import keras_sg

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.mark.parametrize("micro_batches", [1, 4])
def test_gpipe_update_equals_full_batch_backprop(micro_batches):
    x, y = classification_data(n=64)
    net = mlp([8, 8], 6, out_units=3)
    initial = net.get_weights()
    reference = keras_sg.DecoupledModel(net, method="backprop")
    reference.compile(optimizer="adam", loss=LOSS, metrics=["accuracy"])
    h_ref = reference.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    expected = reference.get_weights()

    net.set_weights(initial)
    model = keras_sg.GPipeModel(net, micro_batches=micro_batches)
    model.compile(optimizer="adam", loss=LOSS, metrics=["accuracy"])
    h = model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(model.get_weights(), expected, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(h.history["loss"], h_ref.history["loss"], rtol=1e-5)
    np.testing.assert_allclose(h.history["accuracy"], h_ref.history["accuracy"])
    assert model.optimizer.iterations.numpy() == 8


def test_gpipe_round_trip_and_bad_micro_batches(tmp_path):
    model = keras_sg.GPipeModel(mlp([4], 6, out_units=3), micro_batches=2)
    model.compile(optimizer="sgd", loss=LOSS)
    model.save(tmp_path / "g.keras")
    loaded = keras.models.load_model(tmp_path / "g.keras")
    assert isinstance(loaded, keras_sg.GPipeModel) and loaded.micro_batches == 2
    with pytest.raises(ValueError, match="micro_batches=0"):
        keras_sg.GPipeModel(mlp([4], 6, out_units=3), micro_batches=0)
    x, y = classification_data(n=6)
    with pytest.raises(Exception, match="divisible"):
        model.fit(x, y, batch_size=3, epochs=1, verbose=0)


def test_profiler_counts_the_micro_batch_gradient_sums_as_backward_work():
    import tensorflow as tf

    from keras_sg.profiling import op_kind, stage_of

    x, y = classification_data(n=8)
    model = keras_sg.GPipeModel(mlp([8], 6, out_units=3), micro_batches=4)
    model.compile(optimizer="sgd", loss=LOSS)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    graph = (
        tf.function(model.train_step)
        .get_concrete_function((tf.constant(x), tf.constant(y)))
        .graph
    )
    # Each of the 4 variables (2 per stage) sums 4 micro-batches' gradients:
    # 3 additions each, all of them a stage's backward work.
    sums = [op.name for op in graph.get_operations() if op.type == "AddV2"]
    sums = [name for name in sums if "gradient_sum" in name]
    assert len(sums) == 4 * 3
    assert {op_kind(name) for name in sums} == {"B"}
    assert {stage_of(name) for name in sums} == {0, 1}
