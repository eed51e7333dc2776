"""Bits per character over a whole stream, the state carried from one window
to the next: against one long unrolled pass and against NumPy."""

import math

import keras
import numpy as np
import pytest

import keras_sg
from keras_sg.data import bptt_dataset, bptt_windows, char_bits
from keras_sg.data import stream_bits_per_character as stream_bpc

V, B, T = 6, 3, 4  # vocabulary, parallel streams, characters per window


def _ids(n=203, seed=0):
    return np.random.default_rng(seed).integers(0, V, size=n).astype("int32")


def _model():
    """An LSTM and a GRU (three state tensors) over embedded characters."""
    keras.utils.set_random_seed(3)
    net = keras.Sequential(
        [
            keras.Input((None,), dtype="int32"),
            keras.layers.Embedding(V, 3),
            keras.layers.LSTM(4, return_sequences=True),
            keras.layers.GRU(3, return_sequences=True),
            keras.layers.Dense(V),
        ]
    )
    # Weights three times Keras's initial ones: a state that remembers more
    # than a window, so that carrying it shows in the bits.
    net.set_weights([3.0 * w for w in net.get_weights()])
    model = keras_sg.TruncatedBPTTModel(net, truncation=2, method="bptt")
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _numpy_bits(logits, targets):
    """−log₂ softmax(logits)[target], written apart from `char_bits`."""
    logits = np.asarray(logits, np.float64)
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    picked = np.take_along_axis(p, np.asarray(targets)[..., None], -1)[..., 0]
    return -np.log2(picked)


def test_stream_bpc_is_one_long_unrolled_pass():
    model, ids = _model(), _ids()
    # The streams, from the ids directly: row r is ids[r L : (r + 1) L].
    length = len(ids) // B
    span = (length - 1) // T * T  # 64 of the 67 characters of a row
    rows = ids[: B * length].reshape(B, length)
    x, y = rows[:, :span], rows[:, 1 : span + 1]
    # One pass of Keras's own layers over all 64 steps: no window, no carry.
    unrolled = _numpy_bits(model.network(x), y).mean()

    carried = stream_bpc(model, ids, B, T)
    np.testing.assert_allclose(carried, unrolled, rtol=0, atol=1e-5)

    # Each window on its own, from zeros: what a reset per window measures.
    inputs, targets = bptt_windows(ids, B, T)
    per_window = np.mean(
        [
            _numpy_bits(model.network(xw), yw).mean()
            for xw, yw in zip(inputs, targets, strict=True)
        ]
    )
    reset = stream_bpc(model, ids, B, T, carry_state=False)
    np.testing.assert_allclose(reset, per_window, rtol=0, atol=1e-5)
    # `evaluate` on bptt_dataset is the per-window number, in nats.
    loss = model.evaluate(bptt_dataset(ids, B, T), verbose=0)
    np.testing.assert_allclose(reset, loss / math.log(2.0), rtol=0, atol=1e-5)
    # The carried state changes what is measured, by far more than 1e-5.
    assert abs(carried - reset) > 1e-3, (carried, reset)


def test_run_stream_carries_every_state_tensor_and_resets_per_row():
    """Window by window, the outputs are those of the unrolled pass: each
    window's outputs depend on the LSTM's h and c and the GRU's h of the
    window before it."""
    model, ids = _model(), _ids()
    inputs, _ = bptt_windows(ids, B, T)
    outputs = np.stack([np.asarray(o) for o in model.run_stream(inputs)])
    whole = np.asarray(model.network(np.concatenate(list(inputs), axis=1)))
    np.testing.assert_allclose(
        np.concatenate(list(outputs), axis=1), whole, rtol=0, atol=1e-5
    )
    # Window 0 starts from zeros: the same as a fresh pass over it alone.
    np.testing.assert_allclose(
        outputs[0], np.asarray(model.network(inputs[0])), rtol=0, atol=1e-6
    )


class _FixedLogits:
    """A stand-in model: `run_stream` yields given logits."""

    def __init__(self, logits):
        self.logits = logits
        self.carry_state = None

    def run_stream(self, windows, carry_state=True):
        assert len(windows) == len(self.logits)
        self.carry_state = carry_state
        return iter(self.logits)


def test_bpc_is_log2_mean_over_scored_characters_as_numpy():
    ids = _ids(n=50, seed=1)
    inputs, targets = bptt_windows(ids, B, T)  # 16 characters a row: 3 windows
    assert targets.shape == (3, B, T)
    logits = np.random.default_rng(2).normal(size=(3, B, T, V)) * 2.0
    model = _FixedLogits(list(logits.astype("float32")))
    bpc = stream_bpc(model, ids, B, T, carry_state=False)
    assert model.carry_state is False
    expected = _numpy_bits(logits.astype("float32"), targets).sum() / (3 * B * T)
    np.testing.assert_allclose(bpc, expected, rtol=1e-6)
    # In nats, Keras's cross-entropy; in bits, divided by ln 2.
    nats = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
        targets, logits.astype("float32")
    )
    np.testing.assert_allclose(bpc, float(nats) / math.log(2.0), rtol=1e-5)


def test_char_bits_by_hand():
    # Uniform over 8 characters: 3 bits each.
    np.testing.assert_allclose(char_bits(np.zeros((2, 8)), [0, 5]), [3.0, 3.0])
    # p = (1/2, 1/4, 1/4): 1 bit for id 0, 2 bits for id 1 or 2.
    logits = np.log([[2.0, 1.0, 1.0]] * 3) + 7.0  # shift-invariant
    np.testing.assert_allclose(char_bits(logits, [0, 1, 2]), [1.0, 2.0, 2.0])


def test_bad_shapes_and_models_are_named():
    with pytest.raises(ValueError, match=r"logits of shape \(2, 3\), targets of"):
        char_bits(np.zeros((2, 3)), np.zeros((3,), int))
    with pytest.raises(ValueError, match="Received: ids from 0 to 3"):
        char_bits(np.zeros((2, 3)), [0, 3])
    with pytest.raises(TypeError, match="Received: Sequential"):
        stream_bpc(keras.Sequential([keras.layers.Dense(2)]), _ids(), B, T)
    with pytest.raises(ValueError, match=r"Received: windows of shape \(3, 4\)"):
        _model().run_stream(np.zeros((3, 4), "int32"))
