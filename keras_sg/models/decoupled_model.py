"""A Keras model whose stages train with synthetic gradients."""

import contextlib

import keras
import tensorflow as tf

from keras_sg._checks import (
    check_devices_exist,
    check_label_range,
    check_network_has_cuts,
    check_not_h5,
    check_own_synthesizers,
    reporting_label_errors,
)
from keras_sg._remote import worker_lost
from keras_sg.layers.interface import Interface
from keras_sg.layers.synthesizer import Synthesizer
from keras_sg.models import steps
from keras_sg.models.stages import place_optimizer, place_stage, split_stages
from keras_sg.models.summary import print_summary
from keras_sg.models.synthesizer_optimizer import (
    SynthesizerOptimizerMixin,
    trained_in_order,
)

METHODS = ("backprop", "dni", "cdni", "no_bprop")
SG_TARGETS = ("bootstrap", "backprop")
POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")


@keras.saving.register_keras_serializable(package="keras_sg")
class DecoupledModel(SynthesizerOptimizerMixin, keras.Model):
    """A model trained stage by stage, with synthetic gradients at its cuts.

    The network is cut into stages at its `Interface` layers (or given as a
    list of stages). `fit` trains it by one of four methods:

    - `"backprop"`: exact end-to-end gradients, chained stage by stage; the
      same update as `keras.Model.fit` on the undivided network.
    - `"dni"`: every stage below the top is updated with the synthetic gradient
      at its output, computed by that cut's synthesizer, and no gradient crosses
      a cut. The synthesizer at cut k regresses (mean squared error) the
      bootstrapped target: the gradient that stage k+1, pulled back with its own
      synthetic gradient, induces at cut k; the top stage sends back the true
      loss gradient (Jaderberg et al. 2016, arXiv:1608.05343, Section 2).
    - `"cdni"`: `"dni"` with synthesizers conditioned on the labels (Section 3.2).
      Prefer it when labels are at hand: a synthesizer that sees only the
      activation cannot ask a lower stage for what it has dropped or squeezed,
      and `"dni"` then stalls (docs/method.md, "Where label-free DNI stalls").
    - `"no_bprop"`: only the top stage learns; the paper's baseline.

    Synthesizers predict per-example gradients: the gradient of the batch-mean
    loss times the global batch size (see `keras_sg.models.steps`).

    `evaluate` and `predict` run the plain forward pass. Each cut's
    synthesizer loss is logged by `fit` as `<interface name>_sg_loss`.

    `compile(..., synthesizer_optimizer=...)` gives the synthesizers an
    optimizer (and a learning rate) of their own; by default `optimizer`
    trains everything (see `SynthesizerOptimizerMixin`).

    Mixed precision: set `keras.mixed_precision.set_global_policy(
    "mixed_float16")` (or `"mixed_bfloat16"`) before making the network, the
    synthesizers and the model. Stages and synthesizers then compute in
    float16 (bfloat16) with float32 weights; synthesizer targets and losses
    are float32. Under `"mixed_float16"`, `compile` wraps the optimizer in a
    `keras.optimizers.LossScaleOptimizer`, and every loss whose gradients
    reach it (the task loss and each synthesizer loss) is scaled on its tape,
    as `keras.Model.fit` does. Other policies raise an error, as does a
    model made under `"float32"` around float16 layers.

    Args:
        network: a `keras.Sequential` or functional model holding `Interface`
            layers, or a list of stage models (see `split_stages`).
        synthesizers: one synthesizer per interface, lowest first. Required by
            `"dni"` and `"cdni"`; ignored (but kept) by the other methods.
        method: one of `"backprop"`, `"dni"`, `"cdni"`, `"no_bprop"`.
        sg_loss_weight: factor on the synthesizer losses; >= 0. Under SGD it
            sets the synthesizers' learning rate relative to the stages';
            Adam divides gradient scale out, so there it hardly matters.
        sg_target: `"bootstrap"` (the method above) or `"backprop"`, which
            trains synthesizers on the true gradient instead, for diagnostics;
            the stages still follow the synthetic gradients.
        devices: one device name per stage (for example from
            `keras_sg.placement.stage_devices`), or None to leave placement to
            TensorFlow. Stage k's variables and ops, and those of the
            synthesizer at its output, live on `devices[k]`; stages that were
            built elsewhere are copied there, weights included, so train the
            model, not the network it was made from. XLA ignores `tf.device`,
            so a placed model compiles with `jit_compile=False`.
        **kwargs: base model arguments (`name`).

    Example:

    ```python
    net = keras_sg.models.fully_connected((784,), 10, depth=2)  # one cut; logits
    model = keras_sg.DecoupledModel(
        net,
        synthesizers=[keras_sg.DenseSynthesizer(hidden_layers=0, num_classes=10)],
        method="cdni",
    )
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile("adam", loss, metrics=["accuracy"])
    model.fit(x, y, epochs=2)
    ```
    """

    def __init__(
        self,
        network,
        synthesizers=None,
        method: str = "dni",
        sg_loss_weight: float = 1.0,
        sg_target: str = "bootstrap",
        devices: list[str] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if method not in METHODS:
            raise ValueError(
                f"Unknown training method. Expected one of {METHODS}. "
                f"Received: method={method!r}"
            )
        if sg_target not in SG_TARGETS:
            raise ValueError(
                f"Expected sg_target to be one of {SG_TARGETS}. "
                f"Received: sg_target={sg_target!r}"
            )
        try:
            weight = float(sg_loss_weight)
        except (TypeError, ValueError):
            weight = float("nan")
        if not 0.0 <= weight < float("inf"):
            raise ValueError(
                "`sg_loss_weight` must be a finite number >= 0. "
                f"Received: sg_loss_weight={sg_loss_weight!r}"
            )
        sg_loss_weight = weight
        self.method = method
        self.sg_target = sg_target
        self.sg_loss_weight = sg_loss_weight

        stages = split_stages(network)
        if self.uses_synthesizers:
            check_network_has_cuts(network, len(stages), method)
        self.devices = self._check_devices(devices, len(stages))
        if self.devices is not None:
            stages = [
                place_stage(s, d) for s, d in zip(stages, self.devices, strict=True)
            ]
            # XLA ignores tf.device: Keras then turns jit_compile off, with a
            # warning if it was asked for.
            self.supports_jit = False
        self.stages = stages
        self.cut_names = [
            _cut_name(stage, k) for k, stage in enumerate(self.stages[:-1])
        ]
        self.synthesizers = self._check_synthesizers(synthesizers)
        self.sg_loss_trackers = [
            keras.metrics.Mean(name=f"{name}_sg_loss")
            for name in (self.cut_names if self.uses_synthesizers else [])
        ]
        self._check_policies()
        input_shape = _known_input_shape(self.stages[0])
        if input_shape is not None:
            self.build(input_shape)

    # ------------------------------------------------------------------ setup

    @property
    def uses_synthesizers(self) -> bool:
        return self.method in ("dni", "cdni")

    def _check_devices(self, devices, num_stages):
        if devices is None:
            return None
        if isinstance(devices, str) or len(devices) != num_stages:
            raise ValueError(
                f"Expected one device name per stage ({num_stages} stages). "
                f"Received: devices={devices!r}"
            )
        for device in devices:
            try:
                tf.DeviceSpec.from_string(device)
            except (ValueError, TypeError) as error:
                raise ValueError(
                    "Expected device names such as '/device:CPU:1'. "
                    f"Received: {device!r}"
                ) from error
        return check_devices_exist(list(devices))

    # A stage on a cluster worker that dies fails the step with a raw gRPC
    # error; fit, evaluate and predict turn it into one that says what to do.

    def fit(self, *args, **kwargs):
        if self.method == "cdni":
            y = kwargs["y"] if "y" in kwargs else args[1] if len(args) > 1 else None
            check_label_range(y, self.synthesizers[0].num_classes)
        with self._reporting_lost_workers(), reporting_label_errors():
            return super().fit(*args, **kwargs)

    def save(self, filepath, *args, **kwargs):
        check_not_h5(filepath)
        return super().save(filepath, *args, **kwargs)

    def evaluate(self, *args, **kwargs):
        with self._reporting_lost_workers():
            return super().evaluate(*args, **kwargs)

    def predict(self, *args, **kwargs):
        with self._reporting_lost_workers():
            return super().predict(*args, **kwargs)

    @contextlib.contextmanager
    def _reporting_lost_workers(self):
        try:
            yield
        except tf.errors.OpError as error:
            lost = worker_lost(error, self.devices)
            if lost is None:
                raise
            raise lost from error

    def _top_vjp(self, a, x, y, sample_weight, loss_scale, watch_inputs):
        """The top stage on `a`, its loss, and the loss's pullback.

        Returns `(loss, y_pred, grad_a, top_grads)`: the gradient of
        `loss_scale * loss` at `a` (None unless `watch_inputs`) and at the
        top stage's trainable variables.
        """
        last = len(self.stages) - 1
        top = self.stages[last]

        def top_loss(inputs):
            y_pred = top(inputs, training=True)
            loss = self.compute_loss(
                x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
            )
            return loss, y_pred

        with self._on(last):
            (loss, y_pred), pullback = steps.vjp(
                top_loss, a, top.trainable_variables, watch_inputs=watch_inputs
            )
            grad_a, top_grads = pullback((loss_scale, None))
        return loss, y_pred, grad_a, top_grads

    @contextlib.contextmanager
    def _on(self, k):
        """The scope of stage k's work and its synthesizer's: its device, if
        placed, and the name scope `stage_<k>`, by which profiler traces tell
        the stages apart."""
        with tf.name_scope(f"stage_{k}"):
            if self.devices is None:
                yield
            else:
                with tf.device(self.devices[k]):
                    yield

    def _check_synthesizers(self, synthesizers):
        cuts = len(self.stages) - 1
        if synthesizers is None:
            if self.uses_synthesizers and cuts:
                raise ValueError(
                    f"method={self.method!r} needs one synthesizer per "
                    f"interface ({cuts} interfaces: {self.cut_names}). "
                    "Received: synthesizers=None"
                )
            return []
        synthesizers = check_own_synthesizers(list(synthesizers), self.cut_names)
        if len(synthesizers) != cuts:
            raise ValueError(
                f"Expected one synthesizer per interface: {cuts} interfaces "
                f"({self.cut_names}). Received: {len(synthesizers)} "
                "synthesizers"
            )
        for name, synth in zip(self.cut_names, synthesizers, strict=True):
            if not isinstance(synth, keras.layers.Layer):
                raise TypeError(
                    f"The synthesizer at '{name}' must be a Keras layer. "
                    f"Received: {type(synth).__name__}"
                )
            conditioned = isinstance(synth, Synthesizer) and synth.conditioned
            if self.method == "cdni" and not conditioned:
                raise ValueError(
                    f"method='cdni' conditions synthesizers on the labels, but "
                    f"the synthesizer '{synth.name}' at '{name}' takes no "
                    "context. Create it with `num_classes=<number of classes>`."
                )
            if self.method == "dni" and conditioned:
                raise ValueError(
                    f"The synthesizer '{synth.name}' at '{name}' is conditioned "
                    f"on labels (num_classes={synth.num_classes}); use "
                    "method='cdni', or create it with num_classes=None."
                )
        return synthesizers

    def _check_policies(self):
        """Every layer's dtype policy must be one that training handles."""
        layers = [self]
        for part in self.stages + self.synthesizers:
            layers.extend(part._flatten_layers())
        for layer in layers:
            policy = layer.dtype_policy.name
            if policy not in POLICIES:
                raise ValueError(
                    f"{type(self).__name__} trains under the dtype policies "
                    f"{POLICIES}. Received: dtype policy {policy!r} of layer "
                    f"'{layer.name}'. Set the policy with "
                    "`keras.mixed_precision.set_global_policy(...)` before "
                    "making the network, the synthesizers and the model."
                )
        # Keras's compile adds loss scaling from the model's own policy.
        model_policy = self.dtype_policy.name
        for layer in layers[1:]:
            if layer.compute_dtype == "float16" and model_policy != "mixed_float16":
                raise ValueError(
                    f"Layer '{layer.name}' computes in float16 (dtype policy "
                    f"{layer.dtype_policy.name!r}), but {type(self).__name__} "
                    f"was made under the dtype policy {model_policy!r}, so "
                    "`compile` would not scale the loss and float16 gradients "
                    "would underflow. Make the network, the synthesizers and "
                    "the model under the same policy, or pass "
                    "dtype='mixed_float16' to the model."
                )

    def __setattr__(self, name, value):
        # `compile` and `load_model` (through compile_from_config) both set
        # the optimizers here; a placed model keeps their slots and updates
        # on the variables' devices.
        placed = getattr(self, "devices", None) is not None
        optimizers = ("optimizer", "synthesizer_optimizer")
        if name in optimizers and value is not None and placed:
            place_optimizer(value)
        super().__setattr__(name, value)

    def build_for(self, x):
        """Builds every stage and synthesizer still unbuilt, from a batch `x`.

        A model made from unbuilt stages (a list of layers, or a Sequential
        without `keras.Input`) learns its input shape from the first batch;
        `train_step` calls this first, since Keras only builds a model from
        its data under a distribution strategy.
        """
        parts = [*self.stages, *self.synthesizers]
        if self.built and all(p.built for p in parts):
            return
        self.build(tf.nest.map_structure(lambda t: tuple(t.shape), x))

    def build(self, input_shape):
        shape = input_shape
        for k, stage in enumerate(self.stages):
            with self._on(k):
                if not stage.built:
                    stage.build(shape)
                if k < len(self.stages) - 1:
                    shape = _output_shape(stage, shape)
                if k < len(self.synthesizers):
                    self._build_synthesizer(k, shape)

    def _build_synthesizer(self, k, shape):
        synth, name = self.synthesizers[k], self.cut_names[k]
        try:
            if not synth.built:
                synth.build(shape)
            inputs = _symbolic(shape)
            if isinstance(synth, Synthesizer) and synth.conditioned:
                context = keras.KerasTensor((shape[0], synth.num_classes))
                out = synth.compute_output_spec(inputs, context=context)
            else:
                out = synth.compute_output_spec(inputs)
        except ValueError as error:
            raise ValueError(f"At interface '{name}': {error}") from error
        if tuple(out.shape[1:]) != tuple(shape[1:]):
            raise ValueError(
                f"The synthesizer '{synth.name}' at interface '{name}' must "
                f"return a gradient of the activation's shape {tuple(shape)}. "
                f"Received: output shape {tuple(out.shape)}"
            )

    # ---------------------------------------------------------------- forward

    def call(self, inputs, training=None):
        x = inputs
        for k, stage in enumerate(self.stages):
            with self._on(k):
                x = stage(x, training=training)
        return x

    # ----------------------------------------------------------------- train

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        self.build_for(x)
        context = self._context(y)
        if context is not None:
            y = context  # the checked labels: the label check runs before the loss's
        scale = steps.global_batch_size(x)
        share = steps.replica_fraction()
        loss_scale = self._loss_scale()
        last = len(self.stages) - 1
        decoupled = self.uses_synthesizers
        persistent = decoupled and self.sg_target == "backprop"

        # Forward pass: each stage on a tape of its own; nothing is recorded
        # across a cut, so no gradient crosses it.
        activations, pullbacks = [], []
        h = x
        for k, stage in enumerate(self.stages[:-1]):
            with self._on(k):
                if self.method == "no_bprop":
                    h = stage(h, training=True)
                    continue
                h, pullback = _stage_vjp(stage, h, share, k > 0, persistent)
            activations.append(h)
            pullbacks.append(pullback)

        top = self.stages[last]
        loss, y_pred, true_grad, top_grads = self._top_vjp(
            h, x, y, sample_weight, loss_scale, watch_inputs=last > 0
        )
        self._loss_tracker.update_state(
            loss / share, sample_weight=tf.shape(tf.nest.flatten(x)[0])[0]
        )

        # Compute gradients.
        grads = {
            id(v): g for v, g in zip(top.trainable_variables, top_grads, strict=True)
        }
        if self.method == "backprop":
            for k in reversed(range(last)):
                self._update_after_send(k, true_grad, grads)
                with self._on(k):
                    true_grad, stage_grads = pullbacks[k]((true_grad, loss_scale))
                grads.update(
                    zip(
                        map(id, self.stages[k].trainable_variables),
                        stage_grads,
                        strict=True,
                    )
                )
        sg_losses = []
        if decoupled:
            decoupled_grads, sg_losses = self._decoupled_gradients(
                activations, pullbacks, true_grad, context, scale, share, loss_scale
            )
            grads.update(decoupled_grads)

        # Update weights: one optimizer step over everything trained.
        applied = self._apply(grads)
        self._track_sg_losses(sg_losses, applied)

        metrics = self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
        for tracker in self.sg_loss_trackers:
            metrics[tracker.name] = tracker.result()
        return metrics

    def _loss_scale(self):
        """The factor on every loss of this step (see `steps.loss_scale`).

        Builds the optimizer first, as `_apply` would: an unbuilt
        `LossScaleOptimizer` reports its initial scale, not the variable
        that it later adjusts.
        """
        self._build_optimizer()
        return steps.loss_scale(self.optimizer)

    def _synthesizer_layers(self):
        return list(self.synthesizers) if self.uses_synthesizers else []

    def _update_after_send(self, k, sent, grads):
        """Placed, stage k + 1's gradients in `grads` (by variable id) wait
        until `sent`, what stage k + 1 sends down, has reached stage k's
        device (`steps.arrived`); unplaced, nothing changes."""
        if self.devices is None:
            return
        with self._on(k):
            arrived = steps.arrived(sent)
        above = self.stages[k + 1].trainable_variables
        with self._on(k + 1):
            waiting = steps.after(arrived, [grads[id(v)] for v in above])
        grads.update(zip(map(id, above), waiting, strict=True))

    def _apply(self, grads):
        """One optimizer step over the variables in `grads` (keyed by `id`).

        The optimizer is built on every trainable variable and applied to
        those trained in this step, in the model's order, each once (shared
        layers may list a variable twice).

        Returns whether the step is applied: a boolean tensor, False when a
        `LossScaleOptimizer` skips it for gradients that are not finite.
        With a synthesizer optimizer, each optimizer steps over its own
        variables (see `SynthesizerOptimizerMixin`).
        """
        self._build_optimizer()
        if self.synthesizer_optimizer is not None:
            return self._apply_by_optimizer(grads)
        ordered = trained_in_order(self.trainable_variables, grads)
        gradients = [grads[id(v)] for v in ordered]
        applied = tf.constant(True)
        if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
            applied = self.optimizer.check_finite(gradients)
        self.optimizer.apply(gradients, ordered)
        return applied

    def _track_sg_losses(self, sg_losses, applied, weights=None):
        """Adds each cut's synthesizer loss to the mean that `fit` logs.

        A step that is not applied is left out: its loss scale overflowed
        float16, so its targets are not finite. `weights` (one 0 or 1 per
        cut, or None) leaves out cuts that did not learn in this step.
        """
        for k, (tracker, loss) in enumerate(
            zip(self.sg_loss_trackers, sg_losses, strict=True)
        ):
            weight = tf.cast(applied, tf.float32)
            if weights is not None:
                weight *= weights[k]
            tracker.update_state(tf.where(weight > 0, loss, 0.0), sample_weight=weight)

    def _decoupled_gradients(
        self, activations, pullbacks, true_grad, context, scale, share, loss_scale
    ):
        """Gradients of the stages below the top and of the synthesizers.

        Returns a dict from `id(variable)` to its gradient (stages from their
        synthetic gradients, synthesizers from their regression targets, all
        multiplied by `loss_scale`, which `true_grad` already carries) and the
        list of synthesizer losses, lowest cut first.
        """
        grads = {}
        synthetic, synth_pullbacks = self._synthetic_gradients(activations, context)

        # Bootstrapped targets: the top stage sends the true gradient to the
        # last cut; stage k sends the pullback of its own synthetic gradient.
        targets = [None] * len(synthetic)
        targets[-1] = steps.bootstrapped_target(true_grad, scale, loss_scale)
        for k in reversed(range(len(synthetic))):
            stage = self.stages[k]
            with self._on(k):
                cotangent = steps.stage_cotangent(synthetic[k], scale, loss_scale)
                input_grad, stage_grads = pullbacks[k]((cotangent, loss_scale))
            grads.update(
                zip(map(id, stage.trainable_variables), stage_grads, strict=True)
            )
            if k > 0:
                targets[k - 1] = steps.bootstrapped_target(
                    input_grad, scale, loss_scale
                )
        if self.sg_target == "backprop":
            for k in reversed(range(len(synthetic))):
                targets[k] = steps.bootstrapped_target(true_grad, scale, loss_scale)
                if k > 0:
                    with self._on(k):
                        true_grad, _ = pullbacks[k]((true_grad, None))

        synth_grads, sg_losses = self._regress_synthesizers(
            synthetic, synth_pullbacks, targets, share, loss_scale
        )
        grads.update(synth_grads)
        return grads, sg_losses

    def _synthetic_gradients(self, activations, context):
        """Each cut's synthetic gradient, with the pullback to its synthesizer's
        weights: two lists, lowest cut first."""
        synthetic, pullbacks = [], []
        for k, (synth, h) in enumerate(
            zip(self.synthesizers, activations, strict=True)
        ):
            with self._on(k):
                (g,), pullback = steps.vjp(
                    lambda a, s=synth: (_synthesize(s, a, context),),
                    h,
                    synth.trainable_variables,
                    watch_inputs=False,
                )
            synthetic.append(g)
            pullbacks.append(pullback)
        return synthetic, pullbacks

    def _regress_synthesizers(self, synthetic, pullbacks, targets, share, loss_scale):
        """The synthesizers' gradients from regressing `targets`.

        Returns a dict from `id(variable)` to its gradient (times
        `sg_loss_weight` and `loss_scale`) and the synthesizer losses, lowest
        cut first.
        """
        grads, sg_losses = {}, []
        for k, synth in enumerate(self.synthesizers):
            with self._on(k):
                sg_loss, d_synthetic = steps.synthesizer_loss(synthetic[k], targets[k])
                cotangent = d_synthetic * (self.sg_loss_weight * share * loss_scale)
                _, synth_grads = pullbacks[k]((cotangent,))
            sg_losses.append(sg_loss)
            grads.update(
                zip(map(id, synth.trainable_variables), synth_grads, strict=True)
            )
        return grads, sg_losses

    def _context(self, y):
        if self.method != "cdni":
            return None
        if y is None:
            raise ValueError(
                "method='cdni' conditions the synthesizers on the labels, so "
                "fit needs targets. Received: y=None"
            )
        if isinstance(y, (list, tuple, dict)):
            raise ValueError(
                "method='cdni' expects a single label tensor as targets. "
                f"Received: y of type {type(y).__name__}"
            )
        return steps.check_labels(y, self.synthesizers[0].num_classes)

    # ------------------------------------------------------------ diagnostics

    def cut_gradients(self, x, y, sample_weight=None, training=False):
        """Synthetic and true gradients at every cut, on one batch.

        Runs the network forward and backward end to end (an extra backward
        pass, which training itself never needs) and the synthesizers on the
        activations. Both come in the synthesizers' per-example scale (the
        gradient of the batch-mean loss times the batch size) and in float32.

        Args:
            x, y, sample_weight: one batch, as `fit` would see it.
            training: the mode of batch normalisation and dropout.

        Returns:
            `(synthetic, true)`: two lists with one tensor per cut, lowest
            first. `synthetic` is empty for methods that use no synthesizers.
        """
        if not self.compiled:
            raise ValueError(
                "cut_gradients needs the loss: call `compile()` before it."
            )
        x = tf.convert_to_tensor(x)
        context = self._context(tf.convert_to_tensor(y) if y is not None else y)
        if context is not None:
            y = context
        scale = steps.global_batch_size(x)
        # Scaled as in training, so that float16 gradients do not underflow.
        loss_scale = steps.loss_scale(self.optimizer)
        with tf.GradientTape() as tape:
            activations = []
            h = x
            for stage in self.stages[:-1]:
                h = stage(h, training=training)
                tape.watch(h)
                activations.append(h)
            y_pred = self.stages[-1](h, training=training)
            loss = self.compute_loss(
                x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training
            )
            scaled_loss = loss * loss_scale
        true = [
            steps.bootstrapped_target(g, scale, loss_scale)
            for g in tape.gradient(scaled_loss, activations)
        ]
        synthetic = []
        if self.uses_synthesizers:
            for synth, h in zip(self.synthesizers, activations, strict=True):
                g = _synthesize(synth, h, context, training)
                synthetic.append(tf.cast(g, tf.float32))
        return synthetic, true

    # ---------------------------------------------------------------- summary

    def summary(
        self,
        line_length=None,
        positions=None,
        print_fn=None,
        expand_nested=False,
        show_trainable=False,
        layer_range=None,
    ):
        """Prints each stage and synthesizer: parameters, device and cost.

        One row per stage (its output shape, parameters, device and
        multiply-adds per example), each followed by the synthesizer at the
        cut above it, with its own cost and that cost over the stage's: the
        method's extra compute at that cut (see `keras_sg.models.costs`). Takes
        the arguments of `keras.Model.summary`; `expand_nested` lists each
        stage's layers, and `layer_range` selects stages and synthesizers by
        name. Per-row numbers are returned by
        `keras_sg.models.summary.summary_rows(model)`.
        """
        print_summary(
            self,
            line_length=line_length,
            positions=positions,
            print_fn=print_fn,
            expand_nested=expand_nested,
            show_trainable=show_trainable,
            layer_range=layer_range,
        )

    # ---------------------------------------------------------------- metrics

    def test_step(self, data):
        logs = super().test_step(data)
        return {k: v for k, v in logs.items() if not k.endswith("_sg_loss")}

    # ------------------------------------------------------------ serializing

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "network": [
                    keras.saving.serialize_keras_object(s) for s in self.stages
                ],
                "synthesizers": [
                    keras.saving.serialize_keras_object(s) for s in self.synthesizers
                ]
                or None,
                "method": self.method,
                "sg_loss_weight": self.sg_loss_weight,
                "sg_target": self.sg_target,
                "devices": self.devices,
            }
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["network"] = [
            keras.saving.deserialize_keras_object(s, custom_objects=custom_objects)
            for s in config["network"]
        ]
        if config.get("synthesizers"):
            config["synthesizers"] = [
                keras.saving.deserialize_keras_object(s, custom_objects=custom_objects)
                for s in config["synthesizers"]
            ]
        return cls(**config)


def _synthesize(synth, h, context, training=True):
    if context is not None:
        return synth(h, context=context, training=training)
    return synth(h, training=training)


def _stage_vjp(stage, inputs, share, watch_inputs, persistent=False):
    """Stage forward in training mode on a tape of its own: `(outputs, pullback)`.

    The pullback takes `(output cotangent, penalty weight)`; the penalty is
    the stage's own regularization losses (see `_penalty`).
    """
    (outputs, _), pullback = steps.vjp(
        lambda a: (stage(a, training=True), _penalty(stage, share)),
        inputs,
        stage.trainable_variables,
        watch_inputs=watch_inputs,
        persistent=persistent,
    )
    return outputs, pullback


def _penalty(stage, share):
    """The stage's own regularization losses, scaled for the replica sum."""
    if not stage.losses:
        return None
    return tf.add_n([tf.cast(loss, tf.float32) for loss in stage.losses]) * share


def _cut_name(stage, k):
    layers = getattr(stage, "layers", None)
    if layers and isinstance(layers[-1], Interface):
        return layers[-1].name
    return f"cut_{k + 1}"


def _known_input_shape(stage):
    try:
        inputs = stage.inputs
    except (AttributeError, ValueError):
        return None
    if not inputs:
        return None
    if len(inputs) == 1:
        return tuple(inputs[0].shape)
    return [tuple(i.shape) for i in inputs]  # a model of several inputs


def _output_shape(stage, input_shape):
    return tuple(stage.compute_output_spec(_symbolic(input_shape)).shape)


def _is_shape(shape):
    return isinstance(shape, (tuple, list)) and all(
        d is None or isinstance(d, int) for d in shape
    )


def _symbolic(shape):
    """KerasTensors of a shape, or of a list of shapes (a model of several
    inputs; JSON turns the tuples of a saved build config into lists)."""
    if _is_shape(shape):
        return keras.KerasTensor(tuple(shape))
    return [_symbolic(s) for s in shape]
