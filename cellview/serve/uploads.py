"""Uploads: streamed to disk under a size limit, typed by their bytes, checked by the slide guards.

The name a browser sends is only ever shown, never used: it is reduced to a safe display name (letters,
digits and a few marks, nothing HTML, a header or a shell could read as syntax) and the file is stored as
``slide<suffix>`` where the suffix comes from the file's magic bytes. ``open_slide`` (and its guards on TIFF
and DICOM structure) then decides whether it is a slide CellView can read, with the message the command
line gives, naming the upload by its display name.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from python_multipart.multipart import MultipartParser, parse_options_header

from cellview.base.errors import CellviewError, MppError, SlideError

SNIFF_BYTES = 4096
FIELD_MAX_BYTES = 1024  # a form field (model, mpp): short text
MAX_FIELDS = 16
FLUSH_BYTES = 1 << 20  # file data is written in pieces of about this size, off the event loop
MULTIPART_SLACK = 64 << 10  # headers and fields around the file in a multipart body

STORED_STEM = "slide"
PART_NAME = "upload.part"

WEB_MPP_ADVICE = ("Give its pixel size in the µm/px field (e.g. 0.5 for a 20x scan), or tick \"whole image\" to "
                  "classify a small image as one tile (scale unknown).")
"""How the page is told a slide's pixel size (the command line says --mpp; the core's sentence is the same)."""


MULTI_FILE_NOTE = ("a DICOM slide is usually a folder of files and the page takes one file: analyse the folder "
                   "with `cellview analyze` on the machine")


class UploadError(CellviewError):
    """An upload refused: ``status`` is the HTTP status the client gets with the message."""

    def __init__(self, status: int, message: str, details: str = "") -> None:
        super().__init__(message, details)
        self.status = status


_UNSAFE = re.compile(r"[^\w .,()+\-]+", re.UNICODE)


def safe_name(raw: str | None, limit: int = 100) -> str:
    """The name a person gave the file, reduced to what is safe to show anywhere (HTML, JSON, a header).

    Only the last path component is kept; anything but letters, digits, space and ``. , ( ) + - _`` becomes
    ``_``; leading dots and spaces go (no hidden or relative names). Never used as a path.
    """
    name = unicodedata.normalize("NFC", raw or "")
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")  # control and format characters
    name = _UNSAFE.sub("_", name).lstrip(". ").strip()
    if len(name) > limit:
        stem, dot, ext = name.rpartition(".")
        name = (stem[: limit - len(ext) - 2] + "…." + ext) if dot and len(ext) <= 8 else name[: limit - 1] + "…"
    return name or "upload"


def display_stem(name: str) -> str:
    """A safe display name without its extension (the downloads' names)."""
    stem, dot, ext = name.rpartition(".")
    return stem if dot and stem and len(ext) <= 8 else name


_TIFF = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_BMP_DIB_SIZES = {12, 40, 52, 56, 64, 108, 124}


def sniff_suffix(head: bytes, size: int) -> str | None:
    """The file's type from its first bytes, as the suffix it is stored under (None: no format we read).

    TIFF covers the TIFF-based slides (Aperio SVS, Hamamatsu NDPI, Leica SCN, Ventana BIF, Philips,
    generic pyramids): OpenSlide tells them apart by their tags, not their names.
    """
    if head[:4] in _TIFF:
        return ".tiff"
    if head[128:132] == b"DICM":
        return ".dcm"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return ".png"
    if head[:3] == b"\xff\xd8\xff":
        return ".jpg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return ".webp"
    if head[:2] == b"BM" and len(head) >= 18:
        declared = int.from_bytes(head[2:6], "little")
        if declared in (0, size) and int.from_bytes(head[14:18], "little") in _BMP_DIB_SIZES:
            return ".bmp"
    if head[:10] == b"ZISRAWFILE":
        return ".czi"
    return None


def not_a_slide(name: str) -> UploadError:
    """The command line's sentence for a file no reader takes (``open_slide``), for an upload."""
    return UploadError(415, f"{name} is not a slide format CellView can read.",
                       "its first bytes match no slide or image format (the type is read from the content, "
                       "not the name)")


def too_large(limit_bytes: int, name: str = "The upload") -> UploadError:
    return UploadError(413, f"{name} is larger than this server accepts ({human_bytes(limit_bytes)}); ask whoever "
                            "runs it to raise --max-upload-mb, or analyse it with `cellview analyze` on the machine.")


def human_bytes(n: int) -> str:
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} bytes"


@dataclass
class Upload:
    """One received upload: the stored file, the display name, the form's other fields."""

    path: Path
    name: str
    size: int
    fields: dict[str, str] = field(default_factory=dict)


class _Receiver:
    """python-multipart callbacks: the file part goes to ``part_path`` (at most ``max_bytes``), fields to a dict."""

    def __init__(self, part_path: Path, max_bytes: int) -> None:
        self.part_path = part_path
        self.max_bytes = max_bytes
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.size = 0
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.error: UploadError | None = None
        self._headers: dict[str, bytes] = {}
        self._field: bytes = b""
        self._value: bytes = b""
        self._kind = ""  # "file", "field" or "skip" for the current part
        self._name = ""
        self._data = bytearray()
        self.files_seen = 0

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self._part_begin, "on_header_field": self._header_field,
            "on_header_value": self._header_value, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _fail(self, error: UploadError) -> None:
        if self.error is None:
            self.error = error

    def _part_begin(self) -> None:
        self._headers, self._field, self._value, self._kind, self._data = {}, b"", b"", "", bytearray()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._field.decode("latin-1").lower()] = self._value
        self._field, self._value = b"", b""

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get("content-disposition", b""))
        self._name = params.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in params:
            self.files_seen += 1
            if self._name != "file" or self.files_seen > 1:
                self._kind = "skip"
                self._fail(UploadError(400, "Send one file, as the form field 'file'."))
                return
            self._kind = "file"
            self.filename = safe_name(params[b"filename"].decode("utf-8", "replace"))
        elif len(self.fields) >= MAX_FIELDS:
            self._kind = "skip"
            self._fail(UploadError(400, "Too many form fields."))
        else:
            self._kind = "field"

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        n = end - start
        if self._kind == "file":
            self.size += n
            if self.size > self.max_bytes:
                self._kind = "skip"
                self.pending, self.pending_bytes = [], 0
                self._fail(too_large(self.max_bytes, self.filename or "The upload"))
                return
            self.pending.append(bytes(data[start:end]))
            self.pending_bytes += n
        elif self._kind == "field":
            if len(self._data) + n > FIELD_MAX_BYTES:
                self._kind = "skip"
                self._fail(UploadError(400, f"The form field {safe_name(self._name)!r} is too long."))
                return
            self._data += data[start:end]

    def _part_end(self) -> None:
        if self._kind == "field":
            self.fields[self._name] = self._data.decode("utf-8", "replace").strip()
        self._kind = ""

    def take_pending(self) -> bytes:
        data = b"".join(self.pending)
        self.pending, self.pending_bytes = [], 0
        return data


def _append(path: Path, data: bytes) -> None:
    with open(path, "ab") as fh:
        fh.write(data)


async def receive_upload(content_type: str, content_length: str | None, body: AsyncIterator[bytes],
                         dest_dir: Path, max_bytes: int) -> Upload:
    """Stream a multipart/form-data body into ``dest_dir``: the file as ``slide<suffix>`` (its type read from
    its first bytes), the other fields as text. Raises UploadError (4xx) and leaves no file behind then."""
    ctype, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise UploadError(400, "Send the slide as multipart/form-data with the file in the field 'file'.")
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise UploadError(400, "The request's Content-Length is not a number.") from None
        if declared > max_bytes + MULTIPART_SLACK:
            raise too_large(max_bytes)
    dest_dir.mkdir(parents=True, exist_ok=True)
    part = dest_dir / PART_NAME
    receiver = _Receiver(part, max_bytes)
    parser = MultipartParser(boundary, receiver.callbacks())
    part.write_bytes(b"")
    stored: Path | None = None
    try:
        async for chunk in body:
            parser.write(chunk)
            if receiver.error is not None and receiver.error.status == 413:
                raise receiver.error  # stop reading: the rest of the body is not wanted
            if receiver.pending_bytes >= FLUSH_BYTES:
                await anyio.to_thread.run_sync(_append, part, receiver.take_pending())
        parser.finalize()
        if receiver.error is not None:
            raise receiver.error
        if receiver.filename is None:
            raise UploadError(400, "No file was uploaded: send it as the form field 'file'.")
        if receiver.pending_bytes:
            await anyio.to_thread.run_sync(_append, part, receiver.take_pending())
        name = receiver.filename
        if receiver.size == 0:
            raise UploadError(422, f"{name} is empty (0 bytes).")
        with open(part, "rb") as fh:
            head = fh.read(SNIFF_BYTES)
        suffix = sniff_suffix(head, receiver.size)
        if suffix is None:
            raise not_a_slide(name)
        stored = dest_dir / f"{STORED_STEM}{suffix}"
        part.replace(stored)
        return Upload(stored, name, receiver.size, receiver.fields)
    except BaseException:
        part.unlink(missing_ok=True)
        if stored is not None:
            stored.unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------- the slide guards


@dataclass(frozen=True)
class CheckedSlide:
    """What the guards found: the slide opens, its pixels read, and (unless whole-image) it has a scale."""

    width: int
    height: int
    levels: int
    vendor: str
    mpp_um: float | None
    info: Any = None  # the slide's SlideInfo (its fingerprint: the result cache's key)


def shown_error(exc: CellviewError, stored: Path, name: str) -> tuple[str, str]:
    """The core's message and details with the stored file's path and name replaced by the display name."""
    def fix(text: str) -> str:
        for internal in (str(stored), stored.name, str(stored.parent)):
            text = text.replace(internal, name)
        return text

    return fix(exc.message), fix(exc.details)


def check_slide(path: Path, name: str, mpp_um: float | None, whole_image: bool,
                model_decides_scale: bool = False) -> CheckedSlide:
    """Open the stored upload as ``cellview analyze`` would (every guard of ``open_slide``), in a worker thread.

    Raises UploadError 422 with the core's sentence, naming the file by ``name``; a slide without a pixel size
    gets the core's MppError sentence with the page's advice, unless the model declares how it reads such an image
    (``model_decides_scale``: a smear model's sidecar rule, applied by the analysis and said in its result).
    """
    from cellview.slides.opening import open_slide

    try:
        with open_slide(path, mpp_um=mpp_um) as slide:
            if not whole_image and not model_decides_scale:
                slide.require_mpp()
            w, h = slide.dimensions
            mpp = slide.mpp.um if slide.mpp is not None else None
            return CheckedSlide(int(w), int(h), int(slide.level_count), str(slide.vendor), mpp, slide.info())
    except MppError as exc:
        message, details = shown_error(exc.advise(WEB_MPP_ADVICE), path, name)
        raise UploadError(422, message, details) from None
    except SlideError as exc:
        message, details = shown_error(exc, path, name)
        if path.suffix == ".dcm":
            details = (details + "; " if details else "") + MULTI_FILE_NOTE
        raise UploadError(422, message, details) from None
    except (OSError, MemoryError, ValueError) as exc:
        raise UploadError(422, f"{name} cannot be read.", type(exc).__name__) from None


def parse_mpp(text: str | None) -> float | None:
    """The form's µm/px: empty is None; else a number in the plausible range for a microscope."""
    if text is None or not text.strip():
        return None
    try:
        value = float(text.replace(",", "."))
    except ValueError:
        raise UploadError(400, "The pixel size (µm/px) must be a number, e.g. 0.5.") from None
    if not 0.02 <= value <= 50.0:
        raise UploadError(400, "The pixel size must lie between 0.02 and 50 µm/px.")
    return value


def parse_flag(text: str | None) -> bool:
    return (text or "").strip().lower() in ("1", "true", "on", "yes")
