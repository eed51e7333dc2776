"""Synthesizers with an optimizer of their own: `compile(synthesizer_optimizer=...)`.

Each model is compared, weight by weight over several steps, with
independently written GradientTape code (the references of
test_pipelined_reference.py and test_truncated_bptt.py) whose updates go to
two separate optimizers: one for the network, one for the synthesizers.
"""

import json
import shutil
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import test_clocked_pair as clocked
import test_pipelined_reference as pipe
import test_truncated_bptt as tbptt
from conftest import linear_synth, script_module, train_in_process

import keras_sg

ROOT = Path(__file__).resolve().parents[2]


class _TwoOptimizers:
    """The reference's optimizer: the first `network_count` variables it is
    built on go to `network`, the rest to `synthesizers`. Each optimizer steps
    once per step; one given nothing in a step only counts it."""

    def __init__(self, network, synthesizers, network_count):
        self.network, self.synthesizers = network, synthesizers
        self.network_count = network_count

    def build(self, variables):
        self.network.build(variables[: self.network_count])
        self.synthesizers.build(variables[self.network_count :])
        self.synth_ids = {id(v) for v in variables[self.network_count :]}

    def apply(self, grads, variables):
        for optimizer, mine in (
            (self.network, lambda v: id(v) not in self.synth_ids),
            (self.synthesizers, lambda v: id(v) in self.synth_ids),
        ):
            pairs = [(g, v) for g, v in zip(grads, variables, strict=True) if mine(v)]
            if pairs:
                optimizer.apply(*zip(*pairs, strict=True))
            else:
                optimizer.iterations.assign_add(1)


def _stage_variable_count(model):
    return sum(len(s.trainable_variables) for s in model.stages)


OPTIMIZER_PAIRS = {
    # The example: Adam for the network, SGD for the synthesizers.
    "adam_sgd": (
        lambda: keras.optimizers.Adam(1e-2),
        lambda: keras.optimizers.SGD(0.1),
    ),
    # Weight decay moves a weight at zero gradient: the pipeline's warm-up
    # takes its branches, here for the synthesizers' optimizer (for the
    # model's, test_pipelined.py covers them).
    "adam_adamw": (
        lambda: keras.optimizers.Adam(1e-2),
        lambda: keras.optimizers.AdamW(5e-2, weight_decay=0.5),
    ),
}


def _compiled(cls, pair):
    make_network, make_synth = OPTIMIZER_PAIRS[pair]
    model = pipe._model(cls, "dni")
    model.compile(
        make_network(),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        synthesizer_optimizer=make_synth(),
    )
    optimizer = _TwoOptimizers(
        make_network(), make_synth(), _stage_variable_count(model)
    )
    return model, pipe._Reference(model, "dni", lag=0, optimizer=optimizer), optimizer


def test_decoupled_dni_matches_a_reference_with_two_optimizers():
    x, y = pipe._data()
    model, reference, _ = _compiled(keras_sg.DecoupledModel, "adam_sgd")
    reference.lag = 0
    pipe._run_and_compare(model, reference, x, y, check_loss=True)
    steps = pipe.EPOCHS * -(-pipe.N // pipe.BATCH)
    assert int(model.optimizer.iterations) == steps
    assert int(model.synthesizer_optimizer.iterations) == steps
    # Built once each, on its own variables: Adam's two moments per stage
    # variable; plain SGD keeps no slots.
    assert len(model.synthesizer_optimizer.variables) == 2
    assert len(model.optimizer.variables) == 2 + 2 * _stage_variable_count(model)
    # The summary counts both optimizers' variables.
    lines = []
    model.summary(print_fn=lambda line, **_: lines.append(line))
    count = sum(
        int(np.prod(v.shape))
        for o in (model.optimizer, model.synthesizer_optimizer)
        for v in o.variables
    )
    assert f" Optimizer params: {count:,}" in "\n".join(lines).splitlines()


@pytest.mark.parametrize("pair", list(OPTIMIZER_PAIRS))
def test_pipelined_matches_a_reference_with_two_optimizers_through_warm_up(pair):
    """Three stages, nine steps: the synthesizer at cut 2 first learns at step 3."""
    x, y = pipe._data()
    model, reference, optimizer = _compiled(keras_sg.PipelinedModel, pair)
    reference.lag = 1
    pipe._run_and_compare(model, reference, x, y, check_loss=True)
    steps = pipe.EPOCHS * -(-pipe.N // pipe.BATCH)
    assert int(model.optimizer.iterations) == steps
    assert int(model.synthesizer_optimizer.iterations) == steps
    assert int(optimizer.synthesizers.iterations) == steps


@pytest.mark.parametrize("method", ["dni_aux"])  # both synthesizers
def test_truncated_bptt_matches_a_tape_reference_with_two_optimizers(
    method, monkeypatch
):
    # The reference applies SGD at its module's `LR`; the gradients are read
    # back from the step it took. A large power of two keeps them exact
    # enough for Adam, which divides out their scale.
    lr = 1024.0
    monkeypatch.setattr(tbptt, "LR", lr)
    steps, t, epochs = 8, 2, 3
    x, y = tbptt._data(tbptt.B, steps, seed=3)
    net = tbptt._net(steps)
    twin = tbptt._twin(net)
    aux = method == "dni_aux"
    kwargs = dict(sg_loss_weight=0.5, aux_weight=2.0)
    model = keras_sg.TruncatedBPTTModel(
        net,
        truncation=t,
        method=method,
        synthesizer=tbptt._random_synth(8, seed=4),
        aux_synthesizer=tbptt._random_synth(8, seed=5) if aux else None,
        **kwargs,
    )
    model.compile(
        keras.optimizers.Adam(1e-2),
        "mse",
        synthesizer_optimizer=keras.optimizers.SGD(0.3),
        run_eagerly=True,
    )
    ref_synths = [tbptt._random_synth(8, seed=4)]
    ref_synths += [tbptt._random_synth(8, seed=5)] if aux else []
    network_opt, synth_opt = keras.optimizers.Adam(1e-2), keras.optimizers.SGD(0.3)
    synth_vars = [v for s in ref_synths for v in s.trainable_variables]
    network_opt.build(twin.trainable_variables)
    synth_opt.build(synth_vars)
    model.fit(x, y, batch_size=tbptt.B, epochs=epochs, verbose=0)
    for _ in range(epochs):
        # Read the reference's gradients back from the SGD step it took, and
        # give them to the two optimizers instead.
        variables = twin.trainable_variables + synth_vars
        before = [v.numpy() for v in variables]
        tbptt._dni_reference_step(twin, *(ref_synths + [None])[:2], x, y, t, 0.5, 2.0)
        grads = [(b - v.numpy()) / lr for b, v in zip(before, variables, strict=True)]
        for v, b in zip(variables, before, strict=True):
            v.assign(b)
        n = len(twin.trainable_variables)
        network_opt.apply(grads[:n], twin.trainable_variables)
        synth_opt.apply(grads[n:], synth_vars)
    synths = [model.synthesizer] + ([model.aux_synthesizer] if aux else [])
    pairs = [(net, twin), *zip(synths, ref_synths, strict=True)]
    for got, want in pairs:
        for a, b in zip(got.get_weights(), want.get_weights(), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert int(model.synthesizer_optimizer.iterations) == epochs


def _weights(model):
    return [np.array(w) for w in model.get_weights()]


def test_keras_round_trip_keeps_the_synthesizer_optimizer_and_resumes(tmp_path):
    x, y = pipe._data()
    model = pipe._model(keras_sg.DecoupledModel, "dni")
    model.compile(
        keras.optimizers.Adam(1e-2),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        synthesizer_optimizer=keras.optimizers.Adam(3e-2, beta_1=0.7),
    )
    fit = dict(batch_size=pipe.BATCH, shuffle=False, verbose=0)
    model.fit(x, y, epochs=1, **fit)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)

    synth = loaded.synthesizer_optimizer
    assert isinstance(synth, keras.optimizers.Adam)
    assert synth is not loaded.optimizer
    assert synth.get_config()["beta_1"] == pytest.approx(0.7)
    assert float(synth.learning_rate) == pytest.approx(3e-2)
    assert int(synth.iterations) == 3
    for a, b in zip(
        model.synthesizer_optimizer.variables, synth.variables, strict=True
    ):
        np.testing.assert_array_equal(np.array(a), np.array(b))
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables, strict=True):
        np.testing.assert_array_equal(np.array(a), np.array(b))
    # The Adam moments are the synthesizers' (their shapes), not zeros.
    moments = [v for v in synth.variables if "momentum" in v.path]
    assert moments and all(np.abs(np.array(m)).max() > 0 for m in moments)

    model.fit(x, y, epochs=2, **fit)
    loaded.fit(x, y, epochs=2, **fit)
    for a, b in zip(_weights(model), _weights(loaded), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert int(loaded.synthesizer_optimizer.iterations) == 9


def test_tf_checkpoints_hold_the_synthesizer_optimizer(tmp_path):
    """`tf.train.Checkpoint` follows the attribute, as it does `optimizer`."""
    import tensorflow as tf

    x, y = pipe._data()
    model = pipe._model(keras_sg.DecoupledModel, "dni")
    model.compile(
        keras.optimizers.Adam(1e-2),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        synthesizer_optimizer=keras.optimizers.Adam(3e-2),
    )
    fit = dict(batch_size=pipe.BATCH, shuffle=False, verbose=0)
    model.fit(x, y, epochs=1, **fit)
    saved = [
        keras.ops.convert_to_numpy(v) for v in model.synthesizer_optimizer.variables
    ]
    path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
    model.fit(x, y, epochs=1, **fit)
    tf.train.Checkpoint(model=model).restore(path).assert_existing_objects_matched()
    restored = model.synthesizer_optimizer.variables
    assert int(restored[0]) == 3  # iterations
    for a, b in zip(restored, saved, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), b)


def test_without_a_synthesizer_optimizer_compile_is_keras_s():
    model = pipe._model(keras_sg.DecoupledModel, "dni")
    assert model.synthesizer_optimizer is None
    assert "synthesizer_optimizer" not in model.get_compile_config()
    # Recompiling without one drops an earlier one.
    model.compile("adam", "mse", synthesizer_optimizer="sgd")
    assert isinstance(model.synthesizer_optimizer, keras.optimizers.SGD)
    config = model.get_compile_config()["synthesizer_optimizer"]
    assert config["class_name"] == "SGD"
    model.compile("adam", "mse")
    assert model.synthesizer_optimizer is None


def test_a_placed_model_places_the_synthesizer_optimizer_too():
    """Its slots and updates go on each variable's device, as `optimizer`'s
    (`place_optimizer`); one device here: the wrapping, not the placement."""
    devices = ["/device:CPU:0"] * 3
    model = keras_sg.DecoupledModel(pipe._network(), _two_synths(), devices=devices)
    model.compile("adam", "mse", synthesizer_optimizer="sgd")
    assert getattr(model.synthesizer_optimizer, "_keras_sg_placed", False)
    assert getattr(model.optimizer, "_keras_sg_placed", False)


def test_bad_synthesizer_optimizers_are_refused():
    model = pipe._model(keras_sg.DecoupledModel, "dni")
    with pytest.raises(ValueError, match=r"synthesizer_optimizer='nope'"):
        model.compile("adam", "mse", synthesizer_optimizer="nope")
    adam = keras.optimizers.Adam()
    with pytest.raises(ValueError, match=r"another optimizer instance"):
        model.compile(adam, "mse", synthesizer_optimizer=adam)
    backprop = keras_sg.DecoupledModel(pipe._network(), method="backprop")
    with pytest.raises(ValueError, match=r"method='backprop' trains no synth"):
        backprop.compile("adam", "mse", synthesizer_optimizer="sgd")
    with pytest.raises(ValueError, match=r"scales the loss"):
        model.compile(
            keras.optimizers.Adam(loss_scale_factor=8.0),
            "mse",
            synthesizer_optimizer="sgd",
        )


def test_mixed_float16_refuses_a_synthesizer_optimizer():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        net = keras.Sequential(
            [
                keras.Input((3,)),
                keras.layers.Dense(4),
                keras_sg.Interface(),
                keras.layers.Dense(2),
            ]
        )
        model = keras_sg.DecoupledModel(net, [linear_synth()], method="dni")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    with pytest.raises(ValueError, match=r"dtype policy is 'mixed_float16'"):
        model.compile("adam", "mse", synthesizer_optimizer="sgd")
    assert not model.compiled  # nothing half done
    model.compile("adam", "mse")  # one optimizer, loss scaled: as before
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)


# ------------------------------------------------- which optimizer owns what


def _two_synths():
    return [linear_synth(), linear_synth()]


def _randomize(synths, seed=4):
    """Non-zero synthesizers (built), so that every path carries a signal."""
    rng = np.random.default_rng(seed)
    for synth in synths:
        synth.set_weights([rng.normal(size=w.shape) * 0.5 for w in synth.get_weights()])


def _unlocked():
    inputs = [keras_sg.DenseInputSynthesizer((pipe.H,)) for _ in range(2)]
    model = keras_sg.UnlockedModel(
        pipe._network(), _two_synths(), input_synthesizers=inputs
    )
    return model, [*model.synthesizers, *inputs], pipe._data()


def _bp_lambda():
    model = keras_sg.BPLambdaModel(pipe._network(), _two_synths(), bp_lambda=0.5)
    return model, model.synthesizers, pipe._data()


def _clocked():
    model = clocked._model("dni")
    synths = [model.message_synthesizer, model.state_synthesizer]
    return model, synths, clocked._data()


# StochasticUpdateModel: see test_stochastic_updates_set_back_the_synthesizer_...
@pytest.mark.parametrize("make", [_unlocked, _bp_lambda, _clocked])
def test_the_synthesizer_optimizer_trains_the_synthesizers_and_only_them(make):
    """The synthesizers' SGD at rate 0: they stay put, everything else moves."""
    network_lr, synth_lr = 0.1, 0.0
    model, synths, (x, y) = make()
    _randomize(synths)
    model.compile(
        keras.optimizers.SGD(network_lr),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        synthesizer_optimizer=keras.optimizers.SGD(synth_lr),
    )
    model.fit(x[:4], y[:4], batch_size=4, epochs=1, verbose=0)  # builds
    synth_ids = {id(v) for s in synths for v in s.trainable_variables}
    variables = model.trainable_variables
    assert synth_ids and len(synth_ids) < len(variables)
    before = [keras.ops.convert_to_numpy(v) for v in variables]
    model.fit(x[:4], y[:4], batch_size=4, epochs=2, verbose=0)
    for v, b in zip(variables, before, strict=True):
        moved = not np.array_equal(keras.ops.convert_to_numpy(v), b)
        frozen = (synth_lr if id(v) in synth_ids else network_lr) == 0.0
        if frozen:
            assert not moved, v.path
    moved = [
        not np.array_equal(keras.ops.convert_to_numpy(v), b)
        for v, b in zip(variables, before, strict=True)
        if (id(v) in synth_ids) == (synth_lr > 0)
    ]
    assert all(moved), moved


def test_stochastic_updates_set_back_the_synthesizer_optimizer_slots():
    """A stage not drawn keeps its synthesizer's weights and Adam moments."""
    x, y = pipe._data()
    synths = _two_synths()
    model = keras_sg.StochasticUpdateModel(
        pipe._network(), synths, update_probability=0.5, seed=3
    )
    _randomize(synths)
    model.compile(
        keras.optimizers.Adam(1e-2),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        synthesizer_optimizer=keras.optimizers.Adam(5e-2),
    )
    model.train_on_batch(x[:4], y[:4])
    opt = model.synthesizer_optimizer
    index = {id(v): i for i, v in enumerate(opt._trainable_variables)}

    def state(k):
        variables = synths[k].trainable_variables
        slots = [opt._momentums[index[id(v)]] for v in variables]
        slots += [opt._velocities[index[id(v)]] for v in variables]
        return [keras.ops.convert_to_numpy(v) for v in variables + slots]

    seen = set()
    for _ in range(6):
        mask = np.array(model.update_mask(model.optimizer.iterations))
        before = [state(k) for k in range(2)]
        model.train_on_batch(x[:4], y[:4])
        for k in range(2):
            same = all(
                np.array_equal(a, b) for a, b in zip(state(k), before[k], strict=True)
            )
            assert same == (not mask[k]), (k, mask)
            seen.add(bool(mask[k]))
    assert seen == {True, False}
    assert int(opt.iterations) == int(model.optimizer.iterations) == 7


def test_mixed_bfloat16_with_a_synthesizer_optimizer_smoke():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = pipe._model(keras_sg.DecoupledModel, "dni")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    model.compile(
        "adam",
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        synthesizer_optimizer="sgd",
    )
    x, y = pipe._data()
    before = [np.array(w) for s in model.synthesizers for w in s.get_weights()]
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    after = [np.array(w) for s in model.synthesizers for w in s.get_weights()]
    assert all(np.isfinite(a).all() for a in after)
    assert any(not np.array_equal(a, b) for a, b in zip(after, before, strict=True))


# ------------------------------------------------------------- scripts/train.py


@pytest.fixture
def train_script():
    # One test's: `train_in_process` loads the script anew, and the absl
    # flags of two loaded copies at once would clash.
    with script_module(ROOT / "scripts" / "train.py", "keras_sg_train_synth") as m:
        yield m


def _train(workdir, *overrides):
    """scripts/train.py's main, in process, on mnist_fcn's dni smoke config
    with an SGD synthesizer optimizer (the paper's schedule for both). A run
    that ends with an error raises SystemExit with the error's line."""
    done = train_in_process(
        [
            "--config=configs/mnist_fcn.py:dni,smoke",
            f"--workdir={workdir}",
            "--config.data.train_examples=192",
            "--config.log.diagnostics_every_steps=0",
            "--config.synthesizer_optimizer.name=sgd",
            "--config.synthesizer_optimizer.learning_rate=0.05",
            *overrides,
        ]
    )
    if done.returncode:
        raise SystemExit(done.stderr.strip())
    return json.loads((Path(workdir) / "metrics.json").read_text())


def test_train_py_resumes_the_synthesizer_optimizer(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _train(straight, "--config.epochs=3")
    final = keras.models.load_model(straight / "ckpt" / "epoch-0003.keras")
    synth = final.synthesizer_optimizer
    assert isinstance(synth, keras.optimizers.SGD)
    assert isinstance(final.optimizer, keras.optimizers.Adam)
    assert int(synth.iterations) == int(final.optimizer.iterations) == 9
    # Its own rate, on the paper's schedule: /10 after step 5, /100 after 7.
    assert float(synth.learning_rate) == pytest.approx(0.05 / 100)
    assert float(final.optimizer.learning_rate) == pytest.approx(1e-3 / 100)

    # A run stopped after epoch 2: its workdir as it was then.
    shutil.copytree(straight, resumed)
    (resumed / "ckpt" / "epoch-0003.keras").unlink()
    (resumed / "metrics.json").unlink()
    history = (resumed / "history.csv").read_text().splitlines()
    (resumed / "history.csv").write_text("\n".join(history[:3]) + "\n")
    metrics = _train(resumed, "--config.epochs=3")
    assert metrics["resumed_from_epoch"] == 2
    again = keras.models.load_model(resumed / "ckpt" / "epoch-0003.keras")
    assert int(again.synthesizer_optimizer.iterations) == 9
    for a, b in zip(again.get_weights(), final.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "--config.synthesizer_optimizer.learning_rate=-1.0",
            "synthesizer_optimizer.learning_rate=-1.0",
        ),
        (
            "--config.synthesizer_optimizer.name=nope",
            "synthesizer_optimizer.name='nope'",
        ),
        ("--config.method=backprop", "method='backprop' trains no synthesizers"),
    ],
)
def test_train_py_names_a_bad_synthesizer_optimizer(tmp_path, override, message):
    with pytest.raises(SystemExit, match=message):
        _train(tmp_path, override)


# -------------------------------------------------------------------- configs


def _config(name, variant):
    sys.path.insert(0, str(ROOT))
    import importlib

    return importlib.import_module(f"configs.{name}").get_config(variant)


@pytest.mark.parametrize(
    "name, variant, field, value",
    [
        ("mnist_fcn", "dni,smoke", "synthesizer_optimizer.learning_rate", None),
        ("mnist_fcn", "cdni", "synthesizer_optimizer.learning_rate", -0.1),
        ("mnist_fcn", "dni", "synthesizer_optimizer.learning_rate", float("inf")),
        ("copy", "dni,smoke", "synthesizer_optimizer.learning_rate", 0.0),
    ],
)
def test_configs_name_a_bad_synthesizer_optimizer(name, variant, field, value):
    from configs import common, sequence

    config = _config(name, variant)
    config.synthesizer_optimizer.name = "sgd"
    config.synthesizer_optimizer.learning_rate = 0.1
    (common if name == "mnist_fcn" else sequence).validate(config)  # accepted
    *parents, leaf = field.split(".")
    config[parents[0]][leaf] = value
    with pytest.raises(ValueError, match=f"Received: {field}={value!r}"):
        (common if name == "mnist_fcn" else sequence).validate(config)


@pytest.mark.parametrize("name, variant", [("mnist_fcn", "backprop"), ("copy", "bptt")])
def test_configs_refuse_a_synthesizer_optimizer_without_synthesizers(name, variant):
    from configs import common, sequence

    check = common if name == "mnist_fcn" else sequence
    config = _config(name, variant)
    check.validate(config)  # "" (the default): accepted
    config.synthesizer_optimizer.name = "sgd"
    config.synthesizer_optimizer.learning_rate = 0.1
    with pytest.raises(ValueError, match=f"method='{variant}' trains no synth"):
        check.validate(config)


def test_a_workdir_from_before_the_field_resumes_without_it(train_script, tmp_path):
    """A config.json written before `synthesizer_optimizer` existed recorded
    the one-optimizer behaviour: a rerun without the field matches it."""
    config = _config("mnist_fcn", "dni,smoke")
    recorded = json.loads(config.to_json_best_effort())
    del recorded["synthesizer_optimizer"]
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "epoch-0001.keras").write_bytes(b"")
    (tmp_path / "config.json").write_text(json.dumps(recorded))
    train_script.check_same_config(tmp_path, config)  # accepted
    config.synthesizer_optimizer.name = "sgd"
    config.synthesizer_optimizer.learning_rate = 0.1
    with pytest.raises(SystemExit, match=r"synthesizer_optimizer.name='' -> 'sgd'"):
        train_script.check_same_config(tmp_path, config)


def test_the_sequence_scripts_synthesizer_optimizer(train_script):
    """train_sequence.py's: constant rate (no schedule), the clipnorm it is given."""
    config = _config("copy", "dni,smoke")
    assert train_script.synthesizer_optimizer(config) is None
    config.synthesizer_optimizer.name = "sgd"
    config.synthesizer_optimizer.learning_rate = 0.2
    synth = train_script.synthesizer_optimizer(config, extra={"clipnorm": 1.5})
    assert isinstance(synth, keras.optimizers.SGD)
    assert float(synth.learning_rate) == pytest.approx(0.2)
    assert synth.clipnorm == 1.5
