"""Export of trained models: float ONNX, int8 QDQ ONNX, float and int8 TFLite (see ``export.py``)."""
from stmclf.export.export import ExportResult, ExportSettings, export_mode, export_run, quantization_mode

__all__ = ["ExportResult", "ExportSettings", "export_mode", "export_run", "quantization_mode"]
