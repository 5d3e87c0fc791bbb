"""Photos as viewers show them: the EXIF Orientation tag, read once the same way everywhere.

Phones store the sensor's pixels and an EXIF tag saying how to turn them (1-8, as in the
EXIF standard). Every viewer applies it, so masks are drawn on the turned photo. prepare
records sizes as displayed and compares masks with that; the training decoder, evaluate and
predict turn the pixels the same way (:func:`segbalance.pipeline.decode.decode_image`).
"""

from __future__ import annotations

from PIL import Image, UnidentifiedImageError

#: The EXIF tag holding the orientation.
ORIENTATION_TAG = 0x0112
#: Orientations that swap height and width (the transposing and 90-degree ones).
SWAPPING = (5, 6, 7, 8)


def orientation(image: Image.Image) -> int:
    """The EXIF orientation of an opened image, 1 (as stored) when absent or invalid."""
    try:
        value = int(image.getexif().get(ORIENTATION_TAG, 1))
    except (ValueError, TypeError, OSError, SyntaxError):  # a damaged EXIF block
        return 1
    return value if 1 <= value <= 8 else 1


def read_orientation(path: str) -> int:
    """The EXIF orientation of the file at ``path`` (header only); 1 if it cannot be read.

    A file that cannot be opened is reported by whoever decodes it; this only turns it.
    """
    try:
        with Image.open(path) as image:
            return orientation(image)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
        return 1


def displayed_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) as a viewer shows ``image``."""
    if orientation(image) in SWAPPING:
        return image.height, image.width
    return image.width, image.height
