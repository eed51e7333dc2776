"""A built model's training and test steps are traced once, not twice.

Keras makes the optimizer's and the compiled metrics' variables inside the
first trace of a step, and `tf.function` then traces the step again. The
models of this package make them before (`_maybe_symbolic_build`): the
second trace cost about a second of the first epoch of configs/mnist_fcn.py's
DNI run.
"""

import keras
import numpy as np
import pytest
from conftest import classification_data, linear_synth, mlp

import keras_sg

CLASSES = 3


def _decoupled(cls, method, **kwargs):
    def make():
        net = mlp([8, 8], 6, out_units=CLASSES)
        classes = CLASSES if method == "cdni" else None
        synths = [linear_synth(num_classes=classes) for _ in range(2)]
        return cls(net, synths, method=method, **kwargs)

    return make


def _bptt():
    net = keras.Sequential(
        [
            keras.Input((4, 6)),
            keras.layers.SimpleRNN(8, return_sequences=True),
            keras.layers.Dense(CLASSES),
        ]
    )
    return keras_sg.TruncatedBPTTModel(
        net, truncation=2, method="dni", synthesizer=linear_synth()
    )


def _clocked():
    model = keras_sg.ClockedPairModel(
        keras.layers.LSTMCell(3),
        keras.layers.GRUCell(2),
        period=2,
        output=keras.layers.Dense(CLASSES),
        method="dni",
        message_synthesizer=linear_synth(),
        state_synthesizer=linear_synth(),
    )
    model.build((8, 4, 6))
    return model


MODELS = {
    "decoupled-dni": _decoupled(keras_sg.DecoupledModel, "dni"),
    "pipelined-cdni": _decoupled(keras_sg.PipelinedModel, "cdni"),
    "stochastic": _decoupled(
        keras_sg.StochasticUpdateModel, "dni", update_probability=0.5
    ),
    "bp_lambda": _decoupled(keras_sg.BPLambdaModel, "dni", bp_lambda=0.5),
    "gpipe": lambda: keras_sg.GPipeModel(
        mlp([8, 8], 6, out_units=CLASSES), micro_batches=2
    ),
    "truncated_bptt": _bptt,
    "clocked_pair": _clocked,
}


def _counting(monkeypatch, cls, name):
    calls = []
    original = getattr(cls, name)

    def counted(self, data):
        calls.append(1)
        return original(self, data)

    monkeypatch.setattr(cls, name, counted)
    return calls


def _data(sequences):
    x, y = classification_data(n=32, dim=6, classes=CLASSES)
    if sequences:
        x = np.repeat(x[:, None, :], 4, axis=1)
        y = np.repeat(y[:, None], 4, axis=1)
    return x.astype("float32"), y


@pytest.mark.parametrize("synthesizer_optimizer", [None, "sgd"], ids=["one", "two"])
@pytest.mark.parametrize("kind", list(MODELS))
def test_fit_and_evaluate_trace_their_step_once(
    monkeypatch, kind, synthesizer_optimizer
):
    if synthesizer_optimizer and kind == "gpipe":
        pytest.skip("GPipe trains no synthesizers")
    model = MODELS[kind]()
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        synthesizer_optimizer=synthesizer_optimizer,
    )
    train = _counting(monkeypatch, type(model), "train_step")
    test = _counting(monkeypatch, type(model), "test_step")
    x, y = _data(kind in ("truncated_bptt", "clocked_pair"))
    history = model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    logs = model.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    assert len(train) == 1, f"train_step traced {len(train)} times"
    assert len(test) == 1, f"test_step traced {len(test)} times"
    # Built before the trace, the optimizer stepped at every batch, and the
    # compiled metric and the loss were reported.
    assert int(model.optimizer.iterations) == 2 * 4
    assert 0.0 <= history.history["accuracy"][-1] <= 1.0
    assert np.isfinite(logs["loss"])
