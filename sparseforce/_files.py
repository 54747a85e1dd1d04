"""Crash-safe files: a write lands completely or not at all, and a read checks every stored byte.

Used for masks files and training checkpoints alike. A write goes to a temporary file next to its
target, is fsynced and renamed over it, so a reader (or a crash at any point) sees the previous file
or the complete new one. A temporary left behind by a killed writer is removed by the next write to
the same path (or by :func:`remove_stale_temporaries`); one whose writer is alive is left alone.
"""
from __future__ import annotations

import errno
import os
import pickle
import re
import secrets
import zipfile
import zlib
from typing import Any

import torch

__all__ = ["atomic_torch_save", "atomic_write", "first_line", "load_verified", "remove_stale_temporaries"]


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save(obj, path)`` through :func:`atomic_write`."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write(path: str, write) -> None:
    """Call ``write(binary_file)`` on a temporary file next to ``path``, fsync it and rename it over
    ``path``. Temporaries that killed writers left next to ``path`` are removed first."""
    directory = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    # Checked here: os.open's error would name the temporary file, which the caller never chose.
    if not os.path.isdir(directory):
        what = "is not a folder" if os.path.exists(directory) else "does not exist"
        raise FileNotFoundError(errno.ENOENT, f"cannot write {path!r}: the folder {directory!r} {what}")
    remove_stale_temporaries(directory, base)
    # os.open with O_EXCL and mode 0o666 (rather than tempfile) so the final file gets the
    # usual umask-derived permissions instead of tempfile's 0o600. The pid in the name tells
    # a later writer whether the file's writer is still alive.
    for _ in range(100):
        tmp = os.path.join(directory, f".{base}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                         0o666)
            break
        except FileExistsError:
            continue
        except OSError as exc:  # no permission, read-only file system, ...
            raise type(exc)(exc.errno, f"cannot write {path!r}: {exc.strerror or exc}") from None
    else:  # pragma: no cover - 100 collisions of 48 random bits
        raise FileExistsError(f"could not create a temporary file next to {path!r}")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    # Persist the rename itself; without this a power loss can still lose the new entry.
    if hasattr(os, "O_DIRECTORY"):
        try:
            dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return
        try:
            os.fsync(dfd)
        except OSError:
            pass
        finally:
            os.close(dfd)


def remove_stale_temporaries(directory: str, base: str) -> None:
    """Remove the temporaries that killed writers of ``directory/base`` left behind."""
    # Names this module writes (".BASE.PID.HEX.tmp"), and those of earlier versions
    # (".BASE.HEX.tmp", "BASE.PID.tmp"). A file whose writer is alive is another write in
    # progress and is left alone.
    pattern = re.compile(rf"\.?{re.escape(base)}\.(?:(\d+)\.)?(?:[0-9a-f]{{12}}\.)?tmp")
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        m = pattern.fullmatch(name)
        if m is None or (m.group(1) is not None and _pid_alive(int(m.group(1)))):
            continue
        try:
            os.unlink(os.path.join(directory, name))
        except OSError:
            pass


def _pid_alive(pid: int) -> bool:
    if os.name != "posix":
        return True  # no safe probe (os.kill would terminate the process): keep the file
    if pid <= 0:
        return False  # 0 and negatives address process groups, not a writer
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    return True


def load_verified(path: str, map_location: Any, error: type, what: str) -> Any:
    """``torch.load(path, weights_only=True)`` of a file whose zip container and stored CRCs are
    intact; anything else raises ``error`` naming ``path``. ``what`` names the kind of file.
    torch.load itself never checks the CRCs: a flipped bit in a tensor would load silently."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise error(f"{path!r} cannot be read: {exc.strerror or exc}") from None
    if head != b"PK\x03\x04":  # torch.save's zip format; not even a truncated one
        reason = "it is empty" if not head else "it is not a zip archive, which torch.save writes"
        raise error(f"{path!r} is not a {what}: {reason}")
    unreadable = (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError, NotImplementedError,
                  zlib.error)
    try:
        z = zipfile.ZipFile(path)
    except unreadable:
        raise error(f"{path!r} is truncated or corrupt: the zip directory at its end is missing or "
                    "damaged") from None
    with z:
        try:
            bad = z.testzip()
        except unreadable as exc:
            raise error(f"{path!r} is truncated or corrupt: {first_line(exc)}") from None
        # torch's zip reader takes a member with the DOS folder bit for a folder and reads other
        # bytes than the CRC-checked ones; torch.save never sets it.
        folder = next((i.filename for i in z.infolist() if i.external_attr & 0x10), None)
    if folder is not None:
        raise error(f"{path!r} is corrupt: its member {folder!r} is marked as a folder")
    if bad is not None:
        raise error(f"{path!r} is corrupt: the stored bytes of {bad!r} do not match their checksum")
    try:
        # weights_only: loading must never run code from the file.
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message advises weights_only=False, i.e. running the file's code: not for a
        # file that should hold only tensors. Name what it holds instead.
        found = re.search(r"GLOBAL (\S+)", str(exc))
        held = f" ({found.group(1)})" if found else ""
        raise error(f"{path!r} is not a {what}: it holds Python objects{held} that a {what} never "
                    "contains (not loaded: loading them could run code from the file)") from None
    except Exception as exc:
        raise error(f"{path!r} is not a {what}: torch.load failed with {type(exc).__name__}: "
                    f"{first_line(exc)}") from None


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, for an error that quotes it in one line."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else "(no message)"
