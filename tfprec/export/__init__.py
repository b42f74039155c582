"""Stage 5, export: integer TFLite files that realize a plan."""
from tfprec.export.tflite import (ExportReport, LayerExport, agreement,
                                  export_tflite, simulate_plan, tflite_predict)
