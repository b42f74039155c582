"""Stage 5, export: integer TFLite files that realize a plan.

Two backends behind :func:`export_tflite` (``backend=``):

* ``"exact"``: tfprec's own writer. Modules: :mod:`~tfprec.export.tflite`
  (the public API), ``formats`` (plan -> fixed-point formats, rounding per
  kernel family), ``flatbuffer`` (the LiteRT schema writer), ``lower`` and ``lower_ops``
  (graph -> TFLite operators), ``checks`` (read-back through the LiteRT interpreter)
  and ``report``.
* ``"ai_edge_quantizer"`` (``"aeq"``): Google's AI Edge Quantizer recipes
  over a ``TFLiteConverter`` float file (``aeq``, ``aeq_recipe``,
  ``aeq_report``), for any model tfprec analyses; ``runtime`` runs files
  under each LiteRT kernel family and times them.

``running`` has :func:`tflite_predict` and :func:`agreement` for files of
either backend.

``"auto"`` (the default) uses the exact writer wherever it can express the
model, else AI Edge Quantizer.
"""
from tfprec.export.tflite import (ExportReport, LayerExport, agreement,
                                  export_tflite, simulate_plan, tflite_predict)
from tfprec.export.aeq import export_aeq, read_metadata
from tfprec.export.aeq_report import AeqExportReport
