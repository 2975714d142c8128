"""Remidio "Fundus on Phone"-like exports, drawn from a seed: never a real patient's.

The shape follows the camera's exports: one ZIP per visit named
``<MRN>_<export DD-MM-YYYY>_<h.mm.ss.mmm>_<AM|PM>.zip`` holding one patient folder
``<Name>_<MRN>_<capture DD-MM-YYYY>/`` with ``FOP/*.jpg`` (PRISTINE camera: the images
directly in the folder) and ``REPORTS/*.pdf``. Entry names are local capture times on a
12-hour clock whose 12 o'clock is written 0; entries are not stored in time order, are
deflated with data descriptors (flags 0x0808), have UTF-8 names and no directory entries.
The images are fundus-like 2866 px JPEGs with JFIF, EXIF (orientation) and an APP13
Photoshop block (smaller with `image_size`, for fast tests).

`write_zip` is the small ZIP writer behind it (also used by `testkit.hostile_zip`): every
field is under the caller's control, which `zipfile` does not allow.
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Literal

from PIL import Image, ImageEnhance

from testkit.synthetic import fundus_image, text_pdf_bytes

__all__ = [
    "ExportEntry",
    "RemidioExport",
    "ZipMember",
    "build_batch",
    "build_export",
    "remidio_time",
    "write_zip",
]

_FIRST = ["asha", "Ravi", "Meena", "Arjun", "lakshmi", "Vikram", "Priya", "Suresh", "Anita"]
_LAST = ["Kumar", "Devi", "Reddy", "Nair", "Sharma", "Iyer", "Patel", "Rao", "Menon"]


@dataclass(frozen=True)
class ZipMember:
    """One entry exactly as `write_zip` writes it. `compressed` replaces the deflated bytes
    (fake encrypted data, say); `crc` overrides the CRC-32 written."""

    name: str
    data: bytes = b""
    method: int = 8
    flags: int = 0x0808
    external_attr: int = 0o100644 << 16
    create_system: int = 3  # Unix
    when: datetime = datetime(2025, 1, 31, 12, 0, 0)
    compressed: bytes | None = None
    crc: int | None = None


def _dos_time(when: datetime) -> tuple[int, int]:
    return (
        (when.hour << 11) | (when.minute << 5) | (when.second // 2),
        ((when.year - 1980) << 9) | (when.month << 5) | when.day,
    )


def write_zip(members: Iterable[ZipMember], *, level: int = 6) -> bytes:
    """A ZIP archive of `members` in the given order, each with a data descriptor when its
    flags say so (0x0008), and a central directory."""
    out = bytearray()
    central = bytearray()
    count = 0
    for member in members:
        name = member.name.encode("utf-8")
        if member.compressed is not None:
            payload = member.compressed
        elif member.method == 8:
            deflater = zlib.compressobj(level, zlib.DEFLATED, -15)
            payload = deflater.compress(member.data) + deflater.flush()
        else:
            payload = member.data
        crc = zlib.crc32(member.data) if member.crc is None else member.crc
        mtime, mdate = _dos_time(member.when)
        descriptor = bool(member.flags & 0x0008)
        offset = len(out)
        out += struct.pack(
            "<4sHHHHHIIIHH",
            b"PK\x03\x04",
            20,
            member.flags,
            member.method,
            mtime,
            mdate,
            0 if descriptor else crc,
            0 if descriptor else len(payload),
            0 if descriptor else len(member.data),
            len(name),
            0,
        )
        out += name + payload
        if descriptor:
            out += struct.pack("<4sIII", b"PK\x07\x08", crc, len(payload), len(member.data))
        central += struct.pack(
            "<4sBBHHHHHIIIHHHHHII",
            b"PK\x01\x02",
            20,
            member.create_system,
            20,
            member.flags,
            member.method,
            mtime,
            mdate,
            crc,
            len(payload),
            len(member.data),
            len(name),
            0,
            0,
            0,
            0,
            member.external_attr,
            offset,
        )
        central += name
        count += 1
    cd_offset = len(out)
    out += central
    out += struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, count, count, len(central), cd_offset, 0)
    return bytes(out)


def remidio_time(when: datetime) -> str:
    """``12:02:16.099`` → ``0.02.16.099_PM``: the camera's 12-hour clock, 12 written 0."""
    half = "PM" if when.hour >= 12 else "AM"
    return (
        f"{when.hour % 12}.{when.minute:02d}.{when.second:02d}."
        f"{when.microsecond // 1000:03d}_{half}"
    )


@dataclass(frozen=True)
class ExportEntry:
    """One file of an export, with the truth about it."""

    path: str  # as stored in the archive
    captured_at: str | None  # ISO local time the name stands for (None: the report)
    kind: Literal["image", "pdf"]
    black_capture: bool = False


@dataclass(frozen=True)
class RemidioExport:
    """An export and the truth behind it."""

    data: bytes
    file_name: str  # <MRN>_<DD-MM-YYYY>_<h.mm.ss.mmm>_<AM|PM>.zip
    name: str  # words joined by spaces
    folder: str  # <Name>_<MRN>_<DD-MM-YYYY>
    mrn: str
    capture_date: str  # ISO
    layout: Literal["fop", "pristine"]
    entries: tuple[ExportEntry, ...] = field(default=())  # in the archive's order
    members: tuple[ZipMember, ...] = field(default=(), repr=False)

    @property
    def images(self) -> tuple[ExportEntry, ...]:
        return tuple(e for e in self.entries if e.kind == "image")

    @property
    def black_capture(self) -> ExportEntry | None:
        return next((e for e in self.entries if e.black_capture), None)


def _black_jpeg(size: int, seed: int) -> bytes:
    """A failed capture: nearly black, but a real JPEG with the camera's segments."""
    image = fundus_image(size=size, seed=seed, burned_in_text=None, exif_name=None, quality=60)
    picture = ImageEnhance.Brightness(Image.open(io.BytesIO(image))).enhance(0.03)
    out = io.BytesIO()
    picture.save(out, format="JPEG", quality=60)
    return _with_camera_segments(out.getvalue(), seed)


def _with_camera_segments(jpeg: bytes, seed: int) -> bytes:
    """Give a bare JPEG the EXIF (orientation 1) and APP13 Photoshop blocks a camera writes."""
    # One IFD entry: Orientation (0x0112), SHORT, 1 value: 1 (upright).
    exif = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x01" + b"\x01\x12\x00\x03"
    exif += b"\x00\x00\x00\x01\x00\x01\x00\x00" + b"\x00\x00\x00\x00"
    caption = f"capture {seed:010d}".encode()
    iptc = b"\x1c\x02\x00\x00\x02\x00\x04" + b"\x1c\x02\x78" + struct.pack(">H", len(caption))
    iptc += caption
    resource = b"8BIM\x04\x04\x00\x00" + struct.pack(">I", len(iptc)) + iptc
    if len(iptc) % 2:
        resource += b"\x00"
    photoshop = b"Photoshop 3.0\x00" + resource
    segments = b"".join(
        b"\xff" + bytes([marker]) + struct.pack(">H", len(body) + 2) + body
        for marker, body in ((0xE1, exif), (0xED, photoshop))
    )
    position = 2
    if jpeg[2:4] == b"\xff\xe0":  # keep JFIF first
        position = 4 + struct.unpack(">H", jpeg[4:6])[0]
    return jpeg[:position] + segments + jpeg[position:]


def _person(rng: random.Random) -> tuple[str, str]:
    words = [rng.choice(_FIRST)] + [rng.choice(_LAST) for _ in range(rng.randint(0, 2))]
    return " ".join(words), f"{rng.randint(10_000_000, 99_999_999)}"


def build_export(
    rng: random.Random,
    *,
    layout: Literal["fop", "pristine"] = "fop",
    report_pdf: bytes | Literal["default"] | None = "default",
    images: int | None = None,
    black_capture: bool = False,
    image_size: int = 2866,
    person: tuple[str, str] | None = None,
    capture_day: date | None = None,
) -> RemidioExport:
    """One visit's export with random name, MRN, dates and times. `images` defaults to 2-4;
    `report_pdf` is the report's bytes (default: a small text PDF; None: no REPORTS/);
    `black_capture` makes one more image a failed, nearly black capture. `person` is
    (name, MRN) to reuse a patient across exports."""
    name, mrn = person or _person(rng)
    day = capture_day or date(2024, 1, 1) + timedelta(days=rng.randint(0, 700))
    folder = f"{name.replace(' ', '_')}_{mrn}_{day:%d-%m-%Y}"
    count = images if images is not None else rng.randint(2, 4)
    start = datetime.combine(day, datetime.min.time()) + timedelta(
        seconds=rng.randint(8 * 3600, 17 * 3600), milliseconds=rng.randint(0, 999)
    )
    if rng.random() < 0.5:  # exercise the camera's "0" for 12 o'clock
        start = start.replace(hour=12)
    image_dir = f"{folder}/FOP" if layout == "fop" else folder
    planned: list[tuple[ExportEntry, bytes]] = []
    when = start
    for number in range(count + (1 if black_capture else 0)):
        when += timedelta(seconds=rng.randint(5, 90), milliseconds=rng.randint(0, 999))
        seed = rng.randint(0, 2**31)
        is_black = black_capture and number == count
        data = (
            _black_jpeg(image_size, seed)
            if is_black
            else fundus_image(
                size=image_size,
                seed=seed,
                burned_in_text=None,
                exif_name=name,
                orientation=1,
                quality=rng.randint(88, 93),
            )
        )
        path = f"{image_dir}/{remidio_time(when)}.jpg"
        planned.append(
            (ExportEntry(path, when.isoformat(timespec="milliseconds"), "image", is_black), data)
        )
    if report_pdf is not None:
        pdf = (
            text_pdf_bytes([f"Name: {name}", f"MRN: {mrn}", "DR screening report"])
            if report_pdf == "default"
            else report_pdf
        )
        when += timedelta(seconds=rng.randint(30, 300), milliseconds=rng.randint(0, 999))
        planned.append(
            (ExportEntry(f"{folder}/REPORTS/{remidio_time(when)}.pdf", None, "pdf"), pdf)
        )
    stored = list(planned)
    while len(stored) > 1 and stored == planned:
        rng.shuffle(stored)  # the camera does not store entries in time order
    members = tuple(
        ZipMember(entry.path, payload, when=_when(entry, start)) for entry, payload in stored
    )
    data = write_zip(members)
    exported = when + timedelta(minutes=rng.randint(1, 600))
    return RemidioExport(
        data=data,
        file_name=f"{mrn}_{exported:%d-%m-%Y}_{remidio_time(exported)}.zip",
        name=name,
        folder=folder,
        mrn=mrn,
        capture_date=day.isoformat(),
        layout=layout,
        entries=tuple(entry for entry, _ in stored),
        members=members,
    )


def _when(entry: ExportEntry, fallback: datetime) -> datetime:
    return datetime.fromisoformat(entry.captured_at) if entry.captured_at else fallback


def build_batch(exports: Sequence[RemidioExport]) -> bytes:
    """Several visits' folders in one archive (a batch export)."""
    return write_zip(member for export in exports for member in export.members)
