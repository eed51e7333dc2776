"""Atomic, finite-only checkpoints and a loader that names damaged files."""

import math

import keras
import numpy as np
import pytest
from conftest import classification_data, linear_synth, mlp

import keras_sg
from keras_sg.callbacks import checkpoint


def _model():
    net = mlp([4], 6, out_units=3)
    model = keras_sg.DecoupledModel(net, [linear_synth()], method="dni")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


def _fit(model, epochs, callbacks=(), initial_epoch=0):
    x, y = classification_data(n=16)
    model.fit(
        x,
        y,
        batch_size=8,
        epochs=epochs,
        initial_epoch=initial_epoch,
        verbose=0,
        callbacks=list(callbacks),
    )


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_keeps_the_newest_and_reloads_the_same_weights(tmp_path):
    model = _model()
    _fit(model, 4, [keras_sg.callbacks.FiniteCheckpoint(tmp_path, keep=2)])
    assert _names(tmp_path) == ["epoch-0003.keras", "epoch-0004.keras"]
    loaded, epoch = keras_sg.callbacks.load_latest(tmp_path)
    assert epoch == 4
    assert int(loaded.optimizer.iterations.numpy()) == 4 * 2
    for a, b in zip(loaded.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("keep", [0, -1, 1.5])
def test_keep_out_of_range_is_named(tmp_path, keep):
    with pytest.raises(ValueError, match=f"Received: keep={keep}"):
        keras_sg.callbacks.FiniteCheckpoint(tmp_path, keep=keep)


def test_non_finite_epochs_are_not_saved_nor_prune_finite_ones(tmp_path):
    model = _model()
    saver = keras_sg.callbacks.FiniteCheckpoint(tmp_path, keep=1)
    _fit(model, 1, [saver])
    assert _names(tmp_path) == ["epoch-0001.keras"]
    saver.on_epoch_end(1, {"loss": 0.5, "cut_1_sg_loss": math.nan})
    saver.on_epoch_end(2, {"loss": math.inf, "cut_1_sg_loss": 0.5})
    weights = model.get_weights()
    model.set_weights([np.full_like(weights[0], np.nan), *weights[1:]])
    saver.on_epoch_end(3, {"loss": 0.5, "cut_1_sg_loss": 0.5})  # NaN weights
    assert _names(tmp_path) == ["epoch-0001.keras"]
    assert saver.last_saved.name == "epoch-0001.keras"


def test_pruning_leaves_later_epochs_alone(tmp_path):
    """After a resume from epoch 1 past a damaged epoch 3, the damaged file
    stays (for the user) and the new epoch 2 is not pruned in its favour."""
    model = _model()
    (tmp_path / "epoch-0003.keras").write_bytes(b"PK\x03\x04 cut short")
    _fit(model, 2, [keras_sg.callbacks.FiniteCheckpoint(tmp_path, keep=1)])
    assert _names(tmp_path) == ["epoch-0002.keras", "epoch-0003.keras"]


def test_damaged_files_are_named_and_skipped(tmp_path):
    model = _model()
    _fit(model, 3, [keras_sg.callbacks.FiniteCheckpoint(tmp_path, keep=3)])
    whole = (tmp_path / "epoch-0003.keras").read_bytes()
    (tmp_path / "epoch-0003.keras").write_bytes(whole[: len(whole) // 2])
    flipped = bytearray((tmp_path / "epoch-0002.keras").read_bytes())
    flipped[len(flipped) // 2] ^= 0xFF
    (tmp_path / "epoch-0002.keras").write_bytes(bytes(flipped))
    skipped = []
    loaded, epoch = keras_sg.callbacks.load_latest(
        tmp_path, on_skip=lambda path, reason: skipped.append((path.name, reason))
    )
    assert epoch == 1 and int(loaded.optimizer.iterations.numpy()) == 2
    assert [name for name, _ in skipped] == ["epoch-0003.keras", "epoch-0002.keras"]
    truncated, corrupted = (reason for _, reason in skipped)
    assert truncated == (
        f"damaged: not a complete .keras archive ({len(whole) // 2} bytes; truncated?)"
    )
    assert corrupted == "damaged: member 'model.weights.h5' fails its CRC check"


def test_save_atomically_leaves_no_partial_file(tmp_path):
    model = _model()
    _fit(model, 1)
    (tmp_path / ".partial-epoch-0001.keras").write_bytes(b"left by a kill")
    path = checkpoint.save_atomically(model, tmp_path / "epoch-0001.keras")
    assert _names(tmp_path) == ["epoch-0001.keras"]
    assert checkpoint.damage(path) is None
    (tmp_path / ".partial-epoch-0002.keras").write_bytes(b"left by a kill")
    removed = checkpoint.remove_partial_files(tmp_path)
    assert [p.name for p in removed] == [".partial-epoch-0002.keras"]
    assert _names(tmp_path) == ["epoch-0001.keras"]
    assert [n for n, _ in checkpoint.checkpoint_files(tmp_path)] == [1]


@pytest.mark.parametrize("which", ["stage", "synthesizer"])
def test_all_finite_sees_the_async_runtime_s_own_optimizers(which):
    """AsyncPipelinedModel's stage and synthesizer optimizers are not tracked
    by Keras: a NaN in one of their slots must still fail the check that
    FiniteCheckpoint makes before it saves."""
    net = mlp([4, 4], 6, out_units=3)
    synths = [linear_synth(), linear_synth()]
    model = keras_sg.AsyncPipelinedModel(net, synths, method="dni")
    model.compile(
        optimizer="adam",
        loss="sparse_categorical_crossentropy",
        synthesizer_optimizer=keras.optimizers.SGD(0.1, momentum=0.5),
    )
    _fit(model, 1)
    assert checkpoint.all_finite(model)
    if which == "stage":
        optimizer = model.stage_optimizers()[1]
    else:
        optimizer = model.synthesizer_optimizers()[0]
    slots = [v for v in optimizer.variables if v.dtype == "float32" and v.shape.rank]
    assert slots, optimizer.variables
    slots[-1].assign(np.full(slots[-1].shape, np.nan, "float32"))
    assert not checkpoint.all_finite(model)
