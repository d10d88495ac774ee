"""Reading image files into the ``uint8`` tensors exptorch trains and predicts on.

One function, :func:`load_image`, used by the ``folder`` dataset when it decodes
its images and by ``expt predict`` for new ones, so both see a file the same way:

* EXIF orientation is applied (phone photos come out upright);
* transparency (RGBA, LA, PA, and palette, grey or RGB images with a transparent
  colour) is composited over a white background;
* 16-bit and 32-bit greyscale is scaled to 0-255; CMYK is converted to RGB;
* the result has the channels the model expects: ``L`` (1 channel, ITU-R 601-2
  luma) or ``RGB`` (3 channels, grey repeated);
* it is resized to ``(height, width)`` with Pillow's bilinear filter (which
  antialiases when shrinking), stretching rather than cropping, like
  torchvision's ``Resize((height, width))``.

Only regular files are opened (a FIFO or a device would block or never end), and
an image larger than Pillow's ``MAX_IMAGE_PIXELS`` (about 89 megapixels) is
refused before it is decoded, as a possible decompression bomb.

Pillow and numpy are imported inside the functions, as is torch.
"""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exptorch.errors import ExptError, describe, first_line

if TYPE_CHECKING:
    import torch

#: File name endings treated as images when a folder is read (as torchvision's ImageFolder).
IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif",
)  # fmt: skip
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


def is_image_file(path: Path) -> bool:
    """Whether ``path`` is a file with an image ending (:data:`IMAGE_EXTENSIONS`)."""
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def _flatten(img: Any, mode: str) -> Any:
    """Convert a Pillow image of any mode to ``L`` or ``RGB``."""
    import numpy as np
    from PIL import Image

    if img.mode == "F" or img.mode.split(";")[0] == "I":  # 32-bit, or 16-bit of any byte order
        values = np.asarray(img, dtype=np.float64)
        top = 255.0 if values.max(initial=0) <= 255 else 65535.0
        img = Image.fromarray(np.clip(values * (255.0 / top), 0, 255).round().astype(np.uint8))
    if img.mode in ("P", "L", "RGB") and "transparency" in img.info:  # a transparent colour
        img = img.convert("RGBA")
    if img.mode == "La":  # premultiplied (a TIFF's associated alpha): Pillow only makes it LA
        img = img.convert("LA")
    if img.mode in ("RGBA", "LA", "RGBa", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert(mode)


def load_image(path: Path, *, channels: int, height: int, width: int) -> torch.Tensor:
    """Read one image file as a ``uint8`` tensor of shape ``(channels, height, width)``.

    Raises :class:`ExptError` naming the file when it is not an image Pillow can
    read or it is truncated.
    """
    import numpy as np
    import torch
    from PIL import Image, ImageOps, UnidentifiedImageError

    if channels not in (1, 3):
        raise ExptError(f"Images can be read with 1 or 3 channels, not {channels}.")
    try:
        with _open_regular(path) as fh, warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; refuse it all.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fh) as img:
                img.load()
                upright = ImageOps.exif_transpose(img)
                flat = _flatten(upright, "L" if channels == 1 else "RGB")
                resized = flat.resize((width, height), Image.Resampling.BILINEAR)
    except FileNotFoundError:
        raise ExptError(f"{path} does not exist.") from None
    except IsADirectoryError:
        raise ExptError(f"{path} is a folder, not an image file.") from None
    except UnidentifiedImageError:
        raise ExptError(f"{path} is not an image file Pillow can read.") from None
    except PermissionError:
        raise ExptError(f"{path} cannot be read (permission denied).") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ExptError(
            f"{path} is too large to decode safely (over {Image.MAX_IMAGE_PIXELS:,} pixels, "
            "Pillow's limit against decompression bombs); shrink it first."
        ) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ExptError(f"{path} is truncated or damaged ({first_line(exc)}).") from None
    except ExptError:
        raise
    except Exception as exc:  # Pillow's decoders raise many types on hostile input
        raise ExptError(f"{path} could not be decoded ({describe(exc)}).") from None
    array = np.array(resized, dtype=np.uint8)
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return torch.from_numpy(array.copy())


def _open_regular(path: Path) -> Any:
    """``path`` opened for reading in binary, if it is a regular file; else ``ExptError``.

    Opened without blocking and checked on the open descriptor, so a FIFO (which
    would wait for a writer forever) or a device is refused, even one swapped in
    after a check by name.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(path)
        if not stat.S_ISREG(mode):
            raise ExptError(
                f"{path} is not a regular file (a FIFO, socket or device), so it is not read."
            )
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def is_greyscale(path: Path) -> bool:
    """Whether an image file is stored as greyscale (used to pick 1 or 3 channels)."""
    from PIL import Image

    try:
        with _open_regular(path) as fh, Image.open(fh) as img:
            return img.mode in GREY_MODES
    except Exception:
        return False  # load_image reports the file properly
