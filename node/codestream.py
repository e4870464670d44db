"""What a compressed frame says about its own size, read before any decoder runs.

A JPEG, JPEG-LS or JPEG 2000 decoder allocates the image its codestream declares, not the one
the DICOM header declares: a 512 x 512 DX whose JPEG 2000 codestream claims 20000 x 20000 made
the worker allocate 2.4 GB before pydicom noticed the mismatch (and 60000 x 60000 would have
woken the OOM killer). The worker therefore reads the frame's own header first (JPEG SOF, JPEG-LS
SOF55, JPEG 2000 SIZ, also inside a JP2 file) and refuses a frame that declares more than the
DICOM header does (``node.pixels``).

Reads are bounded: at most ``MAX_MARKERS`` marker segments are walked, a segment's content is
skipped by seeking, never read, and nothing beyond the first fragment is looked at.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

#: Marker segments walked at most before giving up (a JPEG puts its SOF after a few tables).
MAX_MARKERS = 256

_J2K_SOC = b"\xff\x4f"
_J2K_SIZ = b"\xff\x51"
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
# start-of-frame markers of ITU T.81 (not DHT C4, JPG C8, DAC CC) and JPEG-LS SOF55
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7})
_JPEG_SOS = 0xDA
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})  # TEM, RSTn, SOI: no length field
_ITEM = 0xFFFEE000
_SEQUENCE_DELIMITER = 0xFFFEE0DD


@dataclass(frozen=True)
class FrameGeometry:
    """The size a compressed frame declares: what its decoder will allocate."""

    rows: int
    columns: int
    components: int
    precision: int  # bits per sample (the largest component's)

    @property
    def decoded_bytes(self) -> int:
        return self.rows * self.columns * self.components * ((self.precision + 7) // 8)


class _Bounded:
    """Reads from ``fp`` within ``limit`` bytes of where it stands (the first fragment)."""

    def __init__(self, fp: BinaryIO, limit: int) -> None:
        self.fp = fp
        self.left = limit

    def read(self, n: int) -> bytes | None:
        if n > self.left:
            return None
        data = self.fp.read(n)
        if len(data) != n:
            return None
        self.left -= n
        return data

    def skip(self, n: int) -> bool:
        if n > self.left:
            return False
        self.fp.seek(n, 1)
        self.left -= n
        return True


def first_fragment(fp: BinaryIO) -> int | None:
    """With ``fp`` at the value of an encapsulated Pixel Data element: skip the Basic Offset
    Table item and return the length of the first fragment, ``fp`` then at its first byte;
    ``None`` when the items are not where they should be (the decoder will say why)."""
    for skip_table in (True, False):
        head = fp.read(8)
        if len(head) != 8:
            return None
        group, element, length = struct.unpack("<HHL", head)
        tag = group << 16 | element
        if tag != _ITEM or length == 0xFFFFFFFF:
            return None
        if skip_table:
            fp.seek(length, 1)
        else:
            return int(length)
    return None  # pragma: no cover - the loop returns


def read_geometry(fp: BinaryIO, limit: int) -> FrameGeometry | None:
    """The geometry declared by the codestream at ``fp`` (at most ``limit`` bytes of it), or
    ``None`` when it is none of JPEG, JPEG-LS, JPEG 2000 (or too damaged to tell)."""
    src = _Bounded(fp, limit)
    start = src.read(2)
    if start == _J2K_SOC:
        return _j2k_siz(src)
    if start == b"\xff\xd8":
        return _jpeg_sof(src)
    if start is not None and start + (src.read(10) or b"") == _JP2_SIGNATURE:
        return _jp2(src)
    return None


def _j2k_siz(src: _Bounded) -> FrameGeometry | None:
    """SIZ directly follows SOC (ISO 15444-1 A.5.1)."""
    if src.read(2) != _J2K_SIZ:
        return None
    fixed = src.read(38)
    if fixed is None:
        return None
    _lsiz, _rsiz, xsiz, ysiz, xosiz, yosiz, _xt, _yt, _xto, _yto, csiz = struct.unpack(">HHLLLLLLLLH", fixed)
    if not 1 <= csiz <= 16384:
        return None
    comps = src.read(3 * csiz)
    if comps is None:
        return None
    precision = max((comps[3 * i] & 0x7F) + 1 for i in range(csiz))
    return FrameGeometry(max(ysiz - yosiz, 0), max(xsiz - xosiz, 0), csiz, precision)


def _jp2(src: _Bounded) -> FrameGeometry | None:
    """A JP2 file (boxes) where a bare codestream belongs: find its contiguous codestream box."""
    for _ in range(MAX_MARKERS):
        head = src.read(8)
        if head is None:
            return None
        length, kind = struct.unpack(">L4s", head)
        header = 8
        if length == 1:
            large = src.read(8)
            if large is None:
                return None
            (length,) = struct.unpack(">Q", large)
            header = 16
        if kind == b"jp2c":
            return _j2k_siz(src) if src.read(2) == _J2K_SOC else None
        if length == 0 or length < header or not src.skip(length - header):
            return None
    return None


def _jpeg_sof(src: _Bounded) -> FrameGeometry | None:
    """Walk the marker segments after SOI to the start of frame (ITU T.81 B.2.2, T.87)."""
    for _ in range(MAX_MARKERS):
        byte = src.read(1)
        if byte != b"\xff":
            return None
        marker = b"\xff"
        while marker == b"\xff":  # fill bytes
            marker = src.read(1) or b""
        if not marker:
            return None
        code = marker[0]
        if code in _JPEG_STANDALONE:
            continue
        if code == _JPEG_SOS:
            return None  # scan data before any frame header: not a frame we can size
        raw = src.read(2)
        if raw is None:
            return None
        (length,) = struct.unpack(">H", raw)
        if length < 2:
            return None
        if code in _JPEG_SOF:
            body = src.read(6)
            if body is None:
                return None
            precision, rows, columns, components = struct.unpack(">BHHB", body)
            if rows == 0:  # defined later by a DNL marker: unknown here
                return None
            return FrameGeometry(rows, columns, components, precision)
        if not src.skip(length - 2):
            return None
    return None
