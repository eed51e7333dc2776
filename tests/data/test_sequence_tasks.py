"""Copy and Repeat Copy: layouts checked by hand, repeat counts, masks, the
bits-per-character error against NumPy, epochs of the dataset, and the
length curriculum (growth at the threshold, save and restore)."""

import json
import math

import keras
import numpy as np
import pytest

from keras_sg import data


def test_copy_layout_by_hand():
    x, y, w = data.copy_task(2, 3, bits=2, seed=0)
    pattern = np.random.default_rng(0).integers(0, 2, size=(2, 3, 2))
    np.testing.assert_array_equal(pattern[0], [[1, 1], [1, 0], [0, 0]])
    # N = 3, B = 2: three pattern steps, the delimiter on channel 2, three
    # output steps scored.
    np.testing.assert_array_equal(
        x[0],
        [[1, 1, 0], [1, 0, 0], [0, 0, 0], [0, 0, 1], [0, 0, 0], [0, 0, 0], [0, 0, 0]],
    )
    np.testing.assert_array_equal(
        y[0], [[0, 0], [0, 0], [0, 0], [0, 0], [1, 1], [1, 0], [0, 0]]
    )
    np.testing.assert_array_equal(w[0], [0, 0, 0, 0, 1, 1, 1])
    # Every example: inputs, then the same bits as targets N + 1 steps later.
    for i in range(2):
        np.testing.assert_array_equal(x[i, :3, :2], pattern[i])
        np.testing.assert_array_equal(y[i, 4:], pattern[i])
    assert x.shape == (2, 7, 3) and y.shape == (2, 7, 2) and w.shape == (2, 7)
    assert x.dtype == y.dtype == w.dtype == np.float32
    np.testing.assert_array_equal(x[:, :, 2].sum(axis=1), [1, 1])  # one delimiter


def test_repeat_copy_layout_and_repeat_count_by_hand():
    x, y, w = data.repeat_copy_task(2, 2, max_repeats=3, bits=2, seed=1)
    # Example 0: pattern [[0, 1], [1, 1]], R = 1 (1/3 on the repeat channel).
    np.testing.assert_allclose(
        x[0, :3], [[0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1 / 3]], rtol=1e-7
    )
    assert not x[0, 3:].any()
    expected_y = np.zeros((10, 3))
    expected_y[3:5, :2] = [[0, 1], [1, 1]]
    expected_y[5, 2] = 1  # the end marker right after one copy
    np.testing.assert_array_equal(y[0], expected_y)
    np.testing.assert_array_equal(w[0], [0, 0, 0, 1, 1, 1, 0, 0, 0, 0])
    # Any example: R copies of its pattern, then the end marker; R N + 1
    # scored steps.
    x, y, w = data.repeat_copy_task(64, 3, max_repeats=4, bits=5, seed=7)
    assert x.shape == (64, 3 + 12 + 2, 7) and y.shape == (64, 17, 6)
    repeats = np.rint(x[:, 3, 6] * 4).astype(int)
    assert sorted(set(repeats)) == [1, 2, 3, 4]
    for i, r in enumerate(repeats):
        pattern = x[i, :3, :5]
        np.testing.assert_array_equal(y[i, 4 : 4 + 3 * r, :5], np.tile(pattern, (r, 1)))
        assert not y[i, 4 + 3 * r :, :5].any()
        np.testing.assert_array_equal(np.flatnonzero(y[i, :, 5]), [4 + 3 * r])
        np.testing.assert_array_equal(np.flatnonzero(w[i]), np.arange(4, 5 + 3 * r))


def test_batches_are_functions_of_their_seed():
    a = data.task_batch("copy", 4, 5, seed=[3, 0, 1])
    b = data.task_batch("copy", 4, 5, seed=[3, 0, 1])
    c = data.task_batch("copy", 4, 5, seed=[3, 0, 2])
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: data.copy_task(0, 3), "batch_size=0"),
        (lambda: data.copy_task(2, 0), "length=0"),
        (lambda: data.repeat_copy_task(2, 2, max_repeats=0), "max_repeats=0"),
        (lambda: data.task_batch("add", 2, 2), "task='add'"),
        (lambda: data.copy_task_dataset("copy", 2, 2), "length=None"),
        (
            lambda: data.copy_task_dataset("copy", 2, 2, length=3, max_repeats=2),
            "task='copy', max_repeats=2",
        ),
    ],
)
def test_bad_arguments_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def _batches(ds):
    return [tuple(t.numpy() for t in batch) for batch in ds]


def test_dataset_passes_are_consecutive_epochs_and_resume():
    ds = data.copy_task_dataset("repeat_copy", 2, 3, length=2, seed=5, max_repeats=2)
    assert ds.cardinality() == 3
    first, second = _batches(ds), _batches(ds)
    for epoch, seen in enumerate([first, second]):
        for b, batch in enumerate(seen):
            want = data.repeat_copy_task(2, 2, max_repeats=2, seed=[5, epoch, b])
            for got, expected in zip(batch, want, strict=True):
                np.testing.assert_array_equal(got, expected)
    resumed = data.copy_task_dataset(
        "repeat_copy", 2, 3, length=2, seed=5, max_repeats=2, first_epoch=1
    )
    for got, expected in zip(_batches(resumed), second, strict=True):
        np.testing.assert_array_equal(got[0], expected[0])


def test_dataset_reads_the_curriculum_length_when_each_pass_begins():
    curriculum = data.LengthCurriculum(threshold=0.5, start_length=2)
    ds = data.copy_task_dataset("copy", 2, 2, curriculum=curriculum, seed=1)
    lengths = []
    for epoch, error in enumerate([0.7, 0.2, 0.1]):
        batches = _batches(ds)
        lengths.append({batch[0].shape[1] for batch in batches})
        np.testing.assert_array_equal(
            batches[1][1], data.copy_task(2, curriculum.length, seed=[1, epoch, 1])[1]
        )
        curriculum.on_epoch_end(epoch, {"bits_per_character": error})
    # N = 2 (error 0.7: stays), 2 (0.2 < 0.5: grows), 3: 2N + 1 steps.
    assert lengths == [{5}, {5}, {7}]
    assert curriculum.length == 4 and curriculum.solved_length == 3


def _numpy_bits(y, p):
    return -(y * np.log2(p) + (1 - y) * np.log2(1 - p)).sum(axis=-1)


def test_bits_per_character_by_hand_and_against_numpy():
    # y = [1, 0], p = [0.25, 0.5]: -log2(0.25) - log2(0.5) = 3 bits.
    np.testing.assert_allclose(
        np.asarray(data.bits_per_character([[1.0, 0.0]], [[0.25, 0.5]])), [3.0]
    )
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=(3, 4, 8)).astype(np.float32)
    logits = rng.normal(size=(3, 4, 8)).astype(np.float32) * 2
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    want = _numpy_bits(y, p)
    got = data.bits_per_character(y, logits, from_logits=True)
    assert tuple(got.shape) == (3, 4)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)
    np.testing.assert_allclose(
        np.asarray(data.bits_per_character(y, p.astype(np.float32))), want, rtol=1e-4
    )
    # Wrong bits: 1 read as 0.4 and 0 read as 0.6 are wrong, 1 as 0.9 right.
    np.testing.assert_array_equal(
        np.asarray(data.bit_errors_per_character([[1, 0, 1]], [[0.9, 0.6, 0.4]])), [2]
    )
    np.testing.assert_array_equal(
        np.asarray(data.bit_errors_per_character(y, logits, from_logits=True)),
        ((logits > 0) != (y > 0.5)).sum(axis=-1),
    )
    with pytest.raises(ValueError, match=r"y_pred.shape=\(3, 4, 7\)"):
        data.bits_per_character(y, logits[..., :7])


def test_scored_mean_and_the_keras_metric_average_over_scored_steps():
    values = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    weight = np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    np.testing.assert_allclose(float(data.scored_mean(values, weight)), 3.0)
    # Two batches of a copy task through the metric, as fit passes them.
    metric = data.BitsPerCharacter(from_logits=True)
    rng = np.random.default_rng(1)
    total, count = 0.0, 0.0
    for b in range(2):
        x, y, w = data.copy_task(3, 4, seed=b)
        logits = rng.normal(size=y.shape).astype(np.float32)
        metric.update_state(y, logits, sample_weight=w)
        bits = _numpy_bits(y, 1 / (1 + np.exp(-logits.astype(np.float64))))
        total += (bits * w).sum()
        count += w.sum()
    np.testing.assert_allclose(float(metric.result()), total / count, rtol=1e-5)
    assert data.BitsPerCharacter.from_config(metric.get_config()).from_logits


def test_curriculum_grows_exactly_below_the_threshold():
    curriculum = data.LengthCurriculum(threshold=0.15, start_length=1, step=2)
    assert not curriculum.update(0.15)  # equal: not below
    assert not curriculum.update(math.nextafter(0.15, 1.0))
    assert not curriculum.update(float("nan"))
    assert curriculum.length == 1 and curriculum.solved_length == 0
    assert curriculum.update(math.nextafter(0.15, 0.0))
    assert curriculum.length == 3 and curriculum.solved_length == 1
    assert not curriculum.update(0.3)
    assert curriculum.update(0.0)
    assert curriculum.length == 5 and curriculum.solved_length == 3
    assert [h["length"] for h in curriculum.history] == [1, 1, 1, 1, 3, 3]
    assert [h["grew"] for h in curriculum.history] == [0, 0, 0, 1, 0, 1]
    capped = data.LengthCurriculum(threshold=1.0, start_length=4, step=3, max_length=6)
    assert capped.update(0.5) and capped.length == 6
    assert not capped.update(0.5) and capped.length == 6 and capped.solved_length == 6


def test_curriculum_callback_names_a_missing_log_entry():
    curriculum = data.LengthCurriculum()
    with pytest.raises(KeyError, match="bits_per_character.*'loss'"):
        curriculum.on_epoch_end(0, {"loss": 0.1})


def test_curriculum_state_round_trip_resumes_the_same_run(tmp_path):
    def run(curriculum, errors):
        for epoch, error in enumerate(errors):
            curriculum.on_epoch_end(epoch, {"val_bpc": error})

    errors = [0.5, 0.1, 0.2, 0.05, 0.01, 0.3, 0.02]
    whole = data.LengthCurriculum(threshold=0.15, max_length=10, monitor="val_bpc")
    run(whole, errors)
    first = data.LengthCurriculum(threshold=0.15, max_length=10, monitor="val_bpc")
    run(first, errors[:4])
    first.save(tmp_path / "curriculum.json")
    resumed = data.LengthCurriculum(threshold=0.15, max_length=10, monitor="val_bpc")
    resumed.load(tmp_path / "curriculum.json")
    assert resumed.length == 3 and resumed.solved_length == 2
    for epoch, error in enumerate(errors[4:], start=4):
        resumed.on_epoch_end(epoch, {"val_bpc": error})
    assert resumed.get_state() == whole.get_state()
    assert (whole.length, whole.solved_length) == (5, 4)
    assert json.loads(json.dumps(whole.get_state())) == whole.get_state()
    other = data.LengthCurriculum(threshold=0.2, max_length=10, monitor="val_bpc")
    with pytest.raises(ValueError, match="threshold=0.15.*threshold=0.2"):
        other.set_state(first.get_state())
    partial = {k: v for k, v in first.get_state().items() if k != "history"}
    with pytest.raises(ValueError, match="lacks `history`"):
        resumed.set_state(partial)


def test_fit_logs_bits_per_character_and_grows_the_length_each_epoch():
    # A frozen model (learning rate 0) predicting p = 1/4 for every bit: the
    # logged error of epoch e is NumPy's over that epoch's batches, at N = e + 1.
    curriculum = data.LengthCurriculum(threshold=100.0)
    ds = data.copy_task_dataset("copy", 4, 2, curriculum=curriculum, bits=3, seed=2)
    model = keras.Sequential(
        [
            keras.Input((None, 4)),
            keras.layers.Dense(
                3,
                kernel_initializer="zeros",
                bias_initializer=keras.initializers.Constant(math.log(1 / 3)),
            ),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.0),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
        weighted_metrics=[data.BitsPerCharacter(from_logits=True)],
    )
    model.fit(ds, epochs=3, callbacks=[curriculum], shuffle=False, verbose=0)
    for epoch in range(3):
        bits = total = 0.0
        for b in range(2):
            _, y, w = data.copy_task(4, epoch + 1, bits=3, seed=[2, epoch, b])
            bits += (_numpy_bits(y, np.full_like(y, 0.25)) * w).sum()
            total += w.sum()
        entry = curriculum.history[epoch]
        assert entry["length"] == epoch + 1
        np.testing.assert_allclose(entry["error"], bits / total, rtol=1e-5)
    assert curriculum.length == 4
