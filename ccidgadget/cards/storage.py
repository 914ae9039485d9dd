"""Persistent card state: one JSON document in a private per-card directory.

Every emulated card (PIV, CAC, ...) keeps its keys, certificates, objects and
PIN counters in one directory under the daemon's state directory::

    <state-dir>/cards/<name>/      mode 0700, owned by the daemon's user
        state.json                 mode 0600, the whole card (docs/card-state-format.md)
        .state.json.XXXX.tmp       transient, only during a save

A save is atomic with respect to crashes and power cuts (write a temporary file
in the same directory, fsync it, rename it over ``state.json``, fsync the
directory), so after any interruption the directory holds the old or the new
state, never a mixture.  An I/O failure (ENOSPC, EROFS, EIO...) raises
`StorageError`; cards answer 6581 (memory failure) and keep their previous
in-memory state.

The document is ``{"format": "ccidgadget-card", "version": 2, "type": ..., ...}``;
the card type owns everything after the header.  Bytes are stored as base64
(`b64e` / `b64d`).  In format 2 secrets are sealed (cards/vault.py) and a
document with a ``vault`` section carries a ``mac`` over everything else,
computed and checked here with the device secret the store was given; a
mismatch is an `IntegrityError` and the document is not used.  It is written
compact, keys sorted: the canonical text of the MAC with ``mac`` last.  Format 1
(keys in clear) is still read, so that the card can convert it
(`backup_before_migration` keeps a copy when the user asks for one).  The
permissions are checked by `load()` as before (group/other bits are removed
with a warning; a directory or file owned by another user is refused).
"""

from __future__ import annotations

import base64
import binascii
import errno
import json
import logging
import os
import stat
from pathlib import Path

from .base import CardSetupError

log = logging.getLogger(__name__)

FORMAT_NAME = "ccidgadget-card"
FORMAT_VERSION = 2
#: Versions `load()` returns: 1 only so that the card types can migrate it.
READ_VERSIONS = (1, 2)
STATE_FILE = "state.json"
BACKUP_SUFFIX = ".v1.bak"
DIR_MODE = 0o700
FILE_MODE = 0o600


class StorageError(CardSetupError):
    """The card state could not be read or written."""


class IntegrityError(StorageError):
    """The card state, or a sealed part of it, failed its integrity check: it is not used."""


def b64e(data: bytes) -> str:
    # binascii directly: base64.b64encode is a Python wrapper around it, and every state save
    # encodes each key, PIN record and DO (bytes, bytearray and memoryview all go in as they are).
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def b64d(text: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, AttributeError) as e:
        raise StorageError(f"invalid base64 in card state: {e}") from None


class CardStore:
    """The state directory of one card."""

    def __init__(self, directory: Path, device=None) -> None:
        from .device_secret import NO_DEVICE_SECRET
        self.directory = Path(directory)
        self.path = self.directory / STATE_FILE
        #: The device secret that keys the document MAC (device_secret.DeviceSecret).
        self.device = device if device is not None else NO_DEVICE_SECRET

    def __repr__(self) -> str:
        return f"CardStore({str(self.directory)!r})"

    # -- queries ------------------------------------------------------------
    def exists(self) -> bool:
        return self.path.is_file()

    # -- load ---------------------------------------------------------------
    def load(self) -> dict:
        """Read and check the state; raise StorageError if absent, unsafe or corrupt."""
        self._check_permissions()
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except OSError as e:
            raise StorageError(f"cannot read {self.path}: {e.strerror or e}") from e
        try:
            state = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise StorageError(f"{self.path} is not valid JSON: {e}") from e
        if not isinstance(state, dict) or state.get("format") != FORMAT_NAME:
            raise StorageError(f"{self.path} is not a ccidgadget card state")
        version = state.get("version")
        if version not in READ_VERSIONS:
            raise StorageError(f"{self.path} has format version {version!r}; "
                               f"this ccidgadget reads versions {', '.join(map(str, READ_VERSIONS))}")
        if version >= 2 and ("vault" in state or "mac" in state):
            from .vault import check_document
            check_document(self.device, state, self.path)
            state = {k: v for k, v in state.items() if k != "mac"}
        return state

    def _check_permissions(self) -> None:
        uid = os.geteuid()
        for path, mode, kind in ((self.directory, DIR_MODE, "directory"), (self.path, FILE_MODE, "file")):
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                raise StorageError(f"card state {kind} {path} does not exist") from None
            except OSError as e:
                raise StorageError(f"cannot stat {path}: {e.strerror or e}") from e
            if kind == "file" and not stat.S_ISREG(st.st_mode):
                raise StorageError(f"{path} is not a regular file")
            if kind == "directory" and not stat.S_ISDIR(st.st_mode):
                raise StorageError(f"{path} is not a directory")
            if st.st_uid != uid:
                raise StorageError(f"{path} belongs to uid {st.st_uid}, not to us (uid {uid}); "
                                   "refusing to use card secrets another user controls")
            if stat.S_IMODE(st.st_mode) & 0o077:
                log.warning("%s had mode %04o: removing group/other access (card secrets live here)",
                            path, stat.S_IMODE(st.st_mode))
                try:
                    os.chmod(path, mode)
                except OSError as e:
                    raise StorageError(f"cannot chmod {path}: {e.strerror or e}") from e

    # -- save ---------------------------------------------------------------
    def save(self, state: dict) -> None:
        """Atomically replace the stored state with `state` (plus the format header)."""
        document = {"format": FORMAT_NAME, "version": FORMAT_VERSION}
        document.update({k: v for k, v in state.items() if k not in ("format", "version", "mac")})
        try:
            if "vault" in document:
                from .vault import canonical, document_mac
                # The file is the canonical text the MAC is computed over, "mac" added last: one encoding
                # for both (json's C encoder; an indented dump is pure Python and was the largest part of a
                # PUT DATA under TCG).
                body = canonical(document)
                data = body[:-1] + b',"mac":' + json.dumps(document_mac(self.device, document, body)).encode() \
                    + b"}\n"
            else:
                data = json.dumps(document, sort_keys=True, separators=(",", ":")).encode("ascii") + b"\n"
        except (TypeError, ValueError) as e:   # a bug in the card's serialiser
            raise StorageError(f"card state is not serialisable: {e}") from e
        self._write(self.path, data)

    def backup_before_migration(self) -> Path:
        """Copy the format-1 state.json to state.json.v1.bak (atomically, 0600) and return its path."""
        target = self.path.with_name(STATE_FILE + BACKUP_SUFFIX)
        try:
            data = self.path.read_bytes()
        except OSError as e:
            raise StorageError(f"cannot read {self.path}: {_describe(e)}") from e
        self._write(target, data)
        return target

    def _write(self, path: Path, data: bytes) -> None:
        self._ensure_directory()
        tmp_name = None
        try:
            fd, tmp_name = self._create_temporary(path)
            try:
                os.fchmod(fd, FILE_MODE)                  # (whatever the umask)
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp_name, path)
            tmp_name = None
            self._fsync_directory()
        except OSError as e:
            raise StorageError(f"cannot write {path}: {_describe(e)}") from e
        finally:
            if tmp_name is not None:
                try:
                    os.unlink(tmp_name)
                except OSError:
                    pass

    def _create_temporary(self, path: Path) -> tuple[int, str]:
        """A new file beside `path`, mode 0600 from the start (tempfile.mkstemp's job, without the
        modules it imports into every daemon start and its name generator on every save)."""
        for _ in range(16):
            name = str(self.directory / f".{path.name}.{os.urandom(6).hex()}.tmp")
            try:
                return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                               FILE_MODE), name
            except FileExistsError:
                continue
        raise FileExistsError(errno.EEXIST, "no free temporary name", str(self.directory))

    def _ensure_directory(self) -> None:
        try:
            self.directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            st = os.stat(self.directory)
            if st.st_uid != os.geteuid():
                raise StorageError(f"{self.directory} belongs to uid {st.st_uid}; refusing to write card secrets")
            if stat.S_IMODE(st.st_mode) != DIR_MODE:
                os.chmod(self.directory, DIR_MODE)
        except OSError as e:
            raise StorageError(f"cannot create {self.directory}: {_describe(e)}") from e

    def _fsync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _describe(e: OSError) -> str:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on the device"
    if e.errno == errno.EROFS:
        return "the file system is read-only"
    return e.strerror or str(e)
