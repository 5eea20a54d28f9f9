"""Images on their way to the runner: the checks a request's images pass before any runner is
involved, and the prompt with one media marker per image, in the order the runner reads them.

``check_images`` sniffs each image's first bytes (PNG, JPEG, GIF, WebP), so that bytes that are not
an image get a fast 400 instead of a failure inside libmtmd. ``place_images`` turns a rendered
prompt into the runner's ``prompt`` and ``images``: Ollama's ``[img-N]`` tags (Go templates, raw
prompts) become ``MEDIA_MARKER`` and image N is sent where its tag stands (a tag may repeat); a
Jinja chat template has already written the markers, in the order of its images. ``runner_images``
re-encodes WebP images as PNG, which libmtmd can read.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable

from pollama.errors import InvalidRequest
from pollama.template.builder import IMAGE_TAG, MEDIA_MARKER, RenderedPrompt

_NOT_AN_IMAGE = "unsupported or invalid image data (expected PNG, JPEG, GIF or WebP)"
_SNIFF_CHARS = 16  # base64 characters enough for the 12 bytes every signature below needs


def image_kind(head: bytes) -> str | None:
    """The image format ``head`` (a file's first bytes) starts, or ``None``."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


def check_images(images: Iterable[str]) -> None:
    """Refuse an image (standard base64) whose bytes are not a PNG, JPEG, GIF or WebP file."""
    for i, image in enumerate(images, start=1):
        start = image[: _SNIFF_CHARS * 4].replace("\r", "").replace("\n", "")  # Go's decoder skips line breaks
        try:
            head = base64.b64decode(start[:_SNIFF_CHARS])
        except (binascii.Error, ValueError):
            head = b""
        if image_kind(head) is None:
            raise InvalidRequest(f"image {i}: {_NOT_AN_IMAGE}")


MAX_PIXELS = 50_000_000
"""The most pixels a WebP image may have to be re-encoded (a small file may claim a huge canvas)."""


def runner_images(images: list[bytes]) -> list[bytes]:
    """``images`` as the runner reads them: WebP re-encoded as PNG (as Ollama does: libmtmd's image
    decoder reads PNG, JPEG and GIF but not WebP), the rest unchanged. Slow for a big image: call it
    in a worker thread. Raises ``InvalidRequest`` for a WebP file that cannot be decoded."""
    return [_webp_to_png(image, n) if image_kind(image[:12]) == "webp" else image for n, image in enumerate(images, 1)]


def _webp_to_png(data: bytes, n: int) -> bytes:
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data), formats=["WEBP"]) as image:
            if image.width * image.height > MAX_PIXELS:
                raise InvalidRequest(f"image {n}: too large ({image.width}x{image.height} pixels)")
            out = io.BytesIO()
            image.save(out, format="PNG")
            return out.getvalue()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise InvalidRequest(f"image {n}: {_NOT_AN_IMAGE}") from None


def place_images(prompt: RenderedPrompt, *, vision: bool) -> tuple[str, list[bytes]]:
    """The runner's prompt and images for ``prompt``.

    A model without vision gets the text as it is and no images (the request was checked). Raises
    ``InvalidRequest`` (Ollama's ``invalid image index: N``) for a tag that names no image.
    """
    if not vision:
        return prompt.text, []
    if not prompt.image_tags:
        return prompt.text, list(prompt.images)
    ordered: list[bytes] = []
    pieces: list[str] = []
    last = 0
    for match in IMAGE_TAG.finditer(prompt.text):
        digits = match.group(1)
        n = int(digits) if len(digits) <= 9 else len(prompt.images)
        if n >= len(prompt.images):
            raise InvalidRequest(f"invalid image index: {digits}")
        pieces.append(prompt.text[last : match.start()])
        pieces.append(MEDIA_MARKER)
        ordered.append(prompt.images[n])
        last = match.end()
    pieces.append(prompt.text[last:])
    return "".join(pieces), ordered
