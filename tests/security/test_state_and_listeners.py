# SPDX-License-Identifier: GPL-3.0-or-later
"""State directory permissions checked when a card starts; network listeners on loopback unless configured.

The daemon builds its cards with `engines.build_card`, which opens the card's
state through `CardStore.load`: a directory or file readable by group/other is
fixed (0700 / 0600) with a warning naming it; one owned by another user is
refused (StorageError, the slot does not start).
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat

import pytest

from tests.ci import in_ci

from ccidgadget.cards import pin as pin_module
from ccidgadget.cards.piv import PivCard
from ccidgadget.cards.storage import CardStore, StorageError
from ccidgadget.engines import CardContext, EngineError, build_card
from ccidgadget.options import ENGINES, SlotSpec
from ccidgadget.passthrough.vpcd_server import VpcdServerCard
from ccidgadget.passthrough.vscard_server import VSCardServerCard


@pytest.fixture(autouse=True)
def cheap_kdf(monkeypatch):
    monkeypatch.setattr(pin_module, "SCRYPT_N", 2 ** 4)


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def card_dir(state_dir):
    return state_dir / "cards" / "slot0-piv"


def test_new_card_state_is_0600_in_0700(tmp_path):
    build_card(SlotSpec(type="piv"), CardContext(slot=0, state_dir=tmp_path))
    assert mode(card_dir(tmp_path)) == 0o700
    assert mode(card_dir(tmp_path) / "state.json") == 0o600


def test_loose_permissions_are_fixed_at_start_and_logged(tmp_path, caplog):
    build_card(SlotSpec(type="piv"), CardContext(slot=0, state_dir=tmp_path))
    d = card_dir(tmp_path)
    os.chmod(d, 0o755)
    os.chmod(d / "state.json", 0o644)
    caplog.set_level(logging.WARNING)
    card = build_card(SlotSpec(type="piv"), CardContext(slot=0, state_dir=tmp_path))
    assert isinstance(card, PivCard)
    assert mode(d) == 0o700 and mode(d / "state.json") == 0o600
    text = caplog.text
    assert f"{d} had mode 0755" in text and f"{d / 'state.json'} had mode 0644" in text
    assert "removing group/other access" in text


@pytest.mark.skipif(os.geteuid() != 0 and not in_ci(), reason="needs root to give the files to another user")
@pytest.mark.parametrize("which", ["directory", "file"])
def test_state_owned_by_another_user_is_refused(tmp_path, which):
    build_card(SlotSpec(type="piv"), CardContext(slot=0, state_dir=tmp_path))
    d = card_dir(tmp_path)
    os.chown(d if which == "directory" else d / "state.json", 4242, 4242)
    with pytest.raises(EngineError, match=r"slot 0 \(emulated-piv\): .* belongs to uid 4242.*refusing"):
        build_card(SlotSpec(type="piv"), CardContext(slot=0, state_dir=tmp_path))


def test_state_owned_by_another_user_is_refused_without_root(tmp_path, monkeypatch):
    build_card(SlotSpec(type="piv"), CardContext(slot=0, state_dir=tmp_path))
    monkeypatch.setattr(os, "geteuid", lambda: os.getuid() + 4242)
    with pytest.raises(StorageError, match="refusing"):
        CardStore(card_dir(tmp_path)).load()


def test_state_file_that_is_a_symlink_is_refused(tmp_path):
    build_card(SlotSpec(type="piv"), CardContext(slot=0, state_dir=tmp_path))
    d = card_dir(tmp_path)
    (d / "state.json").rename(tmp_path / "elsewhere.json")
    (d / "state.json").symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(StorageError, match="not a regular file"):
        CardStore(d).load()


# -- listeners ---------------------------------------------------------------------------------
def test_default_listen_addresses_are_loopback():
    assert {info.default_listen[0] for info in ENGINES.values() if info.default_listen} == {"127.0.0.1"}
    for engine in ("passthru", "vpcd"):
        card = build_card(SlotSpec(engine=engine), CardContext(slot=0, state_dir="/nonexistent"))
        assert card.listen[0] == "127.0.0.1", engine
    assert VSCardServerCard().listen[0] == "127.0.0.1"
    assert VpcdServerCard().listen[0] == "127.0.0.1"


@pytest.mark.parametrize("cls", [VSCardServerCard, VpcdServerCard])
@pytest.mark.parametrize("host, warned", [("127.0.0.1", False), ("0.0.0.0", True)])
def test_non_loopback_listener_logs_a_warning(cls, host, warned, caplog):
    caplog.set_level(logging.INFO)

    async def main():
        card = cls(listen=(host, 0))
        await card.start()
        try:
            return card
        finally:
            await card.stop()

    asyncio.run(main())
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "not loopback" in r.getMessage()]
    assert bool(warnings) == warned, caplog.text
    if warned:
        assert "no authentication" in warnings[0].getMessage()
