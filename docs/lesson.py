# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Synthetic gradients: the lesson
#
# (Introduction: owned by lessonA.)

# %%
# Setup: the setting (small in CI, full for the committed outputs), and the
# logical devices, which must be made before TensorFlow starts.
import os

SETTING = os.environ.get("KERAS_SG_LESSON_SETTING", "full")
if SETTING not in ("small", "full"):
    raise ValueError(
        "KERAS_SG_LESSON_SETTING must be 'small' or 'full'. "
        f"Received: KERAS_SG_LESSON_SETTING={SETTING!r}"
    )
SMALL = SETTING == "small"

# %% [markdown]
# ## 1. Ways to scale training
#
# (lessonA)

# %% [markdown]
# ## 2. The three locks of backpropagation
#
# (lessonA)

# %% [markdown]
# ## 3. The math on a three-layer network
#
# (lessonA)

# %% [markdown]
# ## 4. The demo: MNIST with backprop, DNI and cDNI
#
# (lessonB)

# %% [markdown]
# ## 5. When it pays
#
# (lessonB)

# %% [markdown]
# ## 6. Limits
#
# (lessonB)

# %% [markdown]
# ## 7. Take-home: cDNI, the fully decoupled network, clocks
#
# (lessonA)
