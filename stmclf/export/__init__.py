"""Export of trained models: float ONNX, int8 QDQ ONNX, float and int8 TFLite (see ``export.py``)."""
from stmclf.export.export import ExportResult, ExportSettings, export_run, quantizer_formats

__all__ = ["ExportResult", "ExportSettings", "export_run", "quantizer_formats"]
