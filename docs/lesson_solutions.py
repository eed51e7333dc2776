"""The solution of the lesson's take-home exercise (docs/lesson.ipynb, section 7).

cDNI (Jaderberg et al. 2016, arXiv:1608.05343, Section 3.1; docs/method.md,
section 4) on the lesson's three-layer network: DNI's step, with each linear
synthesizer reading the activation and the one-hot label, `[hk, onehot(y)]`.

It lives here rather than in a hidden cell of the notebook: a hidden cell still
shows in the notebook's source (docs/lesson.py) right under the exercise, so
the answer would sit one scroll below the question. Here it is one import away,
and tests/test_lesson.py checks it against keras_sg's `method="cdni"` without
running the notebook. It depends on NumPy only and repeats the three-line
helpers of the notebook's section 3, so that it reads on its own.
"""

import numpy as np


def _pullback(inputs, outputs, grad, W):
    """Kernel, bias and input gradients of a tanh layer, given `grad` at its output."""
    dz = grad * (1 - outputs**2)
    return inputs.T @ dz, dz.sum(axis=0), dz @ W.T


def _regression(s, g, t):
    """Gradients of mean((g - t)²) w.r.t. M and c, for g = s M + c, t fixed."""
    d = 2 * (g - t) / g.size
    return s.T @ d, d.sum(axis=0)


def cdni_step(p, x, y, lr):
    """One cDNI step of the lesson's network: returns the new parameters and the loss.

    Args:
        p: the parameters, a dict of arrays: stages `W1, b1, W2, b2, W3, b3`;
            synthesizers `M1, c1, M2, c2`, where `Mk` has `units + classes`
            rows (the first `units` read hk, the last `classes` the label).
        x: a batch of inputs, `(batch, inputs)`.
        y: its integer labels, `(batch,)`.
        lr: the SGD learning rate.

    Returns:
        `(new_p, loss)`: the parameters after one SGD step, and the batch-mean
        cross-entropy before it.
    """
    batch, classes = len(x), p["W3"].shape[1]
    h1 = np.tanh(x @ p["W1"] + p["b1"])
    h2 = np.tanh(h1 @ p["W2"] + p["b2"])
    logits = h2 @ p["W3"] + p["b3"]
    z = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    loss = -np.mean(np.log(probs[np.arange(batch), y]))
    onehot = np.eye(classes)[y]
    d_logits = (probs - onehot) / batch
    # The one change from DNI: the synthesizers read the label as well.
    s1 = np.concatenate([h1, onehot], axis=1)
    s2 = np.concatenate([h2, onehot], axis=1)
    g1 = s1 @ p["M1"] + p["c1"]
    g2 = s2 @ p["M2"] + p["c2"]
    grads = {"W3": h2.T @ d_logits, "b3": d_logits.sum(axis=0)}
    t2 = batch * d_logits @ p["W3"].T
    grads["W2"], grads["b2"], back = _pullback(h1, h2, g2 / batch, p["W2"])
    t1 = batch * back
    grads["W1"], grads["b1"], _ = _pullback(x, h1, g1 / batch, p["W1"])
    grads["M1"], grads["c1"] = _regression(s1, g1, t1)
    grads["M2"], grads["c2"] = _regression(s2, g2, t2)
    return {k: v - lr * grads[k] for k, v in p.items()}, loss
