# SPDX-License-Identifier: GPL-3.0-or-later
"""The daemon's control verbs and reload, on a real ReaderService without USB."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import pytest

from ccidgadget.cards.base import Card
from ccidgadget.cards.iso import ISO_APPLET_AID, IsoCard
from ccidgadget.daemon.app import Daemon
from ccidgadget.daemon.config import ConfigError
from ccidgadget.daemon.control import ControlError
from ccidgadget.daemon.service import ReaderService
from ccidgadget.options import DaemonOptions, Engine, SlotSpec
from ccidgadget.usb.gadget import ExtraFunction, GadgetError


class RelayCard(Card):
    """Stands in for a passthru engine: presence belongs to the remote side."""

    engine = Engine.PASSTHRU

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


def options(*slots, **kw) -> DaemonOptions:
    return DaemonOptions(slots=list(slots), control_socket=False, **kw)


async def running(opts: DaemonOptions, cards, *, loader=None, notifier=None) -> Daemon:
    """A daemon whose reader service runs, without USB (for the verbs and in-place reloads)."""
    d = Daemon(opts, loader=loader, notifier=notifier)
    d.service = ReaderService(cards)
    for card in cards:
        card.add_presence_listener(lambda present: d._notify_status())
    await d.service.start()
    d.state = "running"
    return d


class FakeDevice:
    """usb/device.py's UsbDevice as the daemon uses it; like ConfigfsGadget it refuses a UDC that is not there."""

    made: list["FakeDevice"] = []
    udcs = ("dummy_udc.0",)

    def __init__(self, options, host_side, *, on_state):
        self.options, self.host_side = options, host_side
        self.udc = options.udc or "dummy_udc.0"
        self.root, self.bound, self.host_connected, self.enumerations = f"/fake/{options.gadget_name}", False, False, 0
        self.events = []
        FakeDevice.made.append(self)

    def __enter__(self):
        if self.udc not in self.udcs:
            raise GadgetError(f"no USB device controller named {self.udc!r} in /sys/class/udc "
                              f"(there: {', '.join(self.udcs)})")
        self.events.append("create")
        return self

    def __exit__(self, *exc):
        self.bound = False
        self.events.append("destroy")

    def bind(self):
        self.bound = True
        self.events.append("bind")

    def unbind(self):
        self.bound = False
        self.events.append("unbind")


async def started(opts: DaemonOptions, *, loader=None) -> tuple[Daemon, asyncio.Task]:
    """The whole Daemon.run() with FakeDevice for the USB device: returns once it is running."""
    FakeDevice.made = []
    d = Daemon(opts, loader=loader, device_factory=FakeDevice)
    task = asyncio.create_task(d.run())
    for _ in range(500):
        await asyncio.sleep(0.01)
        if d.state == "running":
            return d, task
    raise AssertionError(f"the daemon did not start: {d.state}")


async def transmit_select(d: Daemon, slot: int = 0) -> bytes:
    """What a host's first exchange with the slot's card amounts to: power on, then an APDU."""
    card = d.service.cards[slot]
    await card.power_on()
    return await card.transmit(bytes([0x00, 0xA4, 0x04, 0x00, len(ISO_APPLET_AID)]) + ISO_APPLET_AID)


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


@pytest.mark.parametrize("engine,hint", [("passthru", "VSCard client"), ("vpcd", "vpcd client"),
                                         ("pcsc", "pull the card out of the PC/SC reader")])
def test_presence_hint_of_every_engine_reaches_the_user(engine, hint, tmp_path):
    """The real engines (not a fake) name themselves as the configuration does, so the hint is theirs."""
    from ccidgadget.engines import CardContext, build_card
    spec = SlotSpec(engine=engine, reader="x" if engine == "pcsc" else None,
                    listen="127.0.0.1:1" if engine != "pcsc" else None)
    card = build_card(spec, CardContext(slot=1, state_dir=tmp_path))

    async def main():
        d = await running(options(ISO, spec), [IsoCard(), RelayCard()])
        d.service.cards[1] = card                # not started: only its name and presence are asked
        with pytest.raises(ControlError, match=f"it is a {engine} slot; .*{hint}"):
            d.remove(1)
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
    (dict(vid=0x0E0F, pid=0x0004), "identity"),
    (dict(functions=[ExtraFunction("acm")]), "functions"),
    (dict(slots=[ISO, ISO]), "number of slots"),
    (dict(max_message_length=4106), "max_message_length"),
])
def test_gadget_changes_reenumerate(change, what):
    async def main():
        new = dataclasses.replace(options(ISO), **change)
        d, task = await started(options(ISO), loader=lambda: new)
        old_device = FakeDevice.made[0]
        result = await asyncio.wait_for(d.reload(), 5)
        assert result["reenumerated"] is True and what in result["changed"]
        assert "re-enumerated" in result["message"]
        assert old_device.events == ["create", "bind", "destroy"]
        assert FakeDevice.made[1].events == ["create", "bind"] and FakeDevice.made[1].options is new
        assert d.options is new and len(d.service.cards) == len(new.slots)
        d.request_stop()
        assert await asyncio.wait_for(task, 5) == 0
    asyncio.run(main())


def test_failed_reenumeration_goes_back_to_the_previous_configuration():
    """The new UDC does not exist: the reload fails with the reason and the old reader serves again."""
    async def main():
        old = options(ISO)
        new = options(ISO, ISO, udc="nope.0")
        d, task = await started(old, loader=lambda: new)
        with pytest.raises(ControlError, match=r"re-enumeration with the new configuration failed \(no USB device "
                                               r"controller named 'nope\.0'.*\); went back to the previous"):
            await asyncio.wait_for(d.reload(), 5)
        # the answer comes once the previous configuration is up again, on a new device, and its card answers
        assert d.state == "running" and d.options is old
        assert [dev.options.udc for dev in FakeDevice.made] == [None, "nope.0", None]
        assert FakeDevice.made[-1].events == ["create", "bind"] and d.status()["bound"] is True
        assert len(d.service.cards) == 1 and (await transmit_select(d))[-2:] == b"\x90\x00"
        # and a later good reload still works
        d.loader = lambda: options(dataclasses.replace(ISO, inserted=False))
        assert (await d.reload())["slots_replaced"] == [0]
        d.request_stop()
        assert await asyncio.wait_for(task, 5) == 0
    asyncio.run(main())


def test_when_going_back_fails_too_the_daemon_stops_with_the_reason(monkeypatch):
    """The UDC vanished under both configurations: no endless retry; run() ends with the error."""
    async def main():
        d, task = await started(options(ISO), loader=lambda: options(ISO, ISO))
        monkeypatch.setattr(FakeDevice, "udcs", ())
        with pytest.raises(ControlError, match="the daemon is stopping"):
            await asyncio.wait_for(d.reload(), 5)
        with pytest.raises(GadgetError, match="no USB device controller named 'dummy_udc.0'"):
            await asyncio.wait_for(task, 5)
        assert len(FakeDevice.made) == 3
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
