"""Size and digests of a byte stream, computed while it flows past (never over a whole file)."""

from __future__ import annotations

import hashlib

__all__ = ["StreamDigest"]


class StreamDigest:
    """Running size, MD5 and SHA-256 of everything passed to `update`.

    MD5 is kept because S3 and DICOM/LORIS tooling speak it; SHA-256 is the one to trust.
    hashlib releases the GIL on large buffers, so updating from a worker thread lets the event
    loop run meanwhile.
    """

    __slots__ = ("_md5", "_sha256", "size")

    def __init__(self) -> None:
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._sha256 = hashlib.sha256()
        self.size = 0

    def update(self, chunk: bytes | bytearray | memoryview) -> None:
        self._md5.update(chunk)
        self._sha256.update(chunk)
        self.size += len(chunk)

    @property
    def md5(self) -> str:
        return self._md5.hexdigest()

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()
