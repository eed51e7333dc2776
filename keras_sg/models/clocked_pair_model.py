"""Two recurrent networks ticking at different clocks, joined by decoupled
interfaces."""

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

CLOCK_METHODS = ("bptt", "dni")


def tick_schedule(time: int, period: int) -> list[tuple[str, ...]]:
    """Which network ticks at every step of a sequence: a pure function.

    The fast network ticks at every step. The slow network ticks once the
    fast network has run the last step of a block of `period` steps, reads
    the fast network's output there, and its output is the message the fast
    network reads during the next block. The last block has no next block:
    the slow network does not tick after it (its message would go nowhere).

    Args:
        time: the number of steps, a multiple of `period`.
        period: K, the number of fast steps per slow tick.

    Returns:
        One tuple per step: `("fast",)` or `("fast", "slow")`.

    Example: `tick_schedule(6, 2)` is
    `[("fast",), ("fast", "slow"), ("fast",), ("fast", "slow"), ("fast",), ("fast",)]`.
    """
    check_int("period", period, 1)
    check_int("time", time, 1)
    if time % period:
        raise ValueError(
            f"The sequence length must be a multiple of period={period}. "
            f"Received: time={time}"
        )
    return [
        ("fast", "slow") if (t + 1) % period == 0 and t + 1 < time else ("fast",)
        for t in range(time)
    ]


def update_dependencies(method: str) -> dict[str, tuple[str, ...]]:
    """What each network's update reads, under a training method.

    `"fast_loss"` is the task loss, read off the fast network's outputs;
    `"fast_backward"` / `"slow_backward"` a network's backward pass (its
    pullback to the interface). Under `"dni"` neither update reads the other
    network's backward pass, and the slow update does not read the loss:
    that is what `ClockedPairModel.train_step` computes (tested numerically:
    a different loss leaves the slow network's gradient unchanged).
    """
    if check_method(method, CLOCK_METHODS) == "bptt":
        return {
            "fast": ("fast_forward", "slow_forward", "fast_loss", "slow_backward"),
            "slow": ("fast_forward", "slow_forward", "fast_loss", "fast_backward"),
        }
    return {
        "fast": ("fast_forward", "messages", "fast_loss", "state_synthesizer"),
        "slow": ("slow_forward", "fast_states_at_ticks", "message_synthesizer"),
        "message_synthesizer": ("messages", "fast_backward"),
        "state_synthesizer": ("fast_states_at_ticks", "slow_backward"),
    }


@keras.saving.register_keras_serializable(package="keras_sg")
class ClockedPairModel(SequenceModel):
    """A fast and a slow recurrent network, joined by decoupled interfaces.

    Both are Keras RNN cells (`LSTMCell`, `GRUCell`, `SimpleRNNCell`, any
    cell with `state_size` and `output_size`). On a sequence x_1..x_T
    (`(batch, time, features)`, T a multiple of the period K), with N = T/K
    blocks of K steps (`tick_schedule`):

        fast, every step t in block b:  h_t = f(x_t ++ m_{b-1}, h_{t-1})
        slow, after block b < N:        m_b = g(h_{bK}, m_{b-1} state)
        prediction at every step:       y_t = output(h_t)

    where h_{bK} is the fast output at the last step of block b, m_b the slow
    cell's output (the message, zeros for block 1), and ++ concatenation.
    The loss L is the compiled loss on all the y_t. There are two
    interfaces: the message m_b (slow to fast) and the fast output h_{bK}
    the slow network reads (fast to slow). Methods:

    - `"bptt"`: full backpropagation through time through both networks and
      both interfaces: the reference.
    - `"dni"`: at each interface a synthesizer predicts the gradient the
      other network would send back. `message_synthesizer` M predicts
      dL/dm_b from m_b; `state_synthesizer` S predicts the gradient of L
      through the slow network at h_{bK}, from h_{bK}. The slow network
      updates (BPTT along its own ticks) from the cotangents M(m_b) on its
      messages alone: it never reads the loss nor the fast network's
      backward pass. The fast network updates (BPTT along its own steps)
      from L with the messages held fixed, plus the cotangents S(h_{bK}) on
      its outputs at the ticks. Bootstrapped targets: M regresses the fast
      network's pullback to m_b (which carries S's predictions), S
      regresses the slow network's pullback to h_{bK} (which carries M's).
      With oracle synthesizers returning the true gradients, `"dni"`
      updates exactly as `"bptt"` (tested): the total gradient of L splits
      at the two cuts into exactly these two pullbacks.

    Only the backward passes are decoupled: the forward pass stays
    interleaved (the slow network needs h_{bK}, the fast one m_b).

    Scale: like `TruncatedBPTTModel`, synthesizers predict the gradient of
    the batch-mean loss times B * N (B the global batch size): a gradient
    that neither the batch size nor the sequence length shrinks.

    `fit` logs `loss`, the compiled metrics and, for `"dni"`,
    `message_sg_loss` and `state_sg_loss` (mean over ticks).
    `evaluate` and `predict` run both networks over whole sequences.
    Float32 only; no masks; one static sequence length per traced step.

    Args:
        fast_cell: the RNN cell ticking every step.
        slow_cell: the RNN cell ticking every `period` steps.
        period: K >= 1.
        output: a layer mapping the fast output, `(batch, time, units)`,
            to the predictions (e.g. `keras.layers.Dense(10)`).
        method: `"bptt"` or `"dni"`.
        message_synthesizer: for `"dni"`, a layer mapping a message
            `(batch, slow output size)` to a tensor of its shape.
        state_synthesizer: for `"dni"`, a layer mapping the fast output
            `(batch, fast output size)` to a tensor of its shape.
        sg_loss_weight: factor on the synthesizer losses; >= 0.
        **kwargs: base model arguments (`name`).

    Example:

    ```python
    model = keras_sg.models.ClockedPairModel(
        keras.layers.LSTMCell(64), keras.layers.LSTMCell(32), period=4,
        output=keras.layers.Dense(10), method="dni",
        message_synthesizer=keras_sg.DenseSynthesizer(hidden_layers=0),
        state_synthesizer=keras_sg.DenseSynthesizer(hidden_layers=0),
    )
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(True))
    model.fit(x, y, batch_size=32)  # x: (n, time, features), y: (n, time)
    ```
    """

    def __init__(
        self,
        fast_cell,
        slow_cell,
        period: int,
        output,
        method: str = "dni",
        message_synthesizer=None,
        state_synthesizer=None,
        sg_loss_weight: float = 1.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_method(method, CLOCK_METHODS)
        check_int("period", period, 1)
        self.period = period
        self.method = method
        self.sg_loss_weight = check_weight("sg_loss_weight", sg_loss_weight)
        self.fast_cell = _check_cell("fast_cell", fast_cell)
        self.slow_cell = _check_cell("slow_cell", slow_cell)
        if not isinstance(output, keras.layers.Layer):
            raise TypeError(
                f"`output` must be a Keras layer. Received: {type(output).__name__}"
            )
        self.output_layer = output
        self.fast_size = _output_size(self.fast_cell)
        self.message_size = _output_size(self.slow_cell)
        needed = method == "dni"
        self.message_synthesizer = _check_synth(
            "message_synthesizer", message_synthesizer, needed, method
        )
        self.state_synthesizer = _check_synth(
            "state_synthesizer", state_synthesizer, needed, method
        )
        self.message_sg_tracker = (
            keras.metrics.Mean(name="message_sg_loss") if needed else None
        )
        self.state_sg_tracker = (
            keras.metrics.Mean(name="state_sg_loss") if needed else None
        )
        self._input_shape = None

    # ------------------------------------------------------------------ setup

    def _synthesizer_layers(self):
        if self.method != "dni":
            return []
        return [self.message_synthesizer, self.state_synthesizer]

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) != 3:
            raise ValueError(
                "ClockedPairModel expects sequences of shape (batch, time, "
                f"features). Received: input shape {input_shape}"
            )
        batch, features = input_shape[0], input_shape[2]
        if features is None:
            raise ValueError(
                "ClockedPairModel needs a known number of features. Received: "
                f"input shape {input_shape}"
            )
        if self._input_shape is not None and self._input_shape[2] != features:
            raise ValueError(
                f"ClockedPairModel was built for {self._input_shape[2]} "
                f"features per step. Received: input shape {input_shape}"
            )
        self._input_shape = (None, None, features)
        if not self.fast_cell.built:
            self.fast_cell.build((batch, features + self.message_size))
        if not self.slow_cell.built:
            self.slow_cell.build((batch, self.fast_size))
        if not self.output_layer.built:
            self.output_layer.build((batch, None, self.fast_size))
        for name, size in (
            ("message_synthesizer", self.message_size),
            ("state_synthesizer", self.fast_size),
        ):
            synth = getattr(self, name)
            if synth is None:
                continue
            build_synthesizer(name, synth, (batch, size))
        self.built = True

    def build_for(self, x):
        """Builds every part from a batch, if unbuilt; checks the batch's shape."""
        shape = tuple(x.shape)
        if not self.built:
            self.build(shape)
        self.blocks(shape)

    def blocks(self, shape) -> int:
        """N, the number of blocks of `period` steps in a `(batch, time, features)`
        shape, after checking the shape."""
        if len(shape) != 3:
            raise ValueError(
                "ClockedPairModel expects sequences of shape (batch, time, "
                f"features). Received: x of shape {tuple(shape)}"
            )
        time, features = shape[1], shape[2]
        if self._input_shape is not None and features != self._input_shape[2]:
            raise ValueError(
                f"ClockedPairModel was built for {self._input_shape[2]} "
                f"features per step. Received: x of shape {tuple(shape)}"
            )
        if time is None or time % self.period or time < 2 * self.period:
            raise ValueError(
                "ClockedPairModel needs a static time axis, a multiple of "
                f"period={self.period} and at least 2 * period (one slow tick "
                f"that the fast network reads). Received: time={time}"
            )
        return time // self.period

    # ---------------------------------------------------------------- forward

    def call(self, inputs, training=None):
        x = tf.convert_to_tensor(inputs)
        self.build_for(x)
        return self.unroll(x, training=training)["y_pred"]

    def unroll(self, x, training=None, cut=False, watch=None):
        """Runs both networks over whole sequences, by `tick_schedule`.

        Args:
            x: `(batch, time, features)`.
            training: the mode of dropout and batch normalisation.
            cut: stop the gradient at both interfaces (`"dni"`): the fast
                network reads `stop_gradient(m_b)`, the slow one
                `stop_gradient(h_{bK})`.
            watch: an optional function `watch(kind, tensor)` called on each
                tensor that crosses an interface, as the receiving network
                reads it (`kind` is `"tick"` or `"message"`), so that a tape
                can take gradients with respect to it.

        Returns:
            A dict: `y_pred` `(batch, time, ...)`, `fast_outputs` (h_t, one
            per step), `ticks` (h_{bK} as the slow network reads it, one per
            slow tick), `messages` (m_b as the slow network returns it) and
            `messages_read` (m_b as the fast network reads it).
        """
        x = tf.cast(x, tf.float32)
        time = x.shape[1]
        batch = tf.shape(x)[0]
        fast_state = keras.tree.flatten(self.fast_cell.get_initial_state(batch))
        slow_state = keras.tree.flatten(self.slow_cell.get_initial_state(batch))
        message = tf.zeros((batch, self.message_size), x.dtype)
        out = {"fast_outputs": [], "ticks": [], "messages": [], "messages_read": []}
        for t, who in enumerate(tick_schedule(time, self.period)):
            h, fast_state = self.fast_cell(
                tf.concat([x[:, t], message], axis=-1), fast_state, training=training
            )
            fast_state = keras.tree.flatten(fast_state)
            out["fast_outputs"].append(h)
            if "slow" not in who:
                continue
            tick = tf.stop_gradient(h) if cut else tf.identity(h)
            if watch is not None:
                watch("tick", tick)
            m, slow_state = self.slow_cell(tick, slow_state, training=training)
            slow_state = keras.tree.flatten(slow_state)
            message = tf.stop_gradient(m) if cut else tf.identity(m)
            if watch is not None:
                watch("message", message)
            out["ticks"].append(tick)
            out["messages"].append(m)
            out["messages_read"].append(message)
        hs = tf.stack(out["fast_outputs"], axis=1)
        out["y_pred"] = self.output_layer(hs, training=training)
        return out

    def _unrolled_loss(self, x, y, sample_weight=None, training=None, **kwargs):
        """`unroll(x, training, **kwargs)` and the compiled loss on its
        predictions: `(outputs, loss)`. Run it under the tapes that need
        the loss."""
        out = self.unroll(x, training=training, **kwargs)
        loss = self.compute_loss(
            x=x,
            y=y,
            y_pred=out["y_pred"],
            sample_weight=sample_weight,
            training=training,
        )
        return out, loss

    # ----------------------------------------------------------------- train

    @property
    def fast_variables(self):
        """The fast network's trainable variables: its cell and `output`."""
        return self.fast_cell.trainable_variables + (
            self.output_layer.trainable_variables
        )

    @property
    def slow_variables(self):
        return self.slow_cell.trainable_variables

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x = tf.convert_to_tensor(x)
        self.build_for(x)
        if self.method == "bptt":
            result = self.bptt_gradients(x, y, sample_weight)
        else:
            result = self.dni_gradients(x, y, sample_weight)

        # Update weights: one optimizer step for both networks.
        self._apply(result["gradients"])

        self._loss_tracker.update_state(
            result["loss"] / steps.replica_fraction(), sample_weight=tf.shape(x)[0]
        )
        metrics = self.compute_metrics(x, y, result["y_pred"], sample_weight)
        if self.method == "dni":
            for tracker, key in (
                (self.message_sg_tracker, "message_sg_losses"),
                (self.state_sg_tracker, "state_sg_losses"),
            ):
                tracker.update_state(tf.add_n(result[key]) / len(result[key]))
                metrics[tracker.name] = tracker.result()
        return metrics

    def bptt_gradients(self, x, y, sample_weight=None):
        """Full BPTT through both networks: the reference.

        Returns a dict: `gradients` (from `id(variable)` to its gradient,
        times the loss scale), `loss`, `y_pred`.
        """
        loss_scale = steps.loss_scale(self.optimizer)
        variables = self.fast_variables + self.slow_variables
        with tf.GradientTape() as tape:
            out, loss = self._unrolled_loss(x, y, sample_weight, training=True)
            scaled = loss * loss_scale
        grads = tape.gradient(scaled, variables)
        return {
            "gradients": _by_id(variables, grads),
            "loss": loss,
            "y_pred": out["y_pred"],
        }

    def dni_gradients(self, x, y, sample_weight=None):
        """The gradients of one `"dni"` step, unapplied.

        One interleaved forward pass under two tapes. The fast tape watches
        the fast network's variables and the messages it reads; the slow
        tape the slow network's variables and the fast outputs it reads.
        Both interfaces are cut (`unroll(cut=True)`), so the slow tape never
        records the loss: the slow gradient is the pullback of the
        synthetic message gradients M(m_b) alone. The fast gradient is the
        pullback of L plus the synthetic gradients S(h_{bK}) at the ticks.
        Each pullback's gradient at its interface inputs is the
        bootstrapped target of the other side's synthesizer.

        Returns a dict: `gradients` (from `id(variable)` to its gradient,
        times the loss scale), `loss`, `y_pred`, `fast_gradients` and
        `slow_gradients` (lists in the order of `fast_variables` and
        `slow_variables`), `message_synthetic` / `state_synthetic` and
        `message_targets` / `state_targets` (one per tick, per-example
        scale), `message_sg_losses` and `state_sg_losses`.
        """
        blocks = self.blocks(tuple(x.shape))
        scale = steps.global_batch_size(x) * blocks
        share = steps.replica_fraction()
        loss_scale = steps.loss_scale(self.optimizer)
        fast_vars = [getattr(v, "value", v) for v in self.fast_variables]
        slow_vars = [getattr(v, "value", v) for v in self.slow_variables]
        fast_tape = tf.GradientTape(watch_accessed_variables=False, persistent=True)
        slow_tape = tf.GradientTape(watch_accessed_variables=False, persistent=True)

        def watch(kind, tensor):
            # A message is read by the fast network, a tick by the slow one.
            (fast_tape if kind == "message" else slow_tape).watch(tensor)

        with fast_tape, slow_tape:
            fast_tape.watch(fast_vars)
            slow_tape.watch(slow_vars)
            out, loss = self._unrolled_loss(
                x, y, sample_weight, training=True, cut=True, watch=watch
            )
        ticks, messages, read = out["ticks"], out["messages"], out["messages_read"]

        # The synthetic gradients, each on a tape of its own for its regression.
        synth_m, pull_m = self._synthesize(self.message_synthesizer, messages)
        synth_s, pull_s = self._synthesize(self.state_synthesizer, ticks)

        # Fast update: L with the messages fixed, plus S(h_bK) at the ticks.
        fast_out = [
            out["fast_outputs"][(b + 1) * self.period - 1] for b in range(len(ticks))
        ]
        fast_grads = fast_tape.gradient(
            [loss, *fast_out],
            fast_vars + read,
            output_gradients=[
                loss_scale,
                *(steps.stage_cotangent(g, scale, loss_scale) for g in synth_s),
            ],
            unconnected_gradients=tf.UnconnectedGradients.ZERO,
        )
        # Slow update: M(m_b) on its messages; it never sees L.
        slow_grads = slow_tape.gradient(
            messages,
            slow_vars + ticks,
            output_gradients=[
                steps.stage_cotangent(g, scale, loss_scale) for g in synth_m
            ],
            unconnected_gradients=tf.UnconnectedGradients.ZERO,
        )
        nf, ns = len(fast_vars), len(slow_vars)
        result = {
            "loss": loss,
            "y_pred": out["y_pred"],
            "fast_gradients": fast_grads[:nf],
            "slow_gradients": slow_grads[:ns],
            "message_synthetic": synth_m,
            "state_synthetic": synth_s,
            "message_targets": [
                steps.bootstrapped_target(g, scale, loss_scale) for g in fast_grads[nf:]
            ],
            "state_targets": [
                steps.bootstrapped_target(g, scale, loss_scale) for g in slow_grads[ns:]
            ],
        }
        grads = _by_id(self.fast_variables, result["fast_gradients"])
        grads.update(_by_id(self.slow_variables, result["slow_gradients"]))
        weight = self.sg_loss_weight * share * loss_scale / len(ticks)
        for kind, synth, pulls in (
            ("message", self.message_synthesizer, pull_m),
            ("state", self.state_synthesizer, pull_s),
        ):
            losses = []
            for g, target, pull in zip(
                result[f"{kind}_synthetic"],
                result[f"{kind}_targets"],
                pulls,
                strict=True,
            ):
                sg_loss, d = steps.synthesizer_loss(g, target)
                _, synth_grads = pull((d * weight,))
                accumulate(grads, synth.trainable_variables, synth_grads)
                losses.append(sg_loss)
            result[f"{kind}_sg_losses"] = losses
        result["gradients"] = grads
        return result

    def _synthesize(self, synth, inputs):
        values, pulls = [], []
        for tensor in inputs:
            (g,), pull = steps.vjp(
                lambda s, synth=synth: (synth(s, training=True),),
                tensor,
                synth.trainable_variables,
                watch_inputs=False,
            )
            values.append(tf.cast(g, tf.float32))
            pulls.append(pull)
        return values, pulls

    def interface_gradients(self, x, y, sample_weight=None, training=False):
        """The true gradients at both interfaces, by full BPTT, on one batch.

        Returns `(messages, states)`: at every slow tick b, B * N * dL/dm_b
        (through everything after m_b) and B * N times the gradient of L
        through the slow network at h_{bK}: what oracle synthesizers return.
        """
        x = tf.convert_to_tensor(x)
        self.build_for(x)
        scale = steps.global_batch_size(x) * self.blocks(tuple(x.shape))
        with tf.GradientTape(persistent=True) as tape:
            out, loss = self._unrolled_loss(
                x,
                y,
                sample_weight,
                training=training,
                watch=lambda kind, t: tape.watch(t),
            )
        messages = tape.gradient(loss, out["messages_read"])
        states = tape.gradient(loss, out["ticks"])
        return (
            [steps.bootstrapped_target(g, scale) for g in messages],
            [steps.bootstrapped_target(g, scale) for g in states],
        )

    def test_step(self, data):
        logs = super().test_step(data)
        return {k: v for k, v in logs.items() if not k.endswith("sg_loss")}

    # ------------------------------------------------------------ serializing

    def get_config(self):
        config = super().get_config()
        serialize = keras.saving.serialize_keras_object
        config.update(
            {
                "fast_cell": serialize(self.fast_cell),
                "slow_cell": serialize(self.slow_cell),
                "period": self.period,
                "output": serialize(self.output_layer),
                "method": self.method,
                "message_synthesizer": serialize(self.message_synthesizer),
                "state_synthesizer": serialize(self.state_synthesizer),
                "sg_loss_weight": self.sg_loss_weight,
                "input_shape": self._input_shape,
            }
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        keys = (
            "fast_cell",
            "slow_cell",
            "output",
            "message_synthesizer",
            "state_synthesizer",
        )
        config = deserialize_layers(config, keys, custom_objects)
        input_shape = config.pop("input_shape", None)
        model = cls(**config)
        if input_shape is not None:
            model.build(tuple(input_shape))
        return model


def _check_cell(name, cell):
    if isinstance(cell, keras.layers.RNN) or not isinstance(cell, keras.layers.Layer):
        raise TypeError(
            f"`{name}` must be a Keras RNN cell (such as keras.layers.LSTMCell), "
            f"not a layer over sequences. Received: {name} of type "
            f"{type(cell).__name__}"
        )
    if not hasattr(cell, "state_size") or not hasattr(cell, "get_initial_state"):
        raise TypeError(
            f"`{name}` must be a Keras RNN cell with `state_size` and "
            f"`get_initial_state`. Received: {name} of type {type(cell).__name__}"
        )
    return cell


def _output_size(cell):
    size = getattr(cell, "output_size", None)
    if size is None:
        size = keras.tree.flatten(cell.state_size)[0]
    if isinstance(size, bool) or not isinstance(size, int):
        raise ValueError(
            f"The cell '{cell.name}' must have a vector output (an integer "
            f"output_size). Received: output_size={size!r}"
        )
    return size


def _check_synth(name, synth, needed, method):
    return check_synthesizer(
        "ClockedPairModel",
        name,
        synth,
        needed,
        method,
        "a layer that maps the interface's tensor to a gradient of its shape",
    )


def _by_id(variables, grads):
    return {id(v): g for v, g in zip(variables, grads, strict=True)}
