"""Stochastic updates: p = 1 is DNI, the seeded draws decide exactly what moves."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import linear_synth, mlp, weights_of

import keras_sg

B, D, H, OUT, LR = 5, 3, 4, 2, 0.1
STEPS_PER_EPOCH = 4


def _synths(seed=7, num_classes=None):
    synths = [linear_synth(num_classes=num_classes) for _ in range(2)]
    rng = np.random.default_rng(seed)
    width = H + (num_classes or 0)
    for synth in synths:
        synth.build((None, H))
        # Non-zero synthesizers, so every stage below the top moves when drawn.
        synth.head.set_weights(
            [rng.normal(size=(width, H)) * 0.5, rng.normal(size=(H,))]
        )
    return synths


def _pair(optimizer, method="dni", loss="mse", **kwargs):
    """A StochasticUpdateModel and a DNI (cDNI) model with identical weights."""
    classes = OUT if method == "cdni" else None
    net = mlp([H, H], D, activation="tanh", out_units=OUT)
    twin = keras.models.clone_model(net)
    twin.set_weights(net.get_weights())
    model = keras_sg.StochasticUpdateModel(
        net, synthesizers=_synths(num_classes=classes), method=method, **kwargs
    )
    reference = keras_sg.DecoupledModel(
        twin, synthesizers=_synths(num_classes=classes), method=method
    )
    for m in (model, reference):
        m.compile(optimizer=optimizer(), loss=loss)
    return model, reference


def _data(n=STEPS_PER_EPOCH * B, seed=0, classes=None):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, D)).astype("float32")
    if classes:
        return x, rng.integers(0, classes, size=n)
    return x, rng.normal(size=(n, OUT)).astype("float32")


def _parts(model):
    """Stage 0, stage 1, top stage, synthesizer at cut 1, at cut 2."""
    return [*model.stages, *model.synthesizers]


def _expected_masks(seed, p, steps, stages=3):
    return np.array(
        [
            tf.random.stateless_uniform((stages,), seed=[seed, t]).numpy() < p
            for t in range(steps)
        ]
    )


class _Moves(keras.callbacks.Callback):
    """Records, after every batch, which parts moved in that step."""

    def __init__(self, parts):
        super().__init__()
        self.parts = parts
        self.moved = []

    def on_train_begin(self, logs=None):
        self.last = [weights_of([p]) for p in self.parts]

    def on_train_batch_end(self, batch, logs=None):
        now = [weights_of([p]) for p in self.parts]
        self.moved.append(
            [
                any(np.any(a != b) for a, b in zip(n, o, strict=True))
                for n, o in zip(now, self.last, strict=True)
            ]
        )
        self.last = now


OPTIMIZERS = {
    "sgd": lambda: keras.optimizers.SGD(LR),
    "adam": lambda: keras.optimizers.Adam(0.05),
    "adamw": lambda: keras.optimizers.AdamW(0.05, weight_decay=0.1),
}


@pytest.mark.parametrize(
    "name, method", [("sgd", "dni"), ("adam", "dni"), ("adam", "cdni")]
)
def test_probability_one_equals_dni(name, method):
    classes = OUT if method == "cdni" else None
    loss = (
        keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if classes
        else "mse"
    )
    model, reference = _pair(
        OPTIMIZERS[name], method, loss, update_probability=1.0, seed=3
    )
    x, y = _data(classes=classes)
    start = weights_of(_parts(model))

    h_a = model.fit(x, y, batch_size=B, epochs=2, shuffle=False, verbose=0)
    h_b = reference.fit(x, y, batch_size=B, epochs=2, shuffle=False, verbose=0)

    moved = weights_of(_parts(model))
    assert max(np.abs(a - b).max() for a, b in zip(moved, start, strict=True)) > 1e-2
    for a, b in zip(moved, weights_of(_parts(reference)), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    for key in ("loss", "cut_1_sg_loss", "cut_2_sg_loss"):
        np.testing.assert_allclose(h_a.history[key], h_b.history[key], rtol=1e-6)


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_seeded_draws_decide_exactly_which_stages_move(name):
    seed, p, epochs = 11, 0.5, 3
    model, _ = _pair(OPTIMIZERS[name], update_probability=p, seed=seed)
    x, y = _data()
    moves = _Moves(_parts(model))

    model.fit(
        x, y, batch_size=B, epochs=epochs, shuffle=False, verbose=0, callbacks=[moves]
    )

    steps = epochs * STEPS_PER_EPOCH
    masks = _expected_masks(seed, p, steps)
    # The draws must test something: every stage both moves and rests, and
    # rests after having moved (when Adam's momentum or decay would move it).
    for k in range(3):
        assert masks[:, k].any() and not masks[:, k].all()
        assert not masks[np.argmax(masks[:, k]) :, k].all()
    moved = np.array(moves.moved)
    np.testing.assert_array_equal(moved[:, :3], masks)
    # The synthesizer at cut k updates with stage k.
    np.testing.assert_array_equal(moved[:, 3:], masks[:, :2])
    assert int(model.optimizer.iterations) == steps


def _slots_of(optimizer, variable):
    """Adam's moments of a variable, found by index (independently of the model)."""
    if not hasattr(optimizer, "_momentums"):
        return []
    i = optimizer._get_variable_index(variable)
    return [optimizer._momentums[i], optimizer._velocities[i]]


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_updates_equal_dni_steps_with_undrawn_parts_set_back(name):
    """Each step is DNI's step, after which the parts not drawn, and their
    Adam moments, are set back by hand."""
    seed, p = 15, 0.5
    model, reference = _pair(OPTIMIZERS[name], update_probability=p, seed=seed)
    for a, b in zip(_parts(reference), _parts(model), strict=True):
        a.set_weights(b.get_weights())
    x, y = _data()
    steps = 2 * STEPS_PER_EPOCH
    masks = _expected_masks(seed, p, steps)
    start = weights_of(_parts(model))
    model.fit(x, y, batch_size=B, epochs=2, shuffle=False, verbose=0)

    parts = _parts(reference)
    for t in range(steps):
        i = t % STEPS_PER_EPOCH
        if t:
            before = [
                [np.array(v) for v in [w, *_slots_of(reference.optimizer, w)]]
                for part in parts
                for w in part.trainable_variables
            ]
        reference.train_on_batch(x[i * B : (i + 1) * B], y[i * B : (i + 1) * B])
        if not t:
            continue  # the optimizer is built in the first step
        drawn = list(masks[t]) + list(masks[t, :2])
        index = 0
        for part, keep in zip(parts, drawn, strict=True):
            for w in part.trainable_variables:
                if not keep:
                    for v, old in zip(
                        [w, *_slots_of(reference.optimizer, w)],
                        before[index],
                        strict=True,
                    ):
                        v.assign(old)
                index += 1
    # Step 0 must draw everything for the set-back above to be exact there.
    assert masks[0].all()

    moved = weights_of(_parts(model))
    assert max(np.abs(a - b).max() for a, b in zip(moved, start, strict=True)) > 1e-2
    for a, b in zip(moved, weights_of(parts), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_sg_loss_is_logged_over_the_steps_a_cut_updated():
    seed, p = 11, 0.5
    model, _ = _pair(OPTIMIZERS["sgd"], update_probability=p, seed=seed)
    twin, _ = _pair(OPTIMIZERS["sgd"], update_probability=p, seed=seed)
    for a, b in zip(_parts(twin), _parts(model), strict=True):
        a.set_weights(b.get_weights())
    x, y = _data()
    masks = _expected_masks(seed, p, STEPS_PER_EPOCH)
    assert masks[:, 0].any() and not masks[:, 0].all()

    logged = model.fit(x, y, batch_size=B, epochs=1, shuffle=False, verbose=0)

    # The twin, step by step: each step's loss at cut 1, or 0 (an empty
    # mean) when the cut was not drawn.
    losses = []
    for i in range(STEPS_PER_EPOCH):
        logs = twin.train_on_batch(
            x[i * B : (i + 1) * B], y[i * B : (i + 1) * B], return_dict=True
        )
        twin.sg_loss_trackers[0].reset_state()
        losses.append(logs["cut_1_sg_loss"])
    losses = np.array(losses)
    assert np.all(losses[masks[:, 0]] > 0)
    np.testing.assert_array_equal(losses[~masks[:, 0]], 0.0)
    np.testing.assert_allclose(
        logged.history["cut_1_sg_loss"][0], losses[masks[:, 0]].mean(), rtol=1e-6
    )


def test_keras_round_trip_keeps_arguments_and_resumes_the_draws(tmp_path):
    model, _ = _pair(OPTIMIZERS["adam"], update_probability=0.4, seed=9)
    x, y = _data()
    model.fit(x, y, batch_size=B, epochs=1, shuffle=False, verbose=0)
    path = tmp_path / "stochastic.keras"
    model.save(path)
    loaded = keras.models.load_model(path)

    assert isinstance(loaded, keras_sg.StochasticUpdateModel)
    assert loaded.update_probability == 0.4 and loaded.seed == 9
    config = loaded.get_config()
    assert config["update_probability"] == 0.4 and config["seed"] == 9
    assert int(loaded.optimizer.iterations) == STEPS_PER_EPOCH
    np.testing.assert_array_equal(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0)
    )
    model.fit(x, y, batch_size=B, epochs=2, shuffle=False, verbose=0)
    loaded.fit(x, y, batch_size=B, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(weights_of(_parts(model)), weights_of(_parts(loaded)), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"update_probability": 0.0}, "update_probability=0.0"),
        ({"update_probability": 1.5}, "update_probability=1.5"),
        ({"update_probability": True}, "update_probability=True"),
        ({"update_probability": "half"}, "update_probability='half'"),
        ({"seed": -1}, "seed=-1"),
        ({"seed": 1.5}, "seed=1.5"),
        ({"seed": 2**31}, "seed=2147483648"),
        ({"method": "backprop"}, "method='backprop'"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    net = mlp([H, H], D, out_units=OUT)
    with pytest.raises(ValueError, match=message):
        keras_sg.StochasticUpdateModel(net, synthesizers=_synths(), **kwargs)


@pytest.fixture
def mixed_float16():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_probability_one_equals_dni_under_mixed_float16(mixed_float16):
    model, reference = _pair(OPTIMIZERS["sgd"], update_probability=1.0)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    x, y = _data()
    start = weights_of(_parts(model))
    model.fit(x, y, batch_size=B, epochs=2, shuffle=False, verbose=0)
    reference.fit(x, y, batch_size=B, epochs=2, shuffle=False, verbose=0)
    moved = weights_of(_parts(model))
    assert max(np.abs(a - b).max() for a, b in zip(moved, start, strict=True)) > 1e-2
    for a, b in zip(moved, weights_of(_parts(reference)), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_seeded_draws_under_mixed_float16(mixed_float16):
    seed, p = 11, 0.5
    model, _ = _pair(OPTIMIZERS["adam"], update_probability=p, seed=seed)
    x, y = _data()
    moves = _Moves(_parts(model))
    model.fit(x, y, batch_size=B, epochs=2, shuffle=False, verbose=0, callbacks=[moves])
    masks = _expected_masks(seed, p, 2 * STEPS_PER_EPOCH)
    moved = np.array(moves.moved)
    np.testing.assert_array_equal(moved[:, :3], masks)
    np.testing.assert_array_equal(moved[:, 3:], masks[:, :2])
