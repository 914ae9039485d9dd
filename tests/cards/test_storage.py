"""CardStore: atomic saves, permissions, format header, I/O errors."""

import errno
import json
import os
import stat

import pytest

from ccidgadget.cards import storage
from ccidgadget.cards.storage import CardStore, StorageError, b64d, b64e


def test_roundtrip_and_modes(tmp_path):
    store = CardStore(tmp_path / "cards" / "piv0")
    assert not store.exists()
    store.save({"type": "test", "blob": b64e(b"\x00\xff")})
    assert store.exists()
    assert stat.S_IMODE(os.stat(store.directory).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    state = store.load()
    assert state["format"] == "ccidgadget-card" and state["version"] == storage.FORMAT_VERSION == 2
    assert b64d(state["blob"]) == b"\x00\xff"
    assert [p.name for p in store.directory.iterdir()] == ["state.json"]


def test_load_fixes_loose_permissions(tmp_path, caplog):
    store = CardStore(tmp_path / "c")
    store.save({"type": "t"})
    os.chmod(store.path, 0o644)
    os.chmod(store.directory, 0o755)
    store.load()
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(store.directory).st_mode) == 0o700
    assert "group/other" in caplog.text


def test_load_refuses_foreign_owner(tmp_path, monkeypatch):
    store = CardStore(tmp_path / "c")
    store.save({"type": "t"})
    monkeypatch.setattr(storage.os, "geteuid", lambda: os.getuid() + 1)
    with pytest.raises(StorageError, match="belongs to uid"):
        store.load()


def test_crash_before_rename_keeps_old_state(tmp_path, monkeypatch):
    store = CardStore(tmp_path / "c")
    store.save({"type": "t", "n": 1})

    def crash(src, dst):
        raise OSError(errno.EIO, "simulated power cut")
    monkeypatch.setattr(storage.os, "replace", crash)
    with pytest.raises(StorageError):
        store.save({"type": "t", "n": 2})
    monkeypatch.undo()
    assert store.load()["n"] == 1
    assert [p.name for p in store.directory.iterdir()] == ["state.json"]   # temp file removed


@pytest.mark.parametrize("err, text", [(errno.ENOSPC, "no space"), (errno.EROFS, "read-only")])
def test_write_errors_are_storage_errors(tmp_path, monkeypatch, err, text):
    store = CardStore(tmp_path / "c")
    store.save({"type": "t", "n": 1})

    def fail(fd, data):
        raise OSError(err, os.strerror(err))
    monkeypatch.setattr(storage.os, "write", fail)
    with pytest.raises(StorageError, match=text):
        store.save({"type": "t", "n": 2})
    monkeypatch.undo()
    assert store.load()["n"] == 1


def test_corrupt_and_foreign_documents(tmp_path):
    store = CardStore(tmp_path / "c")
    store.save({"type": "t"})
    store.path.write_text("{not json")
    with pytest.raises(StorageError, match="not valid JSON"):
        store.load()
    store.path.write_text(json.dumps({"format": "other"}))
    with pytest.raises(StorageError, match="not a ccidgadget"):
        store.load()
    store.path.write_text(json.dumps({"format": "ccidgadget-card", "version": 99}))
    with pytest.raises(StorageError, match="version 99"):
        store.load()


def test_missing_state(tmp_path):
    with pytest.raises(StorageError, match="does not exist"):
        CardStore(tmp_path / "nothing").load()


def test_bad_base64():
    with pytest.raises(StorageError):
        b64d("***")
