"""stmclf: train STM32 image classifiers with PyTorch Lightning from ST model-zoo YAML configs."""

__version__ = "0.1.0"
