"""Stage 5, export: integer TFLite files that realize a plan.

Modules: :mod:`~tfprec.export.tflite` (the public API), ``formats`` (plan ->
fixed-point formats, rounding per kernel family), ``flatbuffer`` (the LiteRT
schema writer), ``lower`` (graph -> TFLite operators), ``checks`` (read-back
through the LiteRT interpreter) and ``report``.
"""
from tfprec.export.tflite import (ExportReport, LayerExport, agreement,
                                  export_tflite, simulate_plan, tflite_predict)
