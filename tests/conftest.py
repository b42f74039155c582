"""Imports tfprec first so TF_USE_LEGACY_KERAS=1 is set before TensorFlow loads."""
import tfprec  # noqa: F401
