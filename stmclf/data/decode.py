"""Decode image files to uint8 HWC arrays in the configured colour mode.

JPEG, PNG, BMP and GIF (first frame), as TensorFlow's ``decode_image`` reads them: grayscale
gives 1 channel (ITU-R 601 luma), rgb 3 (alpha dropped, grey replicated), rgba 4.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from stmclf.errors import UserError

PIL_MODES = {"grayscale": "L", "rgb": "RGB", "rgba": "RGBA"}
CHANNELS = {"grayscale": 1, "rgb": 3, "rgba": 4}


def decode_image(path: str, color_mode: str = "rgb") -> np.ndarray:
    """Read ``path`` into a uint8 array of shape (H, W, C)."""
    try:
        with Image.open(path) as image:
            image.seek(0)
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                image = image.point(lambda v: v / 256).convert("L")
            array = np.asarray(image.convert(PIL_MODES[color_mode]))
    except (OSError, ValueError, SyntaxError) as exc:
        raise UserError(f"unable to read image file {path}: {exc}") from None
    if array.ndim == 2:
        array = array[:, :, None]
    return array
