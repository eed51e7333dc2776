"""summary(): stages, devices, and each synthesizer's cost against its stage."""

import keras
import numpy as np
import pytest
from conftest import linear_synth, mlp

import keras_sg
from keras_sg.models import costs
from keras_sg.models.summary import summary_rows

# The MNIST MLP of the tests below: 784 -> 256 -> 256 -> 10, no biases in the
# hidden layers (batch norm follows them), cuts after each hidden layer.
FCN_STAGE_MACS = [784 * 256, 256 * 256, 256 * 10]
# A linear cDNI synthesizer on a 256-wide cut reads the activation and the
# one-hot label: (256 + 10) inputs, 256 outputs.
FCN_SYNTH_MACS = (256 + 10) * 256


def _text(model, **kwargs):
    lines = []
    model.summary(print_fn=lines.append, line_length=150, **kwargs)
    return "\n".join(lines)


def _fcn_cdni():
    net = keras_sg.models.fully_connected((784,), 10, depth=3, units=256)
    synths = [keras_sg.DenseSynthesizer(hidden_layers=0, num_classes=10) for _ in "ab"]
    return keras_sg.DecoupledModel(net, synths, method="cdni")


def test_fcn_stage_and_linear_cdni_synthesizer_macs_by_hand():
    model = _fcn_cdni()
    rows = summary_rows(model)
    stages = [r for r in rows if r.kind == "stage"]
    synths = [r for r in rows if r.kind == "synthesizer"]
    assert [r.macs for r in stages] == [200_704, 65_536, 2_560] == FCN_STAGE_MACS
    assert [r.macs for r in synths] == [68_096, 68_096] == [FCN_SYNTH_MACS] * 2
    assert synths[0].ratio == pytest.approx(FCN_SYNTH_MACS / FCN_STAGE_MACS[0])
    assert synths[1].ratio == pytest.approx(FCN_SYNTH_MACS / FCN_STAGE_MACS[1])
    assert [r.output_shape for r in stages] == [(None, 256), (None, 256), (None, 10)]

    text = _text(model)
    assert "200,704" in text and "68,096" in text
    assert "0.339×" in text  # 68,096 / 200,704
    assert "1.04×" in text  # 68,096 / 65,536
    total_stage, total_synth = sum(FCN_STAGE_MACS), 2 * FCN_SYNTH_MACS
    assert f"{total_stage:,} MACs/example" in text
    assert f"{total_synth:,} MACs/example ({total_synth / total_stage:.3g}×" in text


def test_param_counts_add_up_to_count_params():
    model = _fcn_cdni()
    rows = summary_rows(model)
    for row in rows:
        assert row.params == row.layer.count_params()
    assert sum(r.params for r in rows) == model.count_params()
    # Dense without bias 784*256, batch norm 4*256; head 256*10 + 10.
    assert [r.params for r in rows if r.kind == "stage"] == [
        784 * 256 + 4 * 256,
        256 * 256 + 4 * 256,
        256 * 10 + 10,
    ]
    # The linear synthesizer's kernel reads the context too; plus a bias.
    assert rows[1].params == (256 + 10) * 256 + 256
    text = _text(model)
    assert f"Total params: {model.count_params():,}" in text


def test_cnn_stage_and_conv_synthesizer_macs_by_hand():
    net = keras_sg.models.convolutional(
        (8, 8, 1), 10, depth=3, filters=4, kernel_size=3
    )
    synths = [
        keras_sg.ConvSynthesizer(
            hidden_layers=1, filters=6, kernel_size=3, num_classes=10
        )
        for _ in "ab"
    ]
    model = keras_sg.DecoupledModel(net, synths, method="cdni")
    rows = summary_rows(model)
    stage = [r.macs for r in rows if r.kind == "stage"]
    synth = [r.macs for r in rows if r.kind == "synthesizer"]
    # 'same' 3x3 convs on 8x8: 64 positions, 9 taps each.
    assert stage == [64 * 9 * 1 * 4, 64 * 9 * 4 * 4, (8 * 8 * 4) * 10]
    # Hidden conv on 4 + 10 label channels to 6 filters, head 6 -> 4 channels.
    per_synth = 64 * 9 * (4 + 10) * 6 + 64 * 9 * 6 * 4
    assert synth == [per_synth, per_synth] == [62_208, 62_208]
    ratios = [r.ratio for r in rows if r.kind == "synthesizer"]
    assert ratios == pytest.approx([62_208 / 2_304, 62_208 / 9_216])
    assert "27×" in _text(model)  # 62,208 / 2,304


def test_layer_macs_by_hand():
    count = costs.macs_per_example
    # Dense counts in * out at every position of the middle axes.
    assert count(keras.layers.Dense(5), (None, 3)) == 15
    assert count(keras.layers.Dense(5), (None, 7, 3)) == 7 * 3 * 5
    # Valid 3x3 conv, stride 2, 2 groups on 9x9x4: 4x4 outputs.
    conv = keras.layers.Conv2D(6, 3, strides=2, groups=2)
    assert count(conv, (None, 9, 9, 4)) == 16 * 9 * 2 * 6
    assert count(keras.layers.Conv1D(3, 2), (None, 10, 5)) == 9 * 2 * 5 * 3
    depthwise = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same")
    assert count(depthwise, (None, 5, 5, 3)) == 25 * 9 * 3 * 2
    separable = keras.layers.SeparableConv2D(7, 3, depth_multiplier=2)
    assert count(separable, (None, 5, 5, 3)) == 9 * 9 * 3 * 2 + 9 * 3 * 2 * 7
    transpose = keras.layers.Conv2DTranspose(5, 3, strides=2)
    assert count(transpose, (None, 4, 4, 2)) == 16 * 9 * 2 * 5
    for free in [keras.layers.ReLU(), keras.layers.BatchNormalization()]:
        assert count(free, (None, 4)) == 0
    # Synthesizers: the context widens the first layer only.
    low_rank = keras_sg.LowRankSynthesizer(rank=4, num_classes=3)
    assert count(low_rank, (None, 8)) == (8 + 3) * 4 + 4 * 8
    mlp_synth = keras_sg.DenseSynthesizer(hidden_layers=2, units=16, num_classes=3)
    assert count(mlp_synth, (None, 2, 8)) == 2 * ((8 + 3) * 16 + 16 * 16 + 16 * 8)
    assert count(keras_sg.DenseSynthesizer(hidden_layers=0), (None, 8)) == 64


def test_uncountable_layers_say_so_rather_than_guess():
    lstm = keras.layers.LSTM(4)
    assert costs.macs_per_example(lstm, (None, 5, 3)) is None
    net = keras.Sequential(
        [
            keras.Input((5, 3)),
            keras.layers.LSTM(4, return_sequences=True, name="recurrent"),
            keras_sg.Interface(name="cut"),
            keras.layers.Flatten(),
            keras.layers.Dense(2),
        ]
    )
    model = keras_sg.DecoupledModel(
        net, [keras_sg.DenseSynthesizer(hidden_layers=0)], method="dni"
    )
    rows = summary_rows(model)
    assert rows[0].macs is None and rows[0].uncounted == ("recurrent",)
    assert rows[1].macs == 5 * 4 * 4 and rows[1].ratio is None  # 5 steps
    assert rows[2].macs == 20 * 2
    text = _text(model)
    assert "n/a" in text and "no multiply-add count for layer(s) recurrent" in text


def _conv_data(n=32):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 8, 8, 1)).astype("float32"), rng.integers(0, 3, n)


def _mlp_data(n=32):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 6)).astype("float32"), rng.integers(0, 3, n)


def _synth(kind, num_classes=None):
    if kind == "dense":
        return keras_sg.DenseSynthesizer(units=8, num_classes=num_classes)
    if kind == "low_rank":
        return keras_sg.LowRankSynthesizer(rank=2, num_classes=num_classes)
    return keras_sg.ConvSynthesizer(
        hidden_layers=1, filters=3, kernel_size=3, num_classes=num_classes
    )


def _net(kind):
    if kind == "conv":
        return keras_sg.models.convolutional((8, 8, 1), 3, depth=3, filters=2)
    return mlp([8, 8], 6, out_units=3)


def _model(model_class, kind, method):
    num_classes = 3 if method == "cdni" else None
    synths = [_synth(kind, num_classes) for _ in "ab"]
    if model_class is keras_sg.GPipeModel:
        return keras_sg.GPipeModel(_net(kind), micro_batches=2)
    return model_class(_net(kind), synths, method=method)


@pytest.mark.parametrize(
    "model_class, kind, method",
    [
        (keras_sg.DecoupledModel, "dense", "dni"),
        (keras_sg.DecoupledModel, "low_rank", "cdni"),
        (keras_sg.DecoupledModel, "conv", "cdni"),
        (keras_sg.DecoupledModel, "dense", "backprop"),
        (keras_sg.PipelinedModel, "dense", "cdni"),
        (keras_sg.PipelinedModel, "conv", "dni"),
        (keras_sg.GPipeModel, "dense", "backprop"),
    ],
)
def test_summary_before_and_after_fit(model_class, kind, method):
    model = _model(model_class, kind, method)
    x, y = _conv_data() if kind == "conv" else _mlp_data()
    before = _text(model)
    expected = summary_rows(model)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile("adam", loss, run_eagerly=True)  # fast: no tracing
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    after = _text(model)
    rows = summary_rows(model)
    assert [(r.name, r.macs, r.params, r.ratio) for r in rows] == [
        (r.name, r.macs, r.params, r.ratio) for r in expected
    ]
    assert all(r.macs is not None and r.macs > 0 for r in rows)
    stages = [r for r in rows if r.kind == "stage"]
    synths = [r for r in rows if r.kind == "synthesizer"]
    assert len(stages) == 3
    assert len(synths) == (0 if model_class is keras_sg.GPipeModel else 2)
    for r in synths:
        assert r.ratio == pytest.approx(r.macs / stages[r.index].macs)
    assert sum(r.params for r in rows) == model.count_params()
    for text in (before, after):
        assert f"({model_class.__name__}, method={model.method!r})" in text
        for r in rows:
            assert r.name in text and f"{r.macs:,}" in text
    assert "Optimizer params" in after and "Optimizer params" not in before
    if synths and not model.uses_synthesizers:
        assert "unused by method='backprop'" in after
    if model_class is keras_sg.GPipeModel:
        assert "Synthesizers: none (method='backprop')" in after


def test_summary_of_an_unbuilt_model_says_so_then_builds():
    model = keras_sg.DecoupledModel(
        [keras.layers.Dense(4), keras.layers.Dense(3)], method="backprop"
    )
    text = _text(model)
    assert "The model is unbuilt" in text and "0 (unbuilt)" in text
    assert all(r.macs is None and r.params is None for r in summary_rows(model))
    # Every stage is built on its own input, not on the model's.
    model.build((None, 5))
    rows = summary_rows(model)
    assert [r.output_shape for r in rows] == [(None, 4), (None, 3)]
    assert [r.macs for r in rows] == [5 * 4, 4 * 3]
    assert [r.params for r in rows] == [5 * 4 + 4, 4 * 3 + 3]
    assert "unbuilt" not in _text(model)


def test_summary_options():
    model = _fcn_cdni()
    nested = summary_rows(model, expand_nested=True)
    layers = [r for r in nested if r.kind == "layer" and r.index == 0]
    assert [r.name for r in layers] == ["dense_0", "norm_0", "relu_0", "cut_1"]
    assert [r.macs for r in layers] == [784 * 256, 0, 0, 0]
    text = _text(model, expand_nested=True, show_trainable=True)
    assert "└ dense_0 (Dense)" in text and "Trainable" in text
    ranged = _text(model, layer_range=["fcn_3_stage_1", "fcn_3_stage_2"])
    assert "stage 1: fcn_3_stage_1" in ranged and "stage 0:" not in ranged
    # The synthesizer's own name: Keras numbers names per thread and
    # session, so a literal "dense_synthesizer_1" depends on what ran before.
    assert f"cut 2: {model.synthesizers[1].name}" in ranged, ranged
    with pytest.raises(ValueError, match="Received: layer_range="):
        _text(model, layer_range=["nothing_like_this", "fcn"])
    with pytest.raises(ValueError, match="Received: positions="):
        _text(model, positions=[0.5, 1.0])
    fixed = _text(model, positions=[0.3, 0.45, 0.55, 0.7, 0.85, 1.0])
    assert "68,096" in fixed
    placed = keras_sg.DecoupledModel(
        mlp([8], 6, out_units=3),
        [linear_synth()],
        devices=["/device:CPU:0", "/device:CPU:0"],
    )
    assert [r.device for r in summary_rows(placed)] == ["/device:CPU:0"] * 3


@pytest.mark.parametrize("kind", ["dense", "low_rank", "conv"])
def test_synthesizers_in_a_plain_keras_summary(kind, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # Keras's table, uncropped
    shape = (5, 5, 3) if kind == "conv" else (6,)
    for num_classes in (None, 4):
        synth = _synth(kind, num_classes)
        inputs = keras.Input(shape)
        if num_classes:
            context = keras.Input((num_classes,))
            model = keras.Model([inputs, context], synth(inputs, context=context))
        else:
            model = keras.Sequential([inputs, synth])
        lines = []
        model.summary(print_fn=lines.append, line_length=150)
        row = next(line for line in lines[0].splitlines() if synth.name in line)
        assert f"(None, {', '.join(map(str, shape))})" in row
        assert f"{synth.count_params():,}" in row
    # Built by hand inside a subclassed model: Keras asks build's shape.
    synth = _synth(kind)
    synth.build((None, *shape))
    assert synth.compute_output_shape(input_shape=(None, *shape)) == (None, *shape)
    assert synth.compute_output_shape(inputs_shape=(2, *shape)) == (2, *shape)

    class Holder(keras.Model):
        def __init__(self):
            super().__init__()
            self.synth = synth

        def call(self, x):
            return self.synth(x)

    lines = []
    Holder().summary(print_fn=lines.append, line_length=150)
    row = next(line for line in lines[0].splitlines() if synth.name in line)
    assert f"(None, {', '.join(map(str, shape))})" in row


def test_functional_stage_with_a_skip_connection_by_hand():
    inputs = keras.Input((6,))
    a = keras.layers.Dense(8, name="a")(inputs)
    b = keras.layers.Dense(8, name="b")(a)
    h = keras_sg.Interface(name="cut")(keras.layers.Add()([a, b]))
    net = keras.Model(inputs, keras.layers.Dense(3, name="top")(h))
    model = keras_sg.DecoupledModel(net, [linear_synth(num_classes=3)], method="cdni")
    rows = summary_rows(model, expand_nested=True)
    assert [(r.kind, r.macs) for r in rows if r.kind != "layer"] == [
        ("stage", 6 * 8 + 8 * 8),
        ("synthesizer", (8 + 3) * 8),
        ("stage", 8 * 3),
    ]
    layers = {r.name: r.macs for r in rows if r.kind == "layer" and r.index == 0}
    assert layers == {"a": 48, "b": 64, "add": 0, "cut": 0}
    # A raw op in the graph is not guessed at.
    x = keras.Input((6,))
    y = keras.ops.matmul(keras.layers.Dense(8)(x), keras.ops.ones((8, 4)))
    assert costs.macs_per_example(keras.Model(x, y), (None, 6)) is None
