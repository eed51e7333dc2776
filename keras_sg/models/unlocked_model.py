"""A decoupled model unlocked forwards too: every stage above the first trains
on a synthetic input."""

import numbers

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
    3.4). Cuts are numbered from 1, lowest first; h_k is the activation at
    cut k and h_0 = x. At each cut k an input synthesizer I_k predicts h_k
    from its source: x (the default, the paper's complete unlock) or the
    activation at a lower cut j (`input_sources`). In a training step, on
    one batch:

    - stage 0 runs on x; stage k > 0 runs on its synthetic input
      hhat_k = I_k(source), so with x as every source every stage can start
      at once;
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
      on its synthetic input, so for k > 1 the target is the composed
      network's h_k only as far as I_{k-1} is right; waiting for the composed
      forward pass would lock the stages again.

    A source j > 0 is, for the same reason, the activation at cut j as stage
    j-1 produced it in this step, on its own (synthetic) input: what that
    stage has at hand when it is done, not the composed network's h_j. Stage
    k then waits for stage j-1's forward pass (and that one for its own
    source), a partial unlock; no stage ever waits for the composed pass.

    With input synthesizers that return the composed h_k, the update is
    DNI's (cDNI's) exactly.

    What `fit` logs, per step and averaged over the epoch as Keras does:

    - `loss` and the compiled metrics: the composed network, stage on stage
      in inference mode (as `evaluate` and `predict` run it), on the weights
      before the step's update: what `evaluate` would report on that batch
      just before it. So `fit`'s `loss` and `evaluate`'s measure the same
      network. This pass (one inference forward of the network per step) is
      not part of the method: training does not wait for it, but it runs
      before the step's updates, which must not change the weights it reads;
    - `synthetic_loss`: the loss the top stage trains on, on its synthetic
      input, in training mode (regularization penalties included, as in
      `loss`);
    - `<cut>_sg_loss`: each gradient synthesizer's regression loss;
    - `<cut>_input_loss`: each input synthesizer's regression loss (above);
    - `<cut>_input_drift`: how far the synthetic input at the cut is from
      the composed network's activation there, sum ||hhat_k - h_k||^2 /
      sum ||h_k||^2 over the batch (`unlocked_steps.input_drift`); hhat_k
      as the stage trained on it, h_k from the composed pass above.

    `evaluate` and `predict` run the composed network and log `loss` and
    the compiled metrics only.

    Args:
        network: as for `DecoupledModel`.
        synthesizers: one gradient synthesizer per interface, lowest first.
        input_synthesizers: one Keras layer per interface, lowest first,
            mapping its source to a tensor of that cut's activation shape
            (for example `keras_sg.DenseInputSynthesizer`).
        method: `"dni"` or `"cdni"`.
        input_sources: one integer per interface, lowest first: 0 to
            predict the activation at cut k from x, or j with 1 <= j < k to
            predict it from the activation at cut j (see above). None (the
            default) means x for every cut.
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
        input_sources: list[int] | None = None,
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
        self.input_sources = _check_input_sources(input_sources, cut_names)
        self.synthetic_loss_tracker = keras.metrics.Mean(name="synthetic_loss")
        self.input_loss_trackers = [
            keras.metrics.Mean(name=f"{name}_input_loss") for name in cut_names
        ]
        self.input_drift_trackers = [
            keras.metrics.Mean(name=f"{name}_input_drift") for name in cut_names
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
        # The shape at every cut, x's first: the sources and the targets.
        shapes = [tuple(input_shape)]
        for stage in self.stages[:-1]:
            shapes.append(
                tuple(stage.compute_output_spec(keras.KerasTensor(shapes[-1])).shape)
            )
        for k, synth in enumerate(self.input_synthesizers):
            name, source = self.cut_names[k], shapes[self.input_sources[k]]
            with self._on(k + 1):
                try:
                    if not synth.built:
                        synth.build(source)
                    out = synth.compute_output_spec(keras.KerasTensor(source))
                except ValueError as error:
                    raise ValueError(
                        f"At interface '{name}' (input source "
                        f"{self.input_sources[k]}, of shape {source}): {error}"
                    ) from error
            if tuple(out.shape[1:]) != shapes[k + 1][1:]:
                raise ValueError(
                    f"The input synthesizer '{synth.name}' at interface "
                    f"'{name}' must predict the activation's shape "
                    f"{shapes[k + 1]}. Received: output shape {tuple(out.shape)}"
                )

    def _synthesizer_layers(self):
        # Input synthesizers regress their targets as the gradient
        # synthesizers do: the synthesizer optimizer trains both.
        return [*self.synthesizers, *self.input_synthesizers]

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
        batch = tf.shape(tf.nest.flatten(x)[0])[0]

        # The composed network, as `evaluate` runs it, on the weights before
        # this step: what fit logs as `loss` and metrics, and what the
        # synthetic inputs drift from. Training reads x only after it, so no
        # update (batch-norm statistics included) runs before these reads.
        composed = self._composed_forward(x)
        composed_loss = self.compute_loss(
            x=x, y=y, y_pred=composed[-1], sample_weight=sample_weight, training=False
        )
        with tf.control_dependencies([composed_loss, *tf.nest.flatten(composed)]):
            x_step = tf.nest.map_structure(tf.identity, x)

        # Forward pass: stage 0 on x, stage k > 0 on its synthetic input,
        # computed from its source (x, or the activation at a lower cut as
        # the stage below produced it in this step) on a tape of the input
        # synthesizer's own. Each stage runs on a tape of its own.
        inputs, input_pullbacks = [x_step], []
        activations, pullbacks = [], []
        for k, stage in enumerate(self.stages):
            if k > 0:
                j = self.input_sources[k - 1]
                source = x_step if j == 0 else activations[j - 1]
                synth = self.input_synthesizers[k - 1]
                with self._on(k):
                    (h_hat,), pullback = steps.vjp(
                        lambda a, s=synth: (s(a, training=True),),
                        source,
                        synth.trainable_variables,
                        watch_inputs=False,
                    )
                inputs.append(h_hat)
                input_pullbacks.append(pullback)
            if k < last:
                with self._on(k):
                    h, pullback = _stage_vjp(stage, inputs[k], share, k > 0)
                activations.append(h)
                pullbacks.append(pullback)

        top = self.stages[last]
        loss, _, true_grad, top_grads = self._top_vjp(
            inputs[last], x, y, sample_weight, loss_scale, watch_inputs=True
        )
        self._loss_tracker.update_state(composed_loss / share, sample_weight=batch)
        self.synthetic_loss_tracker.update_state(loss / share, sample_weight=batch)

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
        for k, tracker in enumerate(self.input_drift_trackers):
            tracker.update_state(unlocked_steps.input_drift(inputs[k + 1], composed[k]))

        # The compiled metrics of the composed network, as `evaluate`'s.
        metrics = self.compute_metrics(x, y, composed[-1], sample_weight=sample_weight)
        for tracker in [
            self.synthetic_loss_tracker,
            *self.sg_loss_trackers,
            *self.input_loss_trackers,
            *self.input_drift_trackers,
        ]:
            metrics[tracker.name] = tracker.result()
        return metrics

    def _composed_forward(self, x):
        """The real forward pass, stage on stage, in inference mode, as
        `predict` runs it: the activation at every cut, lowest first, then
        the output."""
        outputs, h = [], x
        for k, stage in enumerate(self.stages):
            with self._on(k):
                h = stage(h, training=False)
            outputs.append(h)
        return outputs

    def test_step(self, data):
        logs = super().test_step(data)
        return {
            k: v
            for k, v in logs.items()
            if k != "synthetic_loss" and not k.endswith(("_input_loss", "_input_drift"))
        }

    # ------------------------------------------------------------ serializing

    def get_config(self):
        config = super().get_config()
        config["input_synthesizers"] = [
            keras.saving.serialize_keras_object(s) for s in self.input_synthesizers
        ]
        config["input_sources"] = list(self.input_sources)
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


def _check_input_sources(input_sources, cut_names):
    """One source per cut: 0 for x, or j for the activation at cut j below."""
    cuts = len(cut_names)
    if input_sources is None:
        return [0] * cuts
    if not isinstance(input_sources, (list, tuple)) or len(input_sources) != cuts:
        raise ValueError(
            f"Expected `input_sources` to be a list of one source per "
            f"interface ({cuts} interfaces: {cut_names}), each 0 (the "
            "network's input) or the number of a lower cut. "
            f"Received: input_sources={input_sources!r}"
        )
    sources = []
    for k, (name, j) in enumerate(zip(cut_names, input_sources, strict=True), 1):
        if isinstance(j, bool) or not isinstance(j, numbers.Integral) or not 0 <= j < k:
            raise ValueError(
                f"The input synthesizer at interface '{name}' (cut {k}) "
                "predicts that activation from the network's input (source 0) "
                f"or from the activation at a lower cut j, 1 <= j < {k}. "
                f"Received: input_sources[{k - 1}]={j!r}"
            )
        sources.append(int(j))
    return sources


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
