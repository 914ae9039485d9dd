# SPDX-License-Identifier: GPL-3.0-or-later
"""The daemon's control verbs and reload, on a real ReaderService without USB."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import pytest

from ccidgadget.cards.base import Card
from ccidgadget.cards.iso import IsoCard
from ccidgadget.daemon.app import Daemon, DaemonOptions
from ccidgadget.daemon.config import ConfigError
from ccidgadget.daemon.control import ControlError
from ccidgadget.daemon.engines import SlotSpec
from ccidgadget.daemon.service import ReaderService
from ccidgadget.usb.gadget import ExtraFunction, Identity


class RelayCard(Card):
    """Stands in for a passthru engine: presence belongs to the remote side."""

    engine = "passthru"

    async def power_on(self):
        return b"\x3b\x00"

    async def power_off(self):
        pass

    async def transmit(self, apdu):
        return b"\x90\x00"


class RecordingNotifier:
    def __init__(self):
        self.sent = []

    def ready(self):
        self.sent.append("READY=1")

    def reloading(self):
        self.sent.append("RELOADING=1")

    def stopping(self):
        self.sent.append("STOPPING=1")

    def status(self, text):
        self.sent.append(f"STATUS={text}")

    def watchdog(self):
        self.sent.append("WATCHDOG=1")

    def watchdog_interval(self):
        return None


ISO = SlotSpec(engine="emulated", type="iso")
IDENT = Identity(vid=0x1209, pid=0x2702)


def options(*slots, **kw) -> DaemonOptions:
    return DaemonOptions(slots=list(slots), identity=IDENT, control_socket=False, **kw)


async def running(opts: DaemonOptions, cards, *, loader=None, notifier=None) -> Daemon:
    d = Daemon(opts, loader=loader, notifier=notifier)
    d.service = ReaderService(cards)
    for card in cards:
        card.add_presence_listener(lambda present: d._notify_status())
    await d.service.start()
    d._reload_lock = asyncio.Lock()
    d._wake = asyncio.Event()
    d.state = "running"
    return d


def test_insert_remove_emulated_and_refuse_others():
    async def main():
        iso, relay = IsoCard(), RelayCard()
        note = RecordingNotifier()
        d = await running(options(ISO, SlotSpec(engine="passthru")), [iso, relay], notifier=note)
        assert d.remove(0) == {"slot": 0, "present": False, "changed": True}
        assert iso.present is False
        assert d.remove(0)["changed"] is False
        assert d.insert(0) == {"slot": 0, "present": True, "changed": True}
        with pytest.raises(ControlError, match=r"cannot insert the card of slot 1: it is a passthru slot; "
                                               r"its card is present while a VSCard client"):
            d.insert(1)
        with pytest.raises(ControlError, match=r"no slot 2: this reader has slots 0\.\.1"):
            d.remove(2)
        statuses = [s for s in note.sent if s.startswith("STATUS=")]
        assert any("slot 0 emulated-iso: empty" in s for s in statuses), statuses
        assert "slot 0 emulated-iso: card present" in statuses[-1]
        st = d.status()
        assert [s["engine"] for s in st["slots"]] == ["emulated", "passthru"]
        assert st["slots"][0]["type"] == "iso" and st["slots"][0]["present"] is True
        assert st["state"] == "running" and st["host_connected"] is False
        await d.service.stop()
    asyncio.run(main())


def test_reload_replaces_only_changed_slots_without_reenumerating():
    async def main():
        first, second = IsoCard(), IsoCard()
        new = options(ISO, dataclasses.replace(ISO, inserted=False), log_level="debug")
        note = RecordingNotifier()
        d = await running(options(ISO, ISO), [first, second], loader=lambda: new, notifier=note)
        note.sent.clear()
        result = await d.reload()
        assert result["reenumerated"] is False
        assert result["slots_replaced"] == [1]
        assert "slot(s) 1 replaced without re-enumerating" in result["message"]
        assert "log level debug" in result["message"]
        assert d.service.cards[0] is first and d.service.cards[1] is not second
        assert d.service.cards[1].present is False
        assert d.options is new and d.reloads == 1
        assert note.sent[0] == "RELOADING=1" and note.sent.index("READY=1") > 0
        # the replaced card is wired up: inserting it reaches the reader and systemd
        d.insert(1)
        assert "slot 1 emulated-iso: card present" in note.sent[-1]
        # nothing changed: nothing replaced
        result = await d.reload()
        assert result["slots_replaced"] == [] and result["message"].startswith("no slot changed")
        await d.service.stop()
        logging.getLogger().setLevel(logging.WARNING)
    asyncio.run(main())


def test_reload_with_a_broken_configuration_changes_nothing():
    def broken():
        raise ConfigError(["/etc/ccidgadget/ccidgadget.toml: slot[0].engine: 'nfc' is not allowed; allowed: ..."])

    async def main():
        card = IsoCard()
        d = await running(options(ISO), [card], loader=broken)
        with pytest.raises(ControlError) as e:
            await d.reload()
        assert "NOT applied; the reader keeps running as before" in str(e.value)
        assert "slot[0].engine: 'nfc'" in str(e.value)
        assert d.service.cards[0] is card and d.reloads == 0
        await d.service.stop()
    asyncio.run(main())


@pytest.mark.parametrize("change,what", [
    (dict(identity=Identity(vid=0x0E0F, pid=0x0004)), "identity"),
    (dict(extra_functions=[ExtraFunction("acm")]), "functions"),
    (dict(slots=[ISO, ISO]), "number of slots"),
    (dict(udc="other.0"), "udc"),
])
def test_gadget_changes_reenumerate(change, what):
    async def main():
        new = dataclasses.replace(options(ISO), **change)
        d = await running(options(ISO), [IsoCard()], loader=lambda: new)
        task = asyncio.create_task(d.reload())
        await asyncio.wait_for(d._wake.wait(), 5)
        assert d._reenumerate is True and d.options is new
        d._reenumerated.set_result(None)          # what run() does once the new gadget is bound
        result = await asyncio.wait_for(task, 5)
        assert result["reenumerated"] is True and what in result["changed"]
        assert "re-enumerated" in result["message"]
        await d.service.stop()
    asyncio.run(main())


def test_runtime_dir_change_waits_for_restart(tmp_path):
    async def main():
        new = options(ISO, runtime_dir=tmp_path)
        d = await running(options(ISO), [IsoCard()], loader=lambda: new)
        result = await d.reload()
        assert "runtime_dir stays /run/ccidgadget until the next restart" in result["message"]
        assert d.options.runtime_dir.as_posix() == "/run/ccidgadget"
        await d.service.stop()
    asyncio.run(main())


def test_sighup_reloads():
    async def main():
        calls = []

        def loader():
            calls.append(1)
            return options(dataclasses.replace(ISO, inserted=False))
        d = await running(options(ISO), [IsoCard()], loader=loader)
        d._sighup()
        for _ in range(100):
            await asyncio.sleep(0.01)
            if d.reloads:
                break
        assert calls and d.reloads == 1 and d.service.cards[0].present is False
        await d.service.stop()
    asyncio.run(main())


def test_engine_of_for_journal_fields():
    d = Daemon(options(ISO, SlotSpec(engine="vpcd")))
    assert d.engine_of(0) == "emulated-iso" and d.engine_of(1) == "vpcd" and d.engine_of(5) is None
