"""Shared test setup.

``import tfprec`` first: it sets TF_USE_LEGACY_KERAS=1 before TensorFlow loads.
``tfprec.cli`` next: its absl flags are then defined before any example
script (imported by test_examples.py) declares flags of the same names, which
the examples skip when they already exist, whatever order pytest collects in.
"""
import tfprec  # noqa: F401
import tfprec.application.cli  # noqa: F401
