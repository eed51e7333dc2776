"""A Keras model that trains recurrent networks in chunks of time: cuts in time."""

import contextlib

import keras
import tensorflow as tf

from keras_sg._checks import check_int
from keras_sg.models import steps
from keras_sg.models._sequences import (
    SequenceModel,
    accumulate,
    build_synthesizer,
    check_method,
    check_synthesizer,
    check_weight,
    deserialize_layers,
)

TIME_METHODS = ("bptt", "dni", "dni_aux")


@keras.saving.register_keras_serializable(package="keras_sg")
class TruncatedBPTTModel(SequenceModel):
    """A recurrent network trained over long sequences in chunks of T steps.

    Each batch of `fit` holds whole sequences, `(batch, time, ...)`, with one
    target per step, `(batch, time, ...)`. `train_step` cuts the batch along
    time into chunks of `truncation` steps. The state of every recurrent
    layer (all its state tensors, such as an LSTM's h and c) is carried from
    one chunk to the next and starts afresh, from the layers' own initial
    state (zeros for Keras's cells), at the start of every sequence. A
    boundary between two chunks is a cut in time: the *stage* below it is
    chunk j, the state crossing it is the activation, and no gradient
    crosses it (Jaderberg et al. 2016, arXiv:1608.05343, Section 3.2).

    The objective is the loss over the whole sequence: the mean of the
    chunks' losses (with Keras's default mean reduction and equal chunks,
    the loss that `evaluate` reports). One optimizer step per batch applies
    the sum of the chunks' gradients. Methods:

    - `"bptt"`: truncated backpropagation through time. Each chunk updates
      from its own loss only; every gradient that would cross a boundary is
      dropped. `truncation=None` makes the whole sequence one chunk: full
      BPTT, the reference.
    - `"dni"`: at the end of every chunk but the last, `synthesizer` predicts
      the gradient of the future loss with respect to the carried state,
      from that state; chunk j updates from its own loss plus that synthetic
      gradient, as a cotangent on its final state. The one synthesizer is
      shared by every boundary (it is the same cut, at another time). The
      synthesizer at the boundary before chunk j regresses (mean squared
      error) the bootstrapped target: the gradient of chunk j's loss with
      respect to its initial state plus the pullback through chunk j of the
      (stopped) synthetic gradient at its end, times `sg_scale`; before the
      last chunk, of its loss alone.
    - `"dni_aux"`: `"dni"` plus an auxiliary task (the paper's DNI + Aux; its
      text could not be read here, this is our reading). At every boundary
      j that has a boundary after it, `aux_synthesizer` predicts, from the
      state s_j, the synthetic gradient one boundary (T steps) further
      ahead, the stopped M(s_{j+1}). Its mean squared error, times
      `aux_weight`, trains the aux synthesizer and is also a loss on the
      network: its gradient with respect to s_j is added to chunk j's
      cotangent, so that the state learns to carry what the future
      gradient depends on. The bootstrapped targets stay those of `"dni"`
      (the aux loss is not part of what the synthesizer predicts).

    Scale: synthesizers predict the gradient of the batch-mean loss times
    B * J, with B the global batch size and J the number of chunks: the
    per-example gradient of the *sum* of the future chunks' mean losses,
    which neither the batch size nor the sequence length shrinks (see
    `keras_sg.models.steps`). With an oracle synthesizer that returns this
    true future gradient, `"dni"` updates exactly as full BPTT (tested).

    `evaluate` and `predict` run the network over whole sequences;
    `run_stream` runs it over a stream longer than a batch's sequences, in
    windows, the state carried from one window to the next. `fit`
    logs `loss` (the mean of the chunks' losses, before the step), the
    compiled metrics on the chunks' predictions joined in time, `sg_loss`
    (the synthesizer loss, mean over boundaries) and, for `"dni_aux"`,
    `aux_loss`.

    The network: a `keras.Sequential` (or a list of layers) of
    `keras.layers.RNN` layers (LSTM, GRU, SimpleRNN, `keras.layers.RNN` of
    any cell, stacked cells) made with `return_sequences=True` (the model
    asks them for their states itself, so `return_state=False`), and layers
    that act on each step on its own (Dense, Embedding, Dropout, ...). Every
    state tensor must be a vector per example. A layer that mixes steps (a
    convolution over time, attention) would see a chunk only; it is the
    user's to avoid. Masks, `go_backwards`, `stateful` layers, and RNN
    layers nested inside other layers (`Bidirectional`, a nested model)
    are refused. The time axis must be static and a multiple of
    `truncation` (no short last chunk). Float32 only.

    Args:
        network: a `keras.Sequential`, or a list of layers, as above.
        truncation: T, the number of steps per chunk; None for the whole
            sequence (full BPTT).
        method: one of `"bptt"`, `"dni"`, `"dni_aux"`.
        synthesizer: a layer mapping the state, `(batch, state_size)` (every
            state tensor of every recurrent layer, concatenated in layer
            order), to a tensor of its shape, such as
            `DenseSynthesizer(hidden_layers=0)`. Needed by `"dni"` and
            `"dni_aux"`. Not conditioned (no `num_classes`).
        aux_synthesizer: the same kind of layer, for `"dni_aux"`.
        sg_loss_weight: factor on the synthesizer loss; >= 0.
        aux_weight: factor on the auxiliary loss; >= 0.
        sg_scale: c in [0, 1], the factor on the synthetic gradient where
            chunk j uses it: its cotangent is c M(s_j), so the bootstrapped
            target before it is discounted by c too, and the synthesizer
            learns the future gradient with chunk k's term weighted by
            c^(k-j-1). At 1 (the default) an oracle synthesizer makes the
            update full BPTT's. A shared synthesizer bootstrapping through
            the chunks' Jacobians can diverge at 1 (its predictions grow
            far past the true gradient); c < 1 damps that loop. The
            public implementation mtanghu/DNI-RNN uses 0.1 and attributes it
            to the paper (n/c here).
        **kwargs: base model arguments (`name`).

    Example:

    ```python
    net = keras.Sequential([
        keras.Input((None, 8)),  # or a fixed length
        keras.layers.LSTM(64, return_sequences=True),
        keras.layers.Dense(8),
    ])
    model = keras_sg.TruncatedBPTTModel(
        net, truncation=4, method="dni",
        synthesizer=keras_sg.DenseSynthesizer(hidden_layers=0),
    )
    model.compile("adam", keras.losses.BinaryCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=16)  # x: (n, time, 8), y: (n, time, 8)
    ```
    """

    def __init__(
        self,
        network,
        truncation: int | None,
        method: str = "dni",
        synthesizer=None,
        aux_synthesizer=None,
        sg_loss_weight: float = 1.0,
        aux_weight: float = 1.0,
        sg_scale: float = 1.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_method(method, TIME_METHODS)
        if truncation is not None:
            check_int("truncation", truncation, 1)
        self.method = method
        self.truncation = truncation
        self.sg_loss_weight = check_weight("sg_loss_weight", sg_loss_weight)
        self.aux_weight = check_weight("aux_weight", aux_weight)
        self.sg_scale = check_weight("sg_scale", sg_scale)
        if self.sg_scale > 1.0:
            raise ValueError(
                "`sg_scale` is a discount on the synthetic gradient, in [0, 1]. "
                f"Received: sg_scale={sg_scale!r}"
            )
        self.network = _check_network(network)
        self.rnn_layers = [
            layer
            for layer in self.network.layers
            if isinstance(layer, keras.layers.RNN)
        ]
        self.state_sizes = [_state_sizes(layer) for layer in self.rnn_layers]
        self.state_size = sum(sum(sizes) for sizes in self.state_sizes)
        self.synthesizer = self._check_synthesizer(
            "synthesizer", synthesizer, method in ("dni", "dni_aux")
        )
        self.aux_synthesizer = self._check_synthesizer(
            "aux_synthesizer", aux_synthesizer, method == "dni_aux"
        )
        # Only the logs of the method: Keras logs every tracked metric.
        self.sg_loss_tracker = (
            keras.metrics.Mean(name="sg_loss") if self.uses_synthesizer else None
        )
        self.aux_loss_tracker = (
            keras.metrics.Mean(name="aux_loss") if method == "dni_aux" else None
        )
        self._check_policies()
        input_shape = _known_input_shape(self.network)
        if input_shape is not None:
            self.build(input_shape)

    # ------------------------------------------------------------------ setup

    @property
    def uses_synthesizer(self) -> bool:
        return self.method in ("dni", "dni_aux")

    def _synthesizer_layers(self):
        if not self.uses_synthesizer:
            return []
        parts = (self.synthesizer, self.aux_synthesizer)
        return [p for p in parts if p is not None]

    def _check_synthesizer(self, name, synth, needed):
        return check_synthesizer(
            "TruncatedBPTTModel",
            name,
            synth,
            needed,
            self.method,
            f"a layer that maps the state, shape (batch, {self.state_size}), to "
            "a tensor of its shape",
        )

    def _check_policies(self):
        parts = [self, self.network, self.synthesizer, self.aux_synthesizer]
        for part in parts:
            if part is None:
                continue
            for layer in part._flatten_layers():
                if layer.dtype_policy.name != "float32":
                    raise ValueError(
                        "TruncatedBPTTModel trains under the 'float32' dtype "
                        f"policy only. Received: dtype policy "
                        f"{layer.dtype_policy.name!r} of layer '{layer.name}'"
                    )

    def build(self, input_shape):
        if not self.network.built:
            self.network.build(input_shape)
        batch = input_shape[0]
        for name in ("synthesizer", "aux_synthesizer"):
            synth = getattr(self, name)
            if synth is None:
                continue
            shape = (batch, self.state_size)
            build_synthesizer(name, synth, shape, what="the state's shape")
        self.built = True

    def build_for(self, x):
        """Builds the network and the synthesizers from a batch, if unbuilt."""
        parts = [self.network, self.synthesizer, self.aux_synthesizer]
        if self.built and all(p.built for p in parts if p is not None):
            return
        self.build(tuple(x.shape))

    # ---------------------------------------------------------------- forward

    def call(self, inputs, training=None):
        return self.network(inputs, training=training)

    def initial_state(self, batch_size):
        """The state every sequence starts from: `(batch_size, state_size)`,
        each recurrent layer's own initial state (zeros for Keras's cells)."""
        tensors = []
        for layer in self.rnn_layers:
            state = layer.get_initial_state(batch_size)
            tensors.extend(keras.tree.flatten(state))
        return _concat(tensors)

    def run_chunk(self, x, state, training=False):
        """Runs the network over one chunk from a carried state.

        Args:
            x: the chunk's inputs, `(batch, steps, ...)`.
            state: `(batch, state_size)`: every state tensor of every
                recurrent layer, concatenated in layer order.
            training: the mode of dropout and batch normalisation.

        Returns:
            `(outputs, final_state)`: the network's outputs at every step of
            the chunk, and the state after its last step, as `state`.
        """
        sizes = [s for layer_sizes in self.state_sizes for s in layer_sizes]
        parts = tf.split(state, sizes, axis=-1)
        h, finals, start = x, [], 0
        for layer in self.network.layers:
            if not isinstance(layer, keras.layers.RNN):
                h = layer(h, training=training)
                continue
            count = len(_state_sizes(layer))
            initial = keras.tree.pack_sequence_as(
                layer.cell.state_size, parts[start : start + count]
            )
            start += count
            with _returning_state(layer):
                h, *states = layer(h, initial_state=initial, training=training)
            finals.extend(keras.tree.flatten(states))
        return h, _concat(finals)

    def run_stream(self, windows, carry_state: bool = True):
        """Runs the network over parallel streams cut into windows, in order.

        This is how a long text is scored (Zaremba et al. 2014,
        arXiv:1409.2329; the DNI paper's PTB bits per character): row r of
        window w + 1 continues row r of window w, as
        `keras_sg.data.bptt_windows` lays a stream out, so the state after
        window w (every state tensor of every recurrent layer, as
        `run_chunk` carries it) is the state window w + 1 starts from. Each
        row starts from `initial_state` once, at window 0, the start of its
        stream. With `carry_state=False` every window starts afresh instead,
        as `evaluate` treats a window: a measure of what the network does
        with `steps` characters of context only.

        Args:
            windows: `(windows, batch, steps, ...)`: the inputs of each
                window, e.g. the first array `bptt_windows` returns.
            carry_state: carry the state from one window to the next (True),
                or reset it at every window (False).

        Returns:
            An iterator over the network's outputs on each window,
            `(batch, steps, ...)`, in order (inference mode), computed as it
            is read.

        Raises:
            ValueError: `windows` has fewer than three axes.
        """
        shape = tuple(getattr(windows, "shape", ()))
        if len(shape) < 3:
            raise ValueError(
                "run_stream expects windows of shape (windows, batch, steps, "
                f"...), as bptt_windows returns them. Received: windows of "
                f"shape {shape}"
            )
        self.build_for(tf.convert_to_tensor(windows[0]))
        return self._stream(windows, carry_state)

    def _stream(self, windows, carry_state):
        run = tf.function(
            lambda x, s: self.run_chunk(x, s, training=False), reduce_retracing=True
        )
        fresh = self.initial_state(windows.shape[1])
        state = fresh
        for w in range(windows.shape[0]):
            outputs, final = run(tf.convert_to_tensor(windows[w]), state)
            state = final if carry_state else fresh
            yield outputs

    # ----------------------------------------------------------------- train

    def chunks(self, x, y=None, sample_weight=None):
        """Cuts a batch of sequences along time into chunks of `truncation`.

        Returns three lists (one entry per chunk) of `x`, `y` and
        `sample_weight` slices; `y` and `sample_weight` entries are None
        when they are. A per-sequence `sample_weight` (rank 1) is given
        whole to every chunk.
        """
        if isinstance(x, (list, tuple, dict)):
            raise ValueError(
                "TruncatedBPTTModel expects a single input tensor of shape "
                f"(batch, time, ...). Received: x of type {type(x).__name__}"
            )
        time = x.shape[1] if len(x.shape) >= 2 else None
        if time is None:
            raise ValueError(
                "TruncatedBPTTModel needs sequences with a static time axis, "
                "(batch, time, ...): feed sequences of one length per `fit` "
                "call (a dataset without padded_batch to varying lengths). "
                f"Received: x of shape {tuple(x.shape)}"
            )
        steps_ = time if self.truncation is None else self.truncation
        if time % steps_:
            raise ValueError(
                f"The sequence length must be a multiple of truncation="
                f"{self.truncation}. Received: sequences of {time} steps "
                f"(x of shape {tuple(x.shape)})"
            )
        if y is not None:
            if isinstance(y, (list, tuple, dict)):
                raise ValueError(
                    "TruncatedBPTTModel expects a single target tensor of shape "
                    f"(batch, time, ...). Received: y of type {type(y).__name__}"
                )
            if len(y.shape) < 2 or y.shape[1] != time:
                raise ValueError(
                    f"Expected one target per step: y of shape (batch, {time}, "
                    f"...). Received: y of shape {tuple(y.shape)}"
                )
        count = time // steps_
        cut = [slice(j * steps_, (j + 1) * steps_) for j in range(count)]
        xs = [x[:, s] for s in cut]
        ys = [None if y is None else y[:, s] for s in cut]
        if sample_weight is not None and len(sample_weight.shape) >= 2:
            ws = [sample_weight[:, s] for s in cut]
        else:
            ws = [sample_weight] * count
        return xs, ys, ws

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        self.build_for(x)
        result = self.chunked_gradients(x, y, sample_weight)

        # Update weights: one optimizer step for the whole batch.
        self._apply(result["gradients"])

        batch = tf.shape(x)[0]
        self._loss_tracker.update_state(
            result["loss"] / steps.replica_fraction(), sample_weight=batch
        )
        if self.uses_synthesizer:
            _track(self.sg_loss_tracker, result["sg_losses"])
        if self.method == "dni_aux":
            _track(self.aux_loss_tracker, result["aux_losses"])
        y_pred = tf.concat(result["y_pred"], axis=1)
        metrics = self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
        if self.uses_synthesizer:
            metrics["sg_loss"] = self.sg_loss_tracker.result()
        if self.method == "dni_aux":
            metrics["aux_loss"] = self.aux_loss_tracker.result()
        return metrics

    def chunked_gradients(self, x, y, sample_weight=None):
        """The gradients of one training step, chunk by chunk, unapplied.

        Chunk j runs on a tape of its own from the stopped state s_{j-1}
        (`steps.vjp`), so no gradient crosses a boundary. It is pulled back
        once the next chunk has run (the auxiliary task needs the synthetic
        gradient one boundary ahead): with cotangent 1/J on its loss and,
        for the synthesizer methods, `steps.stage_cotangent` of the
        synthetic gradient times `sg_scale` on its final state. The input
        gradient of that pullback is the bootstrapped target of the boundary
        before it.

        Returns:
            A dict: `gradients` (from `id(variable)` to its gradient, times
            the loss scale), `loss` (the mean of the chunks' losses),
            `y_pred` (one output per chunk), `states` (the state at every
            boundary, lowest first), `synthetic` and `targets` (at every
            boundary, per-example scale, float32; empty for `"bptt"`),
            `aux_predictions` and `aux_targets` (for `"dni_aux"`, at every
            boundary that has one after it), `sg_losses` and `aux_losses`.
        """
        xs, ys, ws = self.chunks(tf.convert_to_tensor(x), y, sample_weight)
        count = len(xs)
        scale = steps.global_batch_size(x) * count
        share = steps.replica_fraction()
        loss_scale = steps.loss_scale(self.optimizer)
        loss_weight = loss_scale / count
        decoupled = self.uses_synthesizer
        aux = self.method == "dni_aux"
        out = {
            "gradients": {},
            "y_pred": [],
            "states": [],
            "synthetic": [],
            "targets": [],
            "aux_predictions": [],
            "aux_targets": [],
            "sg_losses": [],
            "aux_losses": [],
        }
        grads = out["gradients"]
        network_vars = self.network.trainable_variables
        synth_pullbacks, aux_pullbacks, pending = [], [], None
        losses = []
        state = self.initial_state(tf.shape(xs[0])[0])

        def finish(i, pullback):
            """Pulls chunk i back; regresses the synthesizer before it."""
            last = i == count - 1
            sg_cotangent = None
            if decoupled and not last:
                sg_cotangent = steps.stage_cotangent(
                    self.sg_scale * out["synthetic"][i], scale, loss_scale
                )
            input_grad, chunk_grads = pullback((loss_weight, None, sg_cotangent))
            accumulate(grads, network_vars, chunk_grads)
            if aux and i + 1 < count - 1:
                # The auxiliary loss at s_i: its target is the synthetic
                # gradient one boundary ahead, known once chunk i+1 has run.
                aux_loss, d_aux = steps.synthesizer_loss(
                    out["aux_predictions"][i], out["synthetic"][i + 1]
                )
                weight = self.aux_weight * share * loss_scale / (count - 2)
                aux_state_grad, aux_grads = aux_pullbacks[i]((d_aux * weight,))
                accumulate(grads, self.aux_synthesizer.trainable_variables, aux_grads)
                _, extra = pullback((None, None, aux_state_grad))
                accumulate(grads, network_vars, extra)
                out["aux_targets"].append(out["synthetic"][i + 1])
                out["aux_losses"].append(aux_loss)
            if decoupled and i > 0:
                target = steps.bootstrapped_target(input_grad, scale, loss_scale)
                sg_loss, d_synthetic = steps.synthesizer_loss(
                    out["synthetic"][i - 1], target
                )
                weight = self.sg_loss_weight * share * loss_scale / (count - 1)
                _, synth_grads = synth_pullbacks[i - 1]((d_synthetic * weight,))
                accumulate(grads, self.synthesizer.trainable_variables, synth_grads)
                out["targets"].append(target)
                out["sg_losses"].append(sg_loss)

        for j in range(count):

            def chunk(s, j=j):
                y_pred, final = self.run_chunk(xs[j], s, training=True)
                loss = self.compute_loss(
                    x=xs[j], y=ys[j], y_pred=y_pred, sample_weight=ws[j], training=True
                )
                return loss, y_pred, final

            (loss, y_pred, state), pullback = steps.vjp(
                chunk,
                state,
                network_vars,
                watch_inputs=decoupled and j > 0,
                persistent=aux,
            )
            losses.append(loss)
            out["y_pred"].append(y_pred)
            if j < count - 1:
                out["states"].append(state)
                if decoupled:
                    (g,), synth_pullback = steps.vjp(
                        lambda s: (self.synthesizer(s, training=True),),
                        state,
                        self.synthesizer.trainable_variables,
                        watch_inputs=False,
                    )
                    out["synthetic"].append(tf.cast(g, tf.float32))
                    synth_pullbacks.append(synth_pullback)
                if aux:
                    (a,), aux_pullback = steps.vjp(
                        lambda s: (self.aux_synthesizer(s, training=True),),
                        state,
                        self.aux_synthesizer.trainable_variables,
                    )
                    out["aux_predictions"].append(tf.cast(a, tf.float32))
                    aux_pullbacks.append(aux_pullback)
            if pending is not None:
                finish(j - 1, pending)
            pending = pullback
        finish(count - 1, pending)
        out["loss"] = tf.add_n(losses) / count
        return out

    # ------------------------------------------------------------ diagnostics

    def boundary_gradients(self, x, y, sample_weight=None, training=False):
        """Synthetic and true gradients at every boundary, on one batch.

        The true gradient at boundary j is full BPTT's: that of the loss of
        every chunk after it with respect to the state s_j, through all of
        them (one backward pass over the whole sequence, which training
        never needs). Both come in the synthesizer's scale (the gradient of
        the batch-mean loss times B * J) and in float32; compare them with
        `keras_sg.models.steps.cosine_similarity`.

        Args:
            x, y, sample_weight: one batch of whole sequences, as `fit` sees it.
            training: the mode of dropout and batch normalisation.

        Returns:
            `(synthetic, true)`: two lists with one `(batch, state_size)`
            tensor per boundary, lowest first. `synthetic` is empty without a
            synthesizer.
        """
        if not self.compiled:
            raise ValueError(
                "boundary_gradients needs the loss: call `compile()` before it."
            )
        x = tf.convert_to_tensor(x)
        y = tf.convert_to_tensor(y)
        if sample_weight is not None:
            sample_weight = tf.convert_to_tensor(sample_weight)
        self.build_for(x)
        xs, ys, ws = self.chunks(x, y, sample_weight)
        count = len(xs)
        scale = steps.global_batch_size(x) * count
        with tf.GradientTape() as tape:
            state, states, loss = self.initial_state(tf.shape(x)[0]), [], 0.0
            for j in range(count):
                if j:
                    tape.watch(state)
                    states.append(state)
                y_pred, state = self.run_chunk(xs[j], state, training=training)
                chunk_loss = self.compute_loss(
                    x=xs[j],
                    y=ys[j],
                    y_pred=y_pred,
                    sample_weight=ws[j],
                    training=training,
                )
                loss += chunk_loss / count
        true = []
        if states:
            true = [
                steps.bootstrapped_target(g, scale) for g in tape.gradient(loss, states)
            ]
        synthetic = []
        if self.synthesizer is not None:
            synthetic = [
                tf.cast(self.synthesizer(s, training=training), tf.float32)
                for s in states
            ]
        return synthetic, true

    def test_step(self, data):
        logs = super().test_step(data)
        return {k: v for k, v in logs.items() if k not in ("sg_loss", "aux_loss")}

    # ------------------------------------------------------------ serializing

    def get_config(self):
        config = super().get_config()
        serialize = keras.saving.serialize_keras_object
        config.update(
            {
                "network": serialize(self.network),
                "truncation": self.truncation,
                "method": self.method,
                "synthesizer": serialize(self.synthesizer),
                "aux_synthesizer": serialize(self.aux_synthesizer),
                "sg_loss_weight": self.sg_loss_weight,
                "aux_weight": self.aux_weight,
                "sg_scale": self.sg_scale,
            }
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        keys = ("network", "synthesizer", "aux_synthesizer")
        return cls(**deserialize_layers(config, keys, custom_objects))


def _check_network(network):
    """The network as a Sequential, after checking every layer can be cut in time."""
    if isinstance(network, (list, tuple)):
        network = keras.Sequential(list(network))
    if not isinstance(network, keras.Sequential):
        raise ValueError(
            "TruncatedBPTTModel expects a keras.Sequential or a list of layers. "
            f"Received: network of type {type(network).__name__}"
        )
    rnns = 0
    for layer in network.layers:
        if isinstance(layer, keras.layers.RNN):
            rnns += 1
            for attr, want in (
                ("return_sequences", True),
                ("return_state", False),
                ("go_backwards", False),
                ("stateful", False),
            ):
                if bool(getattr(layer, attr)) != want:
                    raise ValueError(
                        f"The RNN layer '{layer.name}' must be made with "
                        f"{attr}={want}: the model runs it chunk by chunk and "
                        f"collects its states itself. Received: {attr}="
                        f"{getattr(layer, attr)!r}"
                    )
            continue
        inner = [
            sub.name
            for sub in layer._flatten_layers(include_self=False)
            if isinstance(sub, keras.layers.RNN)
        ]
        if inner:
            raise ValueError(
                f"The layer '{layer.name}' ({type(layer).__name__}) holds the "
                f"RNN layers {inner}, whose state the model cannot carry "
                "across chunks. Put keras.layers.RNN layers directly in the "
                f"network. Received: {type(layer).__name__}"
            )
        if isinstance(layer, keras.layers.Masking) or getattr(
            layer, "mask_zero", False
        ):
            raise ValueError(
                f"TruncatedBPTTModel does not support masks. Received: the "
                f"masking layer '{layer.name}' ({type(layer).__name__})"
            )
    if not rnns:
        raise ValueError(
            "TruncatedBPTTModel needs at least one keras.layers.RNN layer in "
            f"the network. Received: layers {[lay.name for lay in network.layers]}"
        )
    return network


def _state_sizes(layer):
    """The sizes of an RNN layer's state tensors, each a vector per example."""
    sizes = keras.tree.flatten(layer.cell.state_size)
    for size in sizes:
        if isinstance(size, bool) or not isinstance(size, int):
            raise ValueError(
                f"TruncatedBPTTModel carries state vectors: every state of "
                f"'{layer.name}' must have an integer size. Received: "
                f"state_size={layer.cell.state_size!r}"
            )
    return sizes


def _known_input_shape(network):
    try:
        inputs = network.inputs
    except (AttributeError, ValueError):
        return None
    if not inputs or len(inputs) != 1:
        return None
    return tuple(inputs[0].shape)


def _concat(tensors):
    tensors = [tf.cast(t, tf.float32) for t in tensors]
    return tensors[0] if len(tensors) == 1 else tf.concat(tensors, axis=-1)


def _track(tracker, losses):
    """Adds the mean over boundaries to `tracker`; nothing without boundaries."""
    if losses:
        tracker.update_state(tf.add_n(losses) / len(losses))


@contextlib.contextmanager
def _returning_state(layer):
    """Makes an RNN layer return its final states for the length of a call."""
    layer.return_state = True
    try:
        yield
    finally:
        layer.return_state = False
