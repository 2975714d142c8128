"""Hostile ZIP archives for the zip-extractor's tests: one hazard each, or many mixed with
good entries. Built by `testkit.remidio_export.write_zip`, so every header field is ours.
"""

from __future__ import annotations

import io
import stat
import tarfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from testkit.remidio_export import ZipMember, write_zip
from testkit.synthetic import fundus_image, text_pdf_bytes

__all__ = [
    "EICAR",
    "Hazard",
    "absolute_path",
    "bomb",
    "dosexec_renamed_jpg",
    "eicar_jpg",
    "encrypted",
    "fifo",
    "gzip_renamed_jpg",
    "mixed_archive",
    "nested_zip",
    "os_litter",
    "single",
    "symlink",
    "tar_renamed_pdf",
    "too_many_entries",
    "truncated",
    "windows_absolute_path",
    "zip_slip",
]

# The anti-virus test file (https://www.eicar.org): harmless, and every scanner names it.
EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


@dataclass(frozen=True)
class Hazard:
    """One hostile entry and what it is (`kind`: a short word for tests to key on)."""

    kind: str
    member: ZipMember


def _image(seed: int) -> bytes:
    return fundus_image(size=96, seed=seed, burned_in_text=None)


def zip_slip() -> Hazard:
    return Hazard("zip-slip", ZipMember("../../etc/cron.d/evil.jpg", _image(101)))


def absolute_path() -> Hazard:
    return Hazard("absolute", ZipMember("/etc/passwd.jpg", _image(102)))


def windows_absolute_path() -> Hazard:
    return Hazard("windows-absolute", ZipMember("C:\\Windows\\evil.jpg", _image(103)))


def symlink() -> Hazard:
    attr = (stat.S_IFLNK | 0o777) << 16
    return Hazard("symlink", ZipMember("link.jpg", b"/etc/shadow", external_attr=attr))


def fifo() -> Hazard:
    attr = (stat.S_IFIFO | 0o644) << 16
    return Hazard("fifo", ZipMember("pipe.jpg", b"", external_attr=attr))


def nested_zip() -> Hazard:
    inner = write_zip([ZipMember("inner.jpg", _image(104))])
    return Hazard("nested-zip", ZipMember("more.zip", inner))


def gzip_renamed_jpg() -> Hazard:
    deflater = zlib.compressobj(6, zlib.DEFLATED, 31)  # gzip framing
    data = deflater.compress(b"hidden payload " * 100) + deflater.flush()
    return Hazard("nested-gzip", ZipMember("photo.jpg", data))


def tar_renamed_pdf() -> Hazard:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        info = tarfile.TarInfo("x.jpg")
        payload = _image(105)
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    return Hazard("nested-tar", ZipMember("report.pdf", out.getvalue()))


def encrypted() -> Hazard:
    """Flag bit 0 with bytes that look encrypted (12-byte header + noise): never decrypted."""
    fake = bytes((i * 73 + 11) % 256 for i in range(512))
    return Hazard(
        "encrypted", ZipMember("secret.jpg", b"x" * 500, flags=0x0809, compressed=fake, crc=0)
    )


def bomb(megabytes: int = 50) -> Hazard:
    """`megabytes` of zeros, deflated about 1000:1."""
    return Hazard("bomb", ZipMember("bomb.jpg", bytes(megabytes << 20)))


def dosexec_renamed_jpg() -> Hazard:
    """A DOS/Windows program (an MZ header) named like a photo."""
    header = bytearray(512)
    header[:2] = b"MZ"
    header[2:4] = (0x90).to_bytes(2, "little")
    return Hazard("dosexec", ZipMember("scan.jpg", bytes(header)))


def eicar_jpg() -> Hazard:
    return Hazard("eicar", ZipMember("eicar.jpg", EICAR))


def os_litter() -> list[ZipMember]:
    """What macOS and Windows add: ignored (counted), never items."""
    return [
        ZipMember("__MACOSX/._photo.jpg", b"\x00\x05\x16\x07" + bytes(60)),
        ZipMember("._photo.jpg", b"\x00\x05\x16\x07" + bytes(60)),
        ZipMember(".DS_Store", b"\x00\x00\x00\x01Bud1" + bytes(60)),
        ZipMember("Thumbs.db", b"\xd0\xcf\x11\xe0" + bytes(60)),
        ZipMember("empty-folder/", b"", external_attr=(stat.S_IFDIR | 0o755) << 16),
    ]


def single(hazard: Hazard, *, good: int = 0) -> bytes:
    """An archive of `hazard` and `good` good images."""
    members = [ZipMember(f"good-{n}.jpg", _image(n)) for n in range(good)]
    return write_zip([hazard.member, *members])


def mixed_archive(hazards: Sequence[Hazard] | None = None) -> tuple[bytes, list[str], list[str]]:
    """Every hazard (or those given) between good entries, plus OS litter. Returns the
    archive, the good entries' names and the hostile entries' kinds, in the archive's order."""
    hazards = list(hazards) if hazards is not None else _all_hazards()
    members: list[ZipMember] = []
    good: list[str] = []
    for number, hazard in enumerate(hazards):
        members.append(ZipMember(f"good/{number}.jpg", _image(number)))
        good.append(f"good/{number}.jpg")
        members.append(hazard.member)
    members.append(ZipMember("good/report.pdf", text_pdf_bytes(["A report"])))
    good.append("good/report.pdf")
    members.extend(os_litter())
    return write_zip(members), good, [h.kind for h in hazards]


def _all_hazards() -> list[Hazard]:
    return [
        zip_slip(),
        absolute_path(),
        windows_absolute_path(),
        symlink(),
        fifo(),
        nested_zip(),
        gzip_renamed_jpg(),
        tar_renamed_pdf(),
        encrypted(),
        bomb(),
        dosexec_renamed_jpg(),
        eicar_jpg(),
    ]


def too_many_entries(count: int) -> bytes:
    """`count` small distinct JPEG entries (stored, no data descriptor: quick to build)."""
    base = _image(7)
    return write_zip(
        ZipMember(f"many/{n:05d}.jpg", base + n.to_bytes(4, "big"), method=0, flags=0x0800)
        for n in range(count)
    )


def truncated(data: bytes, *, keep: float = 0.7) -> bytes:
    """The first `keep` of an archive: a download cut short (no central directory)."""
    return data[: int(len(data) * keep)]
