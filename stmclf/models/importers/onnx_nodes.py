"""Namespace of the per-op node classes of converted ONNX graphs (``Conv``, ``Relu``, ...).

:mod:`stmclf.models.importers.onnx_graph` creates one subclass of its ``OnnxNode`` per ONNX op
type on demand and registers it here under the op's name, so that a layer's type reads as the
ONNX op in ``stmclf summary`` and the classes stay importable (deep copies, pickling).
"""
