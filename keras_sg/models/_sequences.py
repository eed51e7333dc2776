"""What the models trained over whole sequences (`TruncatedBPTTModel`,
`ClockedPairModel`) share: one traced step per sequence length, saving to
`.keras` only, one optimizer step over gradients gathered by hand, and the
checks and (de)serialization of their arguments and synthesizers."""

import keras
import tensorflow as tf

from keras_sg._checks import check_not_h5
from keras_sg.models.synthesizer_optimizer import (
    SynthesizerOptimizerMixin,
    trained_in_order,
)


class SequenceModel(SynthesizerOptimizerMixin, keras.Model):
    """The Keras front of `TruncatedBPTTModel` and `ClockedPairModel`.

    Both cut or unroll the time axis in Python, so their traced step holds
    one static sequence length; both gather their gradients by hand, keyed
    by `id(variable)`, and apply them in one optimizer step.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._traced_length = None

    def fit(self, x=None, y=None, *args, **kwargs):
        # Keras reuses its traced step across fit calls and, shown sequences
        # of a second length, relaxes the time axis to None, which the
        # chunks and the unrolled schedule cannot follow: a new length gets
        # a step of its own.
        length = sequence_length(x)
        if length is None or length != self._traced_length:
            self.train_function = None
        self._traced_length = length
        return super().fit(x, y, *args, **kwargs)

    def save(self, filepath, *args, **kwargs):
        check_not_h5(filepath)
        return super().save(filepath, *args, **kwargs)

    def _apply(self, grads):
        """One optimizer step over the variables in `grads` (keyed by `id`);
        with a synthesizer optimizer, one step of each over its own."""
        if self.synthesizer_optimizer is not None:
            self._apply_by_optimizer(grads)
            return
        if not self.optimizer.built:
            self.optimizer.build(self.trainable_variables)
        ordered = trained_in_order(self.trainable_variables, grads)
        self.optimizer.apply([grads[id(v)] for v in ordered], ordered)


def sequence_length(x):
    """The time axis of `fit`'s input when it can be read without iterating
    (arrays, tensors, a tf.data.Dataset); None otherwise."""
    if isinstance(x, tf.data.Dataset):
        shape = tf.nest.flatten(x.element_spec)[0].shape
    else:
        shape = getattr(x, "shape", None)
    if shape is None or len(shape) < 2:
        return None
    return shape[1]


def check_weight(name, value):
    """Returns `value` as a float if it is a finite number >= 0 (not a bool);
    raises ValueError otherwise."""
    try:
        weight = float(value)
    except (TypeError, ValueError):
        weight = float("nan")
    if isinstance(value, bool) or not 0.0 <= weight < float("inf"):
        raise ValueError(
            f"`{name}` must be a finite number >= 0. Received: {name}={value!r}"
        )
    return weight


def accumulate(grads, variables, new):
    """Adds `new` (one gradient per variable) into `grads`, keyed by `id`.

    Sparse gradients (an Embedding's IndexedSlices) are made dense to be
    added: two chunks of a sequence touch different rows.
    """
    for v, g in zip(variables, new, strict=True):
        if id(v) not in grads:
            grads[id(v)] = g
        else:
            grads[id(v)] = tf.convert_to_tensor(grads[id(v)]) + tf.convert_to_tensor(g)


def deserialize_layers(config, keys, custom_objects=None):
    """A copy of a `get_config` dict with the layers under `keys` rebuilt;
    an entry that is None or missing stays as it is."""
    config = dict(config)
    for key in keys:
        if config.get(key) is not None:
            config[key] = keras.saving.deserialize_keras_object(
                config[key], custom_objects=custom_objects
            )
    return config


def build_synthesizer(name, synth, shape, what="its input's shape"):
    """Builds `synth` on `shape`, `(batch, size)`, if unbuilt, and checks that
    it returns a tensor of that shape (a gradient of `what`)."""
    if not synth.built:
        synth.build(shape)
    out = synth.compute_output_spec(keras.KerasTensor(shape))
    if tuple(out.shape[1:]) != tuple(shape[1:]):
        raise ValueError(
            f"The `{name}` '{synth.name}' must return a gradient of {what} "
            f"{shape}. Received: output shape {tuple(out.shape)}"
        )


def check_method(method, methods):
    """Returns `method` if it is one of `methods`; raises ValueError otherwise."""
    if method not in methods:
        raise ValueError(
            f"Unknown training method. Expected one of {methods}. "
            f"Received: method={method!r}"
        )
    return method


def check_synthesizer(owner: str, name: str, synth, needed: bool, method, expects):
    """A synthesizer argument of `owner`: None unless `needed`, else an
    unconditioned Keras layer (these models give their synthesizers no
    context). `expects` says what the layer maps, for the error."""
    if synth is None:
        if needed:
            raise ValueError(
                f"method={method!r} needs `{name}`: {expects}. Received: {name}=None"
            )
        return None
    if not isinstance(synth, keras.layers.Layer):
        raise TypeError(
            f"`{name}` must be a Keras layer. Received: {type(synth).__name__}"
        )
    if getattr(synth, "conditioned", False):
        raise ValueError(
            f"{owner}'s synthesizers take no context. The `{name}` "
            f"'{synth.name}' is conditioned (num_classes={synth.num_classes}); "
            "create it with num_classes=None."
        )
    return synth
