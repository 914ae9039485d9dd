# SPDX-License-Identifier: GPL-3.0-or-later
"""A VSCard reader alone on its gadget appears on the bus with its client (QEMU's passthrough scenario)."""

from __future__ import annotations

import asyncio

import ccidgadget.usb.function as function
from ccidgadget.cards.iso import IsoCard
from ccidgadget.daemon import app
from ccidgadget.daemon.app import Daemon, DaemonOptions
from ccidgadget.daemon.engines import SlotSpec
from ccidgadget.usb.gadget import Identity

from test_notify import FakeFunction, FakeGadget  # tests/daemon is on sys.path (rootdir import mode)


class AttachableCard(IsoCard):
    """Stands in for VSCardServerCard: `attached` + `add_attach_listener`."""

    def __init__(self):
        super().__init__(inserted=False)
        self.attached = False
        self.attach_listeners = []

    def add_attach_listener(self, listener):
        self.attach_listeners.append(listener)

    def client(self, attached):
        self.attached = attached
        for listener in self.attach_listeners:
            listener(attached)


def run_daemon(monkeypatch, tmp_path, slots, cards, body):
    monkeypatch.setattr(app, "ConfigfsGadget", FakeGadget)
    monkeypatch.setattr(function, "CCIDFunction", FakeFunction)
    made = iter(cards)
    monkeypatch.setattr(app, "build_card", lambda spec, slot, state_dir, shared_gadget=False, vault=None: next(made))
    FakeGadget.created = []
    opts = DaemonOptions(slots=slots, identity=Identity(0x1209, 0x2702), runtime_dir=tmp_path / "run",
                         state_dir=tmp_path / "state", control_socket=False)
    d = Daemon(opts)

    async def main():
        task = asyncio.create_task(d.run())
        for _ in range(100):
            await asyncio.sleep(0.01)
            if FakeGadget.created and "create" in FakeGadget.created[0].events and d.state == "running":
                break
        await body(d, FakeGadget.created[0])
        d.request_stop()
        assert await asyncio.wait_for(task, 10) == 0
    asyncio.run(main())
    return FakeGadget.created[0]


def test_single_vscard_slot_binds_only_while_a_client_is_there(monkeypatch, tmp_path):
    card = AttachableCard()

    async def body(d, gadget):
        assert gadget.events == ["create"] and "detached" in d.usb_state
        card.client(True)
        assert gadget.events[-1] == "bind" and d.usb_state == "bound"
        card.client(False)
        assert gadget.events[-1] == "unbind" and "detached" in d.usb_state
        card.client(True)
        assert gadget.events[-1] == "bind"

    gadget = run_daemon(monkeypatch, tmp_path, [SlotSpec(engine="passthru")], [card], body)
    assert gadget.events == ["create", "bind", "unbind", "bind", "unbind", "destroy"]


def test_shared_gadget_keeps_the_vscard_reader_attached():
    assert DaemonOptions(slots=[SlotSpec(engine="passthru"), SlotSpec()]).shared_gadget
    assert not DaemonOptions(slots=[SlotSpec(engine="passthru")]).shared_gadget
    from ccidgadget.daemon.engines import build_card
    card = build_card(SlotSpec(engine="passthru", listen="127.0.0.1:2999"), 0, "/nonexistent", shared_gadget=True)
    assert card.attached and card.stay_attached
