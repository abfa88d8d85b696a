"""Reading images from disk with errors that name the file."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from proto_lightning.errors import CorruptImageError


def load_rgb(path: str | Path) -> Image.Image:
    """Decode an image file fully into RGB, or raise `CorruptImageError` naming the file."""
    try:
        with Image.open(path) as image:
            image.load()  # decode now: truncated files fail here, not later in a worker
            return image.convert("RGB")
    except FileNotFoundError as err:
        raise CorruptImageError(
            f"image file {path} is listed in the dataset index but does not exist; "
            "restore it, or set data.on_corrupt=skip to leave it out"
        ) from err
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise CorruptImageError(
            f"cannot decode image {path} ({err}); replace the file, "
            "or set data.on_corrupt=skip to leave unreadable images out (their count is logged)"
        ) from err
