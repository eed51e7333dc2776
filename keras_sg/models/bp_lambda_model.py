"""A decoupled model that mixes backpropagated and synthetic gradients: BP(lambda)."""

import keras

from keras_sg.models import steps, unlocked_steps
from keras_sg.models.decoupled_model import DecoupledModel


@keras.saving.register_keras_serializable(package="keras_sg")
class BPLambdaModel(DecoupledModel):
    """DNI or cDNI whose stages follow a mixture of true and synthetic gradients.

    BP(lambda) (Jaderberg et al. 2016, arXiv:1608.05343, Appendix A): at each
    cut k, from the top down, the gradient sent into the stage below is

        m_k = lambda * b_k + (1 - lambda) * g_k / B,

    where g_k is the synthesizer's (per-example) prediction, B the global
    batch size, and b_k the gradient backpropagated from above: the true loss
    gradient at the top cut, and below it the pullback of stage k+1 with the
    mixture m_{k+1}. lambda = 1 is backprop's update exactly; lambda = 0 is
    DNI's exactly. Like TD(lambda) between Monte Carlo returns and one-step
    bootstrapping, lambda trades the bias of synthetic gradients for the
    locking of true ones: for lambda > 0 a stage waits for the backward pass
    of every stage above it.

    Synthesizers keep DNI's bootstrapped regression: the synthesizer at cut k
    regresses B * b_k, the gradient the stage above actually sends down (the
    true gradient at the top cut). At lambda = 0 this is DNI's target; at
    lambda = 1 it is the true gradient at every cut.

    Args:
        network: as for `DecoupledModel`.
        synthesizers: one per interface, as for `DecoupledModel`.
        bp_lambda: the weight of the backpropagated gradient, in [0, 1].
        method: `"dni"` or `"cdni"`; BP(lambda) needs synthesizers.
        **kwargs: the other arguments of `DecoupledModel`, but
            `sg_target="bootstrap"` only.

    Example:

    ```python
    model = keras_sg.BPLambdaModel(
        net, synthesizers=[keras_sg.DenseSynthesizer(hidden_layers=0)], bp_lambda=0.5
    )
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ```
    """

    def __init__(
        self,
        network,
        synthesizers=None,
        bp_lambda: float = 0.5,
        method: str = "dni",
        **kwargs,
    ):
        if method not in ("dni", "cdni"):
            raise ValueError(
                "BPLambdaModel mixes true and synthetic gradients, so it needs "
                "method='dni' or method='cdni' (for plain backprop, use "
                "bp_lambda=1.0 or DecoupledModel). "
                f"Received: method={method!r}"
            )
        if kwargs.get("sg_target", "bootstrap") != "bootstrap":
            raise ValueError(
                "BPLambdaModel trains its synthesizers on the gradient the "
                "stage above sends down; it takes sg_target='bootstrap' only. "
                f"Received: sg_target={kwargs['sg_target']!r}"
            )
        try:
            value = float(bp_lambda)
        except (TypeError, ValueError):
            value = float("nan")
        if isinstance(bp_lambda, bool) or not 0.0 <= value <= 1.0:
            raise ValueError(
                "`bp_lambda` must be a number in [0, 1]. "
                f"Received: bp_lambda={bp_lambda!r}"
            )
        self.bp_lambda = value
        super().__init__(network, synthesizers=synthesizers, method=method, **kwargs)

    def _decoupled_gradients(
        self, activations, pullbacks, true_grad, context, scale, share, loss_scale
    ):
        """Stage gradients from the BP(lambda) mixtures; synthesizer gradients
        from their regressions.

        Returns a dict from `id(variable)` to its gradient, every one carrying
        `loss_scale` as `true_grad` does, and the synthesizer losses, lowest
        cut first.
        """
        grads = {}
        synthetic, synth_pullbacks = self._synthetic_gradients(activations, context)

        # From the top cut down: mix, pull the stage below back with the
        # mixture, and pass what it sends down to the cut below.
        targets = [None] * len(synthetic)
        from_above = true_grad
        for k in reversed(range(len(synthetic))):
            targets[k] = steps.bootstrapped_target(from_above, scale, loss_scale)
            stage = self.stages[k]
            with self._on(k):
                mixture = unlocked_steps.bp_lambda_mixture(
                    from_above, synthetic[k] * loss_scale, self.bp_lambda, scale
                )
                from_above, stage_grads = pullbacks[k]((mixture, loss_scale))
            grads.update(
                zip(map(id, stage.trainable_variables), stage_grads, strict=True)
            )

        synth_grads, sg_losses = self._regress_synthesizers(
            synthetic, synth_pullbacks, targets, share, loss_scale
        )
        grads.update(synth_grads)
        return grads, sg_losses

    def get_config(self):
        config = super().get_config()
        config.update({"bp_lambda": self.bp_lambda})
        return config
