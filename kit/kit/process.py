"""Which process owns something, and whether it is still alive: for leases held in shared
storage (consumer-group members, uploads in flight) that a crashed process leaves behind."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from functools import cache

__all__ = ["ProcessIdentity", "current_process", "host_identity", "process_alive"]


def host_identity() -> str:
    """Which processes we can check for liveness: same host name AND same PID namespace."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = "?"
    return f"{socket.gethostname()}|{namespace}"


def process_alive(pid: int) -> bool:
    """Whether a process with this PID exists on this machine (in this PID namespace)."""
    if os.name != "posix":  # os.kill(pid, 0) sends CTRL_C_EVENT on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, it is just not ours
        return True
    return True


def _start_ticks(pid: int) -> int | None:
    """When the process started (clock ticks since boot), to tell a PID reused by another
    process from the original one; None where /proc is not available."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # The command name (field 2) may contain spaces and parentheses: split after it.
            fields = stat.read().rsplit(b")", 1)[1].split()
        return int(fields[19])  # field 22 of the whole line
    except (OSError, IndexError, ValueError):
        return None


@dataclass(frozen=True, kw_only=True)
class ProcessIdentity:
    host: str
    pid: int
    started: int | None

    def as_doc(self) -> dict[str, object]:
        return {"host": self.host, "pid": self.pid, "started": self.started}

    @classmethod
    def from_doc(cls, doc: object) -> ProcessIdentity | None:
        if not isinstance(doc, dict):
            return None
        try:
            return cls(host=str(doc["host"]), pid=int(doc["pid"]), started=doc.get("started"))
        except (KeyError, TypeError, ValueError):
            return None

    def known_dead(self) -> bool:
        """True only when this machine can tell the process is gone (same host and PID
        namespace, and no process with its PID and start time); otherwise a lease decides."""
        if self.host != host_identity() or os.name != "posix":
            return False
        if not process_alive(self.pid):
            return True
        return self.started is not None and _start_ticks(self.pid) != self.started


@cache
def _identity(pid: int) -> ProcessIdentity:
    return ProcessIdentity(host=host_identity(), pid=pid, started=_start_ticks(pid))


def current_process() -> ProcessIdentity:
    return _identity(os.getpid())  # keyed by pid: a forked child is another process
