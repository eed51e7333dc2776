"""Synthesizers with an optimizer (and a learning rate) of their own.

`compile(..., synthesizer_optimizer=...)` for every keras_sg model that has
synthesizers. Public DNI codes give the synthesizers a learning rate of
their own. Scaling the synthesizer losses (`sg_loss_weight`) does not give
one under Adam, which divides the gradient's scale out: it takes a second
optimizer.
"""

import inspect

import keras
import tensorflow as tf


class SynthesizerOptimizerMixin:
    """`compile(..., synthesizer_optimizer=None)` and the update it implies.

    With `synthesizer_optimizer=None` (the default) the model's one optimizer
    updates every variable, synthesizers included, as before. Given an
    optimizer (an instance or an identifier for `keras.optimizers.get`), the
    synthesizers' trainable variables, and only those, are updated by it,
    and every other variable by `model.optimizer`. Each optimizer is built
    once, on its own variables, and each steps once per training step: its
    `iterations` counts training steps (an optimizer given no gradient in a
    step only counts it), so Adam's bias correction and learning-rate
    schedules read the same step count from both.

    The synthesizer optimizer is an attribute of the model: `.keras` files
    save its variables (`iterations`, slots) beside the model optimizer's,
    and `get_compile_config` its config, so `keras.models.load_model`
    restores both and training continues as if never interrupted.

    Refused, with an error: a model whose method trains no synthesizers;
    the model optimizer itself; a model that scales its losses (the
    `"mixed_float16"` policy's `LossScaleOptimizer`, or `loss_scale_factor`),
    since one dynamic loss scale would then have to be shared by two
    optimizers that each decide alone whether to skip a step.

    A class using this mixin lists the layers the synthesizer optimizer
    trains in `_synthesizer_layers()`, calls `_build_optimizers()` before
    its first update and `_apply_by_optimizer(grads)` to apply gradients
    keyed by `id(variable)` when `synthesizer_optimizer` is set.
    """

    synthesizer_optimizer = None

    def compile(
        self,
        optimizer="rmsprop",
        loss=None,
        *args,
        synthesizer_optimizer=None,
        **kwargs,
    ):
        """Configures the model for training: `keras.Model.compile`'s arguments,
        and `synthesizer_optimizer` (see the class docstring)."""
        synth = None
        if synthesizer_optimizer is not None:
            optimizer = keras.optimizers.get(optimizer)
            synth = self._check_synthesizer_optimizer(
                synthesizer_optimizer, optimizer, loss, args, kwargs
            )
        super().compile(optimizer, loss, *args, **kwargs)
        self.synthesizer_optimizer = synth
        if synth is not None:
            self._compile_config.config["synthesizer_optimizer"] = synth

    def compile_from_config(self, config):
        # Keras's own version skips compiling a model that overrides
        # `compile`; this one compiles it, as `load_model` expects, and builds
        # both optimizers so that their saved variables can be loaded.
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if getattr(self, "optimizer", None) is not None and self.built:
            self._build_optimizers()

    def _synthesizer_layers(self) -> list:
        """The layers that `synthesizer_optimizer` trains (none by default)."""
        return []

    def _check_synthesizer_optimizer(self, value, optimizer, loss, args, kwargs):
        name = type(self).__name__
        method = getattr(self, "method", None)
        if not self._synthesizer_layers():
            raise ValueError(
                f"{name} with method={method!r} trains no synthesizers, so it "
                f"takes no synthesizer optimizer. Received: "
                f"synthesizer_optimizer={value!r}"
            )
        try:
            synth = keras.optimizers.get(value)
        except (ValueError, TypeError) as error:
            raise ValueError(
                "`synthesizer_optimizer` must be a Keras optimizer or its "
                f"identifier. Received: synthesizer_optimizer={value!r} ({error})"
            ) from error
        if synth is optimizer:
            raise ValueError(
                "`synthesizer_optimizer` must be another optimizer instance "
                "than the model's: one optimizer is built on one list of "
                "variables. Pass synthesizer_optimizer=None to train "
                "everything with `optimizer`. Received: the same instance "
                f"{synth!r}"
            )
        bound = inspect.signature(keras.Model.compile).bind(
            self, optimizer, loss, *args, **kwargs
        )
        auto_scale = bound.arguments.get("auto_scale_loss", True)
        wraps = auto_scale and self.dtype_policy.name == "mixed_float16"
        for what, opt in (("optimizer", optimizer), ("synthesizer_optimizer", synth)):
            scaled = isinstance(opt, keras.optimizers.LossScaleOptimizer) or (
                getattr(opt, "loss_scale_factor", None) is not None
            )
            if scaled or wraps:
                reason = (
                    f"the model's dtype policy is {self.dtype_policy.name!r}"
                    if wraps and not scaled
                    else f"`{what}` ({type(opt).__name__}) scales the loss"
                )
                raise ValueError(
                    f"{name} does not take a synthesizer optimizer when its "
                    f"losses are scaled ({reason}): both optimizers would have "
                    "to share one dynamic loss scale and skip the same steps. "
                    "Train under 'float32' or 'mixed_bfloat16', or pass "
                    f"synthesizer_optimizer=None. Received: "
                    f"synthesizer_optimizer={value!r}"
                )
        return synth

    def _optimizer_groups(self):
        """`[(optimizer, variables)]`: the model optimizer on every trainable
        variable, or, with a synthesizer optimizer, on every one but the
        synthesizers', and the synthesizer optimizer on those."""
        if self.synthesizer_optimizer is None:
            return [(self.optimizer, self.trainable_variables)]
        synth_layers = self._synthesizer_layers()
        synth, ids = [], set()
        for layer in synth_layers:
            for v in layer.trainable_variables:
                if id(v) not in ids:
                    ids.add(id(v))
                    synth.append(v)
        for layer in self._flatten_layers(include_self=False, recursive=False):
            if any(layer is s for s in synth_layers):
                continue
            shared = [v.path for v in layer.trainable_variables if id(v) in ids]
            if shared:
                raise ValueError(
                    f"The variables {shared} belong to a synthesizer and to "
                    f"'{layer.name}', so two optimizers would update them. Give "
                    "the synthesizers weights of their own, or pass "
                    "synthesizer_optimizer=None."
                )
        rest = [v for v in self.trainable_variables if id(v) not in ids]
        # In the model's order, as `trainable_variables` lists them.
        order = {id(v): i for i, v in enumerate(self.trainable_variables)}
        synth.sort(key=lambda v: order.get(id(v), len(order)))
        return [(self.optimizer, rest), (self.synthesizer_optimizer, synth)]

    def _build_optimizer(self):
        # On every trainable variable, as `load_model` builds it (the
        # synthesizers' on theirs, with a synthesizer optimizer).
        if self.synthesizer_optimizer is not None:
            self._build_optimizers()
        elif not self.optimizer.built:
            self.optimizer.build(self.trainable_variables)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Without a distribution strategy, Keras builds the optimizer and the
        # compiled metrics and loss inside the first trace of the step, and
        # `tf.function` traces a function that made variables a second time.
        # For a built model they are made here instead, from the data's spec,
        # so the step (this package's steps are large) is traced once.
        built = all(layer.built for layer in self._flatten_layers())
        if self._distribute_strategy is not None:
            # Keras builds the optimizer here on every trainable variable; with
            # a synthesizer optimizer each is built on its own group first.
            if built:
                with self.distribute_strategy.scope():
                    self._build_optimizer()
            super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
            return
        if data_batch is None:
            dataset = getattr(iterator, "_distributed_dataset", None)
            data_batch = getattr(dataset, "element_spec", None)
        if data_batch is None or not built:
            return  # built by the first trace, as Keras does
        if keras.utils.unpack_x_y_sample_weight(data_batch)[1] is None:
            return  # the step says what is missing
        self._build_optimizer()
        try:
            self._symbolic_build(data_batch=data_batch)
        except (ValueError, RuntimeError):
            # Data the step refuses (its checks name the value and what
            # was expected): the trace builds what is left, and raises.
            return

    def _build_optimizers(self):
        """Builds each unbuilt optimizer on its own variables."""
        optimizers = [self.optimizer, self.synthesizer_optimizer]
        if all(o is None or o.built for o in optimizers):
            return
        for optimizer, variables in self._optimizer_groups():
            if not optimizer.built:
                optimizer.build(variables)

    def _apply_by_optimizer(self, grads):
        """One step of each optimizer over its variables in `grads` (keyed by
        `id`), in the model's order, each variable once; an optimizer with
        none of them only counts the step."""
        self._build_optimizers()
        for optimizer, variables in self._optimizer_groups():
            ordered = trained_in_order(variables, grads)
            if ordered:
                optimizer.apply([grads[id(v)] for v in ordered], ordered)
            else:
                optimizer.iterations.assign_add(1)
        return tf.constant(True)


def trained_in_order(variables, grads) -> list:
    """The variables that have a gradient in `grads` (keyed by `id`), in the
    order of `variables`, each once (shared layers may list one twice)."""
    ordered, seen = [], set()
    for v in variables:
        if id(v) in grads and id(v) not in seen:
            seen.add(id(v))
            ordered.append(v)
    return ordered
