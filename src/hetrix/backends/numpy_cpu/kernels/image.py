"""ImageDecoder: compressed image bytes to an HWC uint8 array, through Pillow (optional)."""

from __future__ import annotations

import io

import numpy as np

from hetrix.backends.numpy_cpu.kernels._common import NodeContext, kernel


@kernel("ImageDecoder", since=20)
def image_decoder(ctx: NodeContext, encoded: np.ndarray) -> np.ndarray:
    """Decode JPEG/PNG/BMP/TIFF/WebP/PNM/JPEG2000 bytes into RGB, BGR or grayscale pixels."""
    try:
        from PIL import Image
    except ImportError as exc:  # Pillow is an optional dependency: say how to get it
        raise RuntimeError("ImageDecoder needs Pillow: pip install pillow") from exc
    pixel_format = ctx.attrs.get("pixel_format", "RGB")
    with Image.open(io.BytesIO(np.ascontiguousarray(encoded, np.uint8).tobytes())) as image:
        if pixel_format == "Grayscale":
            return np.asarray(image.convert("L"), dtype=np.uint8)[:, :, np.newaxis]
        pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
    if pixel_format == "BGR":
        return np.ascontiguousarray(pixels[:, :, ::-1])
    if pixel_format != "RGB":
        raise ValueError(f"ImageDecoder pixel_format must be RGB, BGR or Grayscale: {pixel_format}")
    return pixels
