"""One decoded image brought to the competition's working size and channels, the same way everywhere:
at prepare time, in `make predict`, and in the exported kernel (which carries this file, so it imports
nothing of kpipe's: only numpy and Pillow).

Pixels are read as they are meant to be seen: EXIF rotation applied, 16-bit and float images scaled
to 0..255 (not clipped), palette and alpha resolved (transparent pixels on black), grey stored as RGB
made grey again when one channel is wanted.
"""
from __future__ import annotations

import numpy as np

RESIZE_POLICIES = ("keep", "stretch", "centre_crop", "pad")
ORIENTATION = 0x0112  # the EXIF tag


def _eight_bit(img):
    """A 16-bit, 32-bit integer or float grey image as 8-bit 'L', scaled by its type's range."""
    from PIL import Image

    array = np.asarray(img)
    if img.mode.startswith("I;16") or (img.mode == "I" and array.max(initial=0) > 255):
        top = 65535.0 if img.mode.startswith("I;16") or array.max() <= 65535 else float(array.max())
    elif img.mode == "F":
        top = 1.0 if array.max(initial=0) <= 1.0 else 255.0
    else:
        top = 255.0
    scaled = np.clip(array.astype(np.float64) * (255.0 / top), 0, 255).round().astype(np.uint8)
    return Image.fromarray(scaled, mode="L")


def _in_mode(img, channels: int):
    from PIL import Image

    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        img = _eight_bit(img)
    if img.mode == "P":  # a palette, maybe with a transparent entry
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):  # on black: what a model saw for "nothing" in training
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    return img.convert("L" if channels == 1 else "RGB")


def fit_image(img, height: int, width: int, channels: int, policy: str) -> np.ndarray:
    """`img` (a PIL image, decoded or not) as uint8 height x width x channels by `policy`; ValueError when
    `policy` is `keep` and the size differs (the caller names the file)."""
    from PIL import Image, ImageOps

    if policy not in RESIZE_POLICIES:
        raise ValueError(f"unknown resize policy '{policy}' (known: {', '.join(RESIZE_POLICIES)})")
    # The size as seen (EXIF orientations 5-8 turn the image a quarter), from the header: a wrong size
    # under `keep` is refused before a pixel is decoded.
    # (A PNG's EXIF may follow its pixels: reading it would decode them, so only JPEG and TIFF are asked.)
    turned = img.format in ("JPEG", "MPO", "TIFF") and img.getexif().get(ORIENTATION) in (5, 6, 7, 8)
    seen = (img.width, img.height) if turned else (img.height, img.width)
    if seen != (height, width) and policy == "keep":
        raise ValueError(f"image is {seen[0]}x{seen[1]}, expected {height}x{width}")
    if seen != (height, width) and img.format == "JPEG":
        # A JPEG decodes at 1/2, 1/4 or 1/8 scale almost for free; never below the working size.
        img.draft("L" if channels == 1 else "RGB", (height, width) if turned else (width, height))
    img = ImageOps.exif_transpose(img)
    if (img.height, img.width) != (height, width):
        img = _in_mode(img, channels)
        if policy == "stretch":
            img = img.resize((width, height), Image.BILINEAR)
        elif policy == "centre_crop":
            img = ImageOps.fit(img, (width, height), Image.BILINEAR, centering=(0.5, 0.5))
        else:
            img = ImageOps.pad(img, (width, height), Image.BILINEAR, color=0, centering=(0.5, 0.5))
    array = np.asarray(_in_mode(img, channels), dtype=np.uint8)
    return array.reshape(height, width, channels)
