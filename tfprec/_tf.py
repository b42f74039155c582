"""The one place where tfprec selects Keras 2 and imports TensorFlow.

TFMOT (tensorflow-model-optimization) only works with Keras 2, which ships as
the ``tf_keras`` package.  ``TF_USE_LEGACY_KERAS=1`` makes ``tf.keras`` resolve
to ``tf_keras``; it must be set before TensorFlow is first imported, so every
tfprec module imports TensorFlow and Keras from here and nowhere else.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

__all__ = ["tf", "keras"]
