"""A decoupled model unlocked forwards too: every stage above the first trains
on a synthetic input."""

import keras
import tensorflow as tf

from keras_sg.layers.interface import Interface
from keras_sg.models import steps, unlocked_steps
from keras_sg.models.decoupled_model import POLICIES, DecoupledModel
from keras_sg.models.stages import split_stages


@keras.saving.register_keras_serializable(package="keras_sg")
class UnlockedModel(DecoupledModel):
    """DNI or cDNI with synthetic inputs: no stage waits for another.

    The complete unlock of Jaderberg et al. (2016, arXiv:1608.05343, Section
    3.4). At each cut k an input synthesizer I_k predicts the activation
    h_k from the network's input x. In a training step, on one batch:

    - stage 0 runs on x; stage k > 0 runs on its synthetic input
      hhat_k = I_k(x), computed from x alone, so every stage can start at
      once;
    - stage k below the top updates from the synthetic gradient at its own
      output (the gradient synthesizer at cut k+1 applied to that output);
      the top stage updates from the true loss on hhat_top;
    - the gradient synthesizer at cut k regresses its bootstrapped target as
      in DNI (cDNI): the pullback of stage k with its own synthetic gradient
      (or, for the last cut, of the true loss), taken at the stage's
      synthetic input hhat_k, the only input that stage saw;
    - I_k regresses, by mean squared error, the activation that stage k-1
      produced on this batch, stopped: no gradient reaches stage k-1, and
      the stage above does not send gradients into I_k. Stage k-1 itself ran
      on its synthetic input, so for k > 1 the target is the true h_k only
      as far as I_{k-1} is right; waiting for the composed forward pass
      would lock the stages again.

    With input synthesizers that return the true h_k, the update is DNI's
    (cDNI's) exactly. `fit` logs the task loss and metrics of the top stage
    on its synthetic input, each gradient synthesizer's loss
    (`<cut>_sg_loss`) and each input synthesizer's (`<cut>_input_loss`).
    `evaluate` and `predict` run the real composed network, stage on stage.

    Args:
        network: as for `DecoupledModel`.
        synthesizers: one gradient synthesizer per interface, lowest first.
        input_synthesizers: one Keras layer per interface, lowest first,
            mapping x to a tensor of that cut's activation shape (for
            example `keras_sg.DenseInputSynthesizer`).
        method: `"dni"` or `"cdni"`.
        **kwargs: the other arguments of `DecoupledModel`, but
            `sg_target="bootstrap"` only.

    Example:

    ```python
    model = keras_sg.UnlockedModel(
        net,
        synthesizers=[keras_sg.DenseSynthesizer(hidden_layers=0, num_classes=10)],
        input_synthesizers=[keras_sg.DenseInputSynthesizer(target_shape=(256,))],
        method="cdni",
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    ```
    """

    def __init__(
        self,
        network,
        synthesizers=None,
        input_synthesizers=None,
        method: str = "dni",
        **kwargs,
    ):
        if method not in ("dni", "cdni"):
            raise ValueError(
                "UnlockedModel updates the stages from synthetic gradients, so "
                "it needs method='dni' or method='cdni'. "
                f"Received: method={method!r}"
            )
        if kwargs.get("sg_target", "bootstrap") != "bootstrap":
            raise ValueError(
                "UnlockedModel trains its gradient synthesizers on bootstrapped "
                "targets; it takes sg_target='bootstrap' only. "
                f"Received: sg_target={kwargs['sg_target']!r}"
            )
        # Set before the base class builds the model (and locks its state).
        cut_names = _cut_names(split_stages(network))
        self.input_synthesizers = _check_input_synthesizers(
            input_synthesizers, cut_names, synthesizers
        )
        self.input_loss_trackers = [
            keras.metrics.Mean(name=f"{name}_input_loss") for name in cut_names
        ]
        super().__init__(network, synthesizers=synthesizers, method=method, **kwargs)

    # ------------------------------------------------------------------ setup

    def _check_policies(self):
        super()._check_policies()
        for synth in self.input_synthesizers:
            for layer in synth._flatten_layers():
                policy = layer.dtype_policy.name
                if policy not in POLICIES or (
                    layer.compute_dtype == "float16"
                    and self.dtype_policy.name != "mixed_float16"
                ):
                    raise ValueError(
                        f"UnlockedModel trains under the dtype policies "
                        f"{POLICIES}, the same for every part. Received: "
                        f"dtype policy {policy!r} of layer '{layer.name}' in "
                        f"a model made under {self.dtype_policy.name!r}."
                    )

    def build(self, input_shape):
        super().build(input_shape)
        self._build_input_synthesizers(input_shape)

    def build_for(self, x):
        super().build_for(x)
        if not all(s.built for s in self.input_synthesizers):
            self.build(tf.nest.map_structure(lambda t: tuple(t.shape), x))

    def _build_input_synthesizers(self, input_shape):
        shape = tuple(input_shape)
        for k, synth in enumerate(self.input_synthesizers):
            shape = tuple(
                self.stages[k].compute_output_spec(keras.KerasTensor(shape)).shape
            )
            name = self.cut_names[k]
            with self._on(k + 1):
                try:
                    if not synth.built:
                        synth.build(tuple(input_shape))
                    out = synth.compute_output_spec(keras.KerasTensor(input_shape))
                except ValueError as error:
                    raise ValueError(f"At interface '{name}': {error}") from error
            if tuple(out.shape[1:]) != shape[1:]:
                raise ValueError(
                    f"The input synthesizer '{synth.name}' at interface "
                    f"'{name}' must predict the activation's shape {shape}. "
                    f"Received: output shape {tuple(out.shape)}"
                )

    # ----------------------------------------------------------------- train

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        self.build_for(x)
        context = self._context(y)
        if context is not None:
            y = context
        scale = steps.global_batch_size(x)
        share = steps.replica_fraction()
        loss_scale = self._loss_scale()
        last = len(self.stages) - 1

        # Synthetic inputs: every stage above the first gets its input from x
        # alone, on a tape of the input synthesizer's own.
        inputs, input_pullbacks = [x], []
        for k, synth in enumerate(self.input_synthesizers):
            with self._on(k + 1):
                (h_hat,), pullback = steps.vjp(
                    lambda a, s=synth: (s(a, training=True),),
                    x,
                    synth.trainable_variables,
                    watch_inputs=False,
                )
            inputs.append(h_hat)
            input_pullbacks.append(pullback)

        # Forward pass: each stage on its own input, on a tape of its own.
        activations, pullbacks = [], []
        for k, stage in enumerate(self.stages[:-1]):
            with self._on(k):
                h, pullback = _stage_vjp(stage, inputs[k], share, k > 0)
            activations.append(h)
            pullbacks.append(pullback)

        top = self.stages[last]

        def top_loss(a):
            y_pred = top(a, training=True)
            loss = self.compute_loss(
                x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
            )
            return loss, y_pred

        with self._on(last):
            (loss, y_pred), top_pullback = steps.vjp(
                top_loss, inputs[last], top.trainable_variables, watch_inputs=True
            )
            true_grad, top_grads = top_pullback((loss_scale, None))
        self._loss_tracker.update_state(
            loss / share, sample_weight=tf.shape(tf.nest.flatten(x)[0])[0]
        )

        # Compute gradients: the stages and gradient synthesizers as in DNI,
        # each stage pulled back at the input it ran on.
        grads = {
            id(v): g for v, g in zip(top.trainable_variables, top_grads, strict=True)
        }
        decoupled_grads, sg_losses = self._decoupled_gradients(
            activations, pullbacks, true_grad, context, scale, share, loss_scale
        )
        grads.update(decoupled_grads)
        input_losses = []
        for k, synth in enumerate(self.input_synthesizers):
            with self._on(k + 1):
                input_loss, d_predicted = unlocked_steps.input_synthesizer_loss(
                    tf.cast(inputs[k + 1], tf.float32), activations[k]
                )
                _, synth_grads = input_pullbacks[k]((d_predicted * share * loss_scale,))
            input_losses.append(input_loss)
            grads.update(
                zip(map(id, synth.trainable_variables), synth_grads, strict=True)
            )

        # Update weights: one optimizer step over everything, after every
        # synthetic input is computed. An input synthesizer that reads another
        # part's weights (an oracle made of the stages below) has no data
        # path to their update, and TensorFlow was seen to run the update
        # first (1 run in 4) without this dependency.
        with tf.control_dependencies(inputs[1:]):
            applied = self._apply(grads)
        self._track_sg_losses(sg_losses, applied)
        weight = tf.cast(applied, tf.float32)
        for tracker, input_loss in zip(
            self.input_loss_trackers, input_losses, strict=True
        ):
            tracker.update_state(
                tf.where(weight > 0, input_loss, 0.0), sample_weight=weight
            )

        metrics = self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
        for tracker in [*self.sg_loss_trackers, *self.input_loss_trackers]:
            metrics[tracker.name] = tracker.result()
        return metrics

    def test_step(self, data):
        logs = super().test_step(data)
        return {k: v for k, v in logs.items() if not k.endswith("_input_loss")}

    # ------------------------------------------------------------ serializing

    def get_config(self):
        config = super().get_config()
        config["input_synthesizers"] = [
            keras.saving.serialize_keras_object(s) for s in self.input_synthesizers
        ]
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["input_synthesizers"] = [
            keras.saving.deserialize_keras_object(s, custom_objects=custom_objects)
            for s in config["input_synthesizers"]
        ]
        return super().from_config(config, custom_objects=custom_objects)


def _check_input_synthesizers(input_synthesizers, cut_names, synthesizers):
    cuts = len(cut_names)
    if input_synthesizers is None or isinstance(input_synthesizers, keras.layers.Layer):
        raise ValueError(
            f"UnlockedModel needs a list of one input synthesizer per "
            f"interface ({cuts} interfaces: {cut_names}). "
            f"Received: input_synthesizers={input_synthesizers!r}"
        )
    input_synthesizers = list(input_synthesizers)
    if len(input_synthesizers) != cuts:
        raise ValueError(
            f"Expected one input synthesizer per interface: {cuts} "
            f"interfaces ({cut_names}). Received: "
            f"{len(input_synthesizers)} input synthesizers"
        )
    for name, synth in zip(cut_names, input_synthesizers, strict=True):
        if not isinstance(synth, keras.layers.Layer):
            raise TypeError(
                f"The input synthesizer at '{name}' must be a Keras layer. "
                f"Received: {type(synth).__name__}"
            )
    owned = list(synthesizers or [])
    for name, synth in zip(cut_names, input_synthesizers, strict=True):
        if any(synth is part for part in owned) or (
            sum(synth is other for other in input_synthesizers) > 1
        ):
            raise ValueError(
                f"The input synthesizer '{synth.name}' at '{name}' is used "
                "twice in the model; give each cut its own layer."
            )
    return input_synthesizers


def _cut_names(stages):
    """The name of each cut, as `DecoupledModel` gives it."""
    names = []
    for k, stage in enumerate(stages[:-1]):
        layers = getattr(stage, "layers", None)
        if layers and isinstance(layers[-1], Interface):
            names.append(layers[-1].name)
        else:
            names.append(f"cut_{k + 1}")
    return names


def _stage_vjp(stage, inputs, share, watch_inputs):
    """Stage forward in training mode on a tape of its own: `(outputs, pullback)`.

    As in `DecoupledModel`: the pullback takes `(output cotangent, penalty
    weight)`, the penalty being the stage's own regularization losses.
    """

    def forward(a):
        outputs = stage(a, training=True)
        if not stage.losses:
            return outputs, None
        penalty = tf.add_n([tf.cast(loss, tf.float32) for loss in stage.losses])
        return outputs, penalty * share

    (outputs, _), pullback = steps.vjp(
        forward, inputs, stage.trainable_variables, watch_inputs=watch_inputs
    )
    return outputs, pullback
