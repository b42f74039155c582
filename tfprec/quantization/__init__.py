"""Stages 3 and 4, quantization and validation.

* :mod:`~tfprec.quantization.quantizers`, :mod:`~tfprec.quantization.configs`:
  TFMOT fixed-point quantizers and ``QuantizeConfig`` objects;
* :mod:`~tfprec.quantization.apply`: a plan mapped onto a fake-quant model;
* :mod:`~tfprec.quantization.simulate`: the numpy float64 fixed-point
  simulation;
* :mod:`~tfprec.quantization.validate`: accuracy and measured mismatch next
  to the bound.
"""
