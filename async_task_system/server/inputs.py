"""A request's inputs made ready for an agent: texts, images decoded within pixel limits, files
saved in a folder of their own (safe names), and the instructions to run."""

from __future__ import annotations

import io
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .protocol import ErrorCode, InputType, RequestError

__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS",
    "DEFAULT_MAX_REQUEST_PIXELS",
    "ImageLimits",
    "PreparedInputs",
    "decode_image",
    "default_task",
    "file_block",
    "prepare_inputs",
    "safe_filename",
]

_MAX_INLINE_FILE_BYTES = 64 * 1024


@dataclass
class PreparedInputs:
    texts: list[str] = field(default_factory=list)
    images: list[Any] = field(default_factory=list)
    files: list[tuple[str, str | None, str, bytes]] = field(default_factory=list)  # name, type, path, bytes
    instructions: list[Any] = field(default_factory=list)
    folder: str | None = None


DEFAULT_MAX_IMAGE_PIXELS = 25_000_000
"""Pixels of one image (width x height x frames), checked from its header before it is decoded."""
DEFAULT_MAX_REQUEST_PIXELS = 50_000_000
"""Pixels of all the images of one request together."""


@dataclass
class ImageLimits:
    per_image: int = DEFAULT_MAX_IMAGE_PIXELS
    per_request: int = DEFAULT_MAX_REQUEST_PIXELS
    used: int = 0


def decode_image(raw: bytes, index: int, limits: ImageLimits | None = None) -> Any:
    from PIL import Image, UnidentifiedImageError

    limits = limits if limits is not None else ImageLimits()
    try:
        image = Image.open(io.BytesIO(raw))  # reads the header only
        width, height = image.size
        pixels = width * height * max(1, int(getattr(image, "n_frames", 1) or 1))
        # A small file can hold a huge image (a 657 KB PNG of 169 megapixels took 748 MB to decode).
        if pixels > limits.per_image:
            raise RequestError(
                ErrorCode.PROCESSING_ERROR,
                f"Image #{index + 1} is {width}x{height} ({pixels} pixels with its frames), over the limit of "
                f"{limits.per_image} pixels per image; send a smaller image",
            )
        if limits.used + pixels > limits.per_request:
            raise RequestError(
                ErrorCode.PROCESSING_ERROR,
                f"The images of this request have more than {limits.per_request} pixels together "
                f"(image #{index + 1} is {width}x{height}); send fewer or smaller images",
            )
        limits.used += pixels
        image.load()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise RequestError(
            ErrorCode.PROCESSING_ERROR,
            f"Image #{index + 1} is not a readable image ({exc}); send PNG, JPEG, GIF or WebP bytes in base64",
        ) from None
    return image


_MAX_FILENAME_BYTES = 200  # under the 255 of common file systems, with room for a "_2" suffix


def safe_filename(name: str, index: int, taken: set[str]) -> str:
    base = os.path.basename(name.replace("\\", "/")).strip().lstrip(".")
    base = re.sub(r"[\x00-\x1f]", "_", base) or f"file_{index + 1}"
    if len(base.encode("utf-8")) > _MAX_FILENAME_BYTES:
        stem, ext = os.path.splitext(base)
        ext = ext if len(ext.encode("utf-8")) <= 16 else ""
        room = _MAX_FILENAME_BYTES - len(ext.encode("utf-8"))
        base = stem.encode("utf-8")[:room].decode("utf-8", errors="ignore") + ext
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        stem, ext = os.path.splitext(base)
        candidate = f"{stem}_{n}{ext}"
    taken.add(candidate)
    return candidate


def prepare_inputs(
    leaves: Sequence[InputType],
    temp_root: str | None,
    prepared: PreparedInputs,
    images: ImageLimits | None = None,
) -> PreparedInputs:
    taken: set[str] = set()
    images = images if images is not None else ImageLimits()
    for leaf in leaves:
        if leaf.Text is not None:
            prepared.texts.append(leaf.Text)
        elif leaf.Image is not None:
            prepared.images.append(decode_image(leaf.Image.raw, len(prepared.images), images))
        elif leaf.File is not None:
            name = safe_filename(leaf.File.filename, len(prepared.files), taken)
            try:
                if prepared.folder is None:
                    prepared.folder = tempfile.mkdtemp(prefix="async-agent-request-", dir=temp_root)
                path = os.path.join(prepared.folder, name)
                with open(path, "wb") as handle:
                    handle.write(leaf.File.raw)
            except OSError as exc:  # the message would show the server's folder: say what, not where
                raise RequestError(
                    ErrorCode.PROCESSING_ERROR,
                    f"File #{len(prepared.files) + 1} ({name[:80]!r}) could not be saved: "
                    f"{exc.strerror or type(exc).__name__}",
                ) from None
            prepared.files.append((name, leaf.File.content_type, path, leaf.File.raw))
        elif leaf.Instruction is not None:
            prepared.instructions.append(leaf.Instruction)
    return prepared


def file_block(prepared: PreparedInputs) -> str:
    lines = [f"Files attached to this request (saved in the folder {prepared.folder}):"]
    for name, content_type, path, raw in prepared.files:
        lines.append(f"- {name} ({content_type or 'unknown type'}, {len(raw)} bytes) at path {path}")
        if len(raw) <= _MAX_INLINE_FILE_BYTES:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                continue
            if "\x00" not in text:
                lines.append(f"  Content of {name}:\n```\n{text}\n```")
    return "\n".join(lines)


def default_task(prepared: PreparedInputs) -> str:
    if prepared.images and prepared.files:
        return "Describe the attached image(s) and summarize the attached file(s)."
    if prepared.images:
        return "Describe the attached image(s)."
    if prepared.files:
        return "Summarize the attached file(s)."
    return "Summarize the results of the instructions above."
