"""A decoupled model whose stages update at random: stochastic updates."""

import keras
import tensorflow as tf

from keras_sg.models.decoupled_model import DecoupledModel

_MAX_SEED = 2**31 - 1


@keras.saving.register_keras_serializable(package="keras_sg")
class StochasticUpdateModel(DecoupledModel):
    """DNI or cDNI in which each stage updates at a step with probability p.

    Jaderberg et al. (2016, arXiv:1608.05343, Section 3.1) show that with
    synthetic gradients a network still learns when each layer updates only
    at random, rarely: no layer needs another to have updated in the same
    step. Here every stage, the top one included ("each layer updates with
    probability p"), is drawn independently at each step; the synthesizer at
    the output of stage k updates when stage k does, since it is stage k's
    own gradient model. A stage that is not drawn gets no update at all:
    its weights, its optimizer slots (Adam's moments, an EMA) and weight
    decay are left as they were, not fed a zero gradient, which would move
    Adam by its momentum and shrink weights under weight decay.

    The draws are `tf.random.stateless_uniform((num_stages,),
    seed=(seed, step)) < update_probability`, where `step` is the
    optimizer's `iterations` before the step (see `update_mask`). They
    depend on nothing else, so a run is reproduced by its seed, and a model
    saved and loaded (optimizer included) resumes the same sequence. With
    `update_probability=1.0` every draw is true and the update is plain
    DNI's (cDNI's), exactly.

    One optimizer step runs per training step, over every variable: Adam's
    bias correction and learning-rate schedules count training steps, not a
    stage's own updates. The stages not drawn get zero gradients (so a
    global clipping norm is that of the drawn stages), and afterwards their
    weights and their slots are set back. This needs to know each variable's
    slots, which Keras's own optimizers name after the variable; other
    optimizers are refused.

    The synthetic gradients, targets and losses are computed for every cut at
    every step (the graph is static); `fit` logs the synthesizer loss of a
    cut over the steps in which it updated. Every stage runs forward at
    every step, so batch-normalisation statistics (not trainable) follow
    the forward pass in every stage, drawn or not.

    Args:
        network: as for `DecoupledModel`.
        synthesizers: one per interface, as for `DecoupledModel`.
        update_probability: p, in (0, 1].
        seed: an integer in [0, 2**31 - 1] keying the draws.
        method: `"dni"` or `"cdni"`.
        **kwargs: the other arguments of `DecoupledModel`.

    Example:

    ```python
    model = keras_sg.StochasticUpdateModel(
        net,
        synthesizers=[keras_sg.DenseSynthesizer(hidden_layers=0)],
        update_probability=0.2,
        seed=0,
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    ```
    """

    def __init__(
        self,
        network,
        synthesizers=None,
        update_probability: float = 0.5,
        seed: int = 0,
        method: str = "dni",
        **kwargs,
    ):
        if method not in ("dni", "cdni"):
            raise ValueError(
                "StochasticUpdateModel updates stages from their synthetic "
                "gradients, so it needs method='dni' or method='cdni'. "
                f"Received: method={method!r}"
            )
        try:
            p = float(update_probability)
        except (TypeError, ValueError):
            p = float("nan")
        if isinstance(update_probability, bool) or not 0.0 < p <= 1.0:
            raise ValueError(
                "`update_probability` must be a number in (0, 1]. "
                f"Received: update_probability={update_probability!r}"
            )
        if (
            isinstance(seed, bool)
            or not isinstance(seed, int)
            or not 0 <= seed <= _MAX_SEED
        ):
            raise ValueError(
                f"`seed` must be an integer in [0, {_MAX_SEED}]. "
                f"Received: seed={seed!r}"
            )
        self.update_probability = p
        self.seed = seed
        self._mask = None
        super().__init__(network, synthesizers=synthesizers, method=method, **kwargs)

    def update_mask(self, step):
        """Which stages update at training step `step`: a boolean `(num_stages,)`.

        A pure function of `(seed, step)`: `stateless_uniform < p`.
        """
        key = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(step, tf.int64)])
        u = tf.random.stateless_uniform((len(self.stages),), seed=key)
        return u < self.update_probability

    def _apply(self, grads):
        """One optimizer step in which only the drawn stages move.

        The stages not drawn (and their synthesizers) get zero gradients; after
        the step, their weights and optimizer slots are set back.
        """
        if tf.distribute.has_strategy():
            raise ValueError(
                "StochasticUpdateModel sets back, after each step, the weights "
                "of the stages that were not drawn, which a tf.distribute "
                "strategy's mirrored variables do not allow in a replica. "
                f"Received: strategy={type(tf.distribute.get_strategy()).__name__}"
            )
        self._build_optimizer()
        slots = self._slots()
        mask = self.update_mask(self.optimizer.iterations)
        self._mask = mask
        owner = {}
        for k, stage in enumerate(self.stages):
            for v in stage.trainable_variables:
                owner[id(v)] = k
            if k < len(self.synthesizers):
                for v in self.synthesizers[k].trainable_variables:
                    owner[id(v)] = k
        grads = {
            key: tf.where(mask[owner[key]], g, tf.zeros_like(g))
            for key, g in grads.items()
        }
        kept = [
            (mask[owner[id(v)]], var)
            for v in self.trainable_variables
            if id(v) in owner
            for var in (v, *slots.get(id(v), ()))
        ]
        # Read before the update. The update does not depend on these reads
        # through data, so say so.
        before = [tf.identity(var.value) for _, var in kept]
        with tf.control_dependencies(before):
            applied = super()._apply(grads)
        for (drawn, var), old in zip(kept, before, strict=True):
            var.assign(tf.where(drawn, var.value, old))
        return applied

    def _slots(self):
        """The optimizer variables of each trainable variable, keyed by `id`.

        Keras's optimizers name a variable's slots `<variable path>_<slot>`
        (`add_variable_from_reference`); a slot that would belong to two
        variables is an error, not a guess.
        """
        optimizer_slots = []
        for optimizer in (self.optimizer, self.synthesizer_optimizer):
            if optimizer is None:
                continue
            optimizer = getattr(optimizer, "inner_optimizer", optimizer)
            if not type(optimizer).__module__.startswith("keras."):
                raise ValueError(
                    "StochasticUpdateModel sets back the optimizer slots of the "
                    "stages that do not update, which it finds by the names "
                    "Keras's own optimizers give them. Received: optimizer="
                    f"{type(optimizer).__module__}.{type(optimizer).__name__}"
                )
            optimizer_slots.extend(optimizer.variables)
        variables = self.trainable_variables
        slots = {}
        for slot in optimizer_slots:
            owners = [
                v
                for v in variables
                if slot.name.startswith(v.path.replace("/", "_") + "_")
                and tuple(slot.shape) == tuple(v.shape)
            ]
            if len({id(v) for v in owners}) > 1:
                raise ValueError(
                    f"The optimizer variable '{slot.name}' could belong to "
                    f"several variables: {[v.path for v in owners]}. Give the "
                    "layers distinct names."
                )
            if owners:
                slots.setdefault(id(owners[0]), []).append(slot)
        return slots

    def _track_sg_losses(self, sg_losses, applied, weights=None):
        if weights is None and self._mask is not None:
            cuts = len(self.synthesizers)
            weights = tf.cast(self._mask[:cuts], tf.float32)
        super()._track_sg_losses(sg_losses, applied, weights)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"update_probability": self.update_probability, "seed": self.seed}
        )
        return config
