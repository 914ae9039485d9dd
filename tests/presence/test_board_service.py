# SPDX-License-Identifier: GPL-3.0-or-later
"""Touch and PIN pad through the reader service, the board service and the real control socket.

A PIV card whose key has touch policy ALWAYS signs on its worker thread and
waits; `ccidgadget confirm`'s request (a real AF_UNIX client in another
thread) or the timeout or an Abort answers.  PC_to_RDR_Secure collects a PIN
over the control socket and the card checks it.  No kernel devices here:
tests/e2e/test_presence.py drives uinput and gpio-sim in the guest.
"""

from __future__ import annotations

import asyncio
import hashlib
import struct

import pytest

from ccidgadget.cards import pin
from ccidgadget.cards.piv import PivCard
from ccidgadget.cards.tlv import tlv
from ccidgadget.ccid import ReaderConfig
from ccidgadget.daemon.control import ControlError, ControlServer, call
from ccidgadget.daemon.service import ReaderService
from ccidgadget.presence.config import BoardConfig, PinpadConfig, PresenceConfig
from ccidgadget.presence.service import BoardService

from tests.service.test_reader_service import ICC_POWER_ON, XFR_BLOCK, ListTransport, exchange, msg, transmit
from tests.ccid.test_secure import OPENSC_PIV_VERIFY, gnupg_verify

SECURE = 0x69
ABORT_REQUEST = 0x01
PIV_AID = bytes.fromhex("A00000030800001000")
MGMT = bytes.fromhex("010203040506070801020304050607080102030405060708")


@pytest.fixture(autouse=True)
def cheap_kdf(monkeypatch):
    monkeypatch.setattr(pin, "SCRYPT_N", 2 ** 4)


def apdu(ins, p1, p2, data=b"", le=True):
    out = bytes([0, ins, p1, p2]) + (bytes([len(data)]) + data if data else b"")
    return out + (b"\x00" if le else b"")


class Rig:
    """Reader service + board service + control server, on this loop."""

    def __init__(self, tmp_path, board: BoardConfig, cards) -> None:
        self.tmp_path = tmp_path
        self.board = BoardService(board, len(cards))
        self.service = ReaderService(cards, config=ReaderConfig(slots=len(cards), **self.board.reader_features()),
                                     time_extension_interval=0.2)
        self.t = ListTransport(self.service)
        self.sock = tmp_path / "control.sock"
        self.control = ControlServer(self, self.sock)

    # ControlTarget, as the daemon delegates it
    def status(self):
        return {"slots": [{"slot": s, "waiting": self.board.waiting(s)} for s in range(len(self.service.cards))]}

    def confirm(self, slot, by):
        return self._call(self.board.confirm, slot, by)

    def deny(self, slot, by):
        return self._call(self.board.deny, slot, by)

    def pin(self, slot, current, new, cancel, by):
        return self._call(self.board.pin, slot, current, new, cancel=cancel, by=by)

    @staticmethod
    def _call(fn, *args, **kw):
        try:
            return fn(*args, **kw)
        except (LookupError, ValueError) as e:
            raise ControlError(str(e.args[0])) from None

    async def __aenter__(self):
        await self.board.start()
        for slot, card in enumerate(self.service.cards):
            self.board.attach(slot, card)
        self.service.cancel_listeners.append(self.board.cancel)
        self.service.pin_entry = self.board.pin_entry if self.board.pinpad else None
        self.service.attach(self.t)
        await self.service.start()
        await self.control.start()
        return self

    async def __aexit__(self, *exc):
        await self.control.stop()
        await self.service.stop()
        self.board.stop()

    async def client(self, verb, **args):
        return await asyncio.get_running_loop().run_in_executor(None, lambda: call(self.sock, verb, timeout=5,
                                                                                    **args))

    async def wait_for(self, slot, kind, timeout=5.0):
        for _ in range(int(timeout / 0.02)):
            w = self.board.waiting(slot)
            if w and w["waits_for"] == kind:
                return w
            await asyncio.sleep(0.02)
        raise AssertionError(f"slot {slot} never waited for {kind}")

    async def power_on_select(self, slot=0, seq=1):
        r = await exchange(self.t, self.service, ICC_POWER_ON, slot, seq)
        assert r["error"] == 0
        r, data = await transmit(self.t, self.service, apdu(0xA4, 0x04, 0x00, PIV_AID), slot, seq + 1)
        assert data[-2:] == b"\x90\x00"


def piv_with_key(tmp_path, name, touch=0x02):
    from ccidgadget.cards.piv.constants import ORIGIN, PIN_POLICY, TOUCH_POLICY
    from ccidgadget.cards.piv.state import SlotKey
    from ccidgadget.cards.keys import ALGORITHM, CardKey
    card = PivCard.from_directory(tmp_path / name)
    state = card.state.clone()
    state.keys[0x9A] = SlotKey(CardKey.generate(ALGORITHM.ECCP256), PIN_POLICY.NEVER, TOUCH_POLICY(touch),
                               ORIGIN.GENERATED)
    card.store.save(state.to_dict())
    card.state = state
    return card


SIGN = apdu(0x87, 0x11, 0x9A, tlv(0x7C, tlv(0x82) + tlv(0x81, hashlib.sha256(b"m").digest())))


def test_touch_confirmed_over_the_control_socket_while_time_extensions_flow(tmp_path):
    async def main():
        board = BoardConfig(presence=PresenceConfig(timeout=10))
        async with Rig(tmp_path, board, [piv_with_key(tmp_path, "a")]) as rig:
            await rig.power_on_select()
            rig.service.bulk_out(msg(XFR_BLOCK, 0, 3, SIGN), transfer_end=True)
            w = await rig.wait_for(0, "touch")
            assert w["what"] == "PIV slot 9A ECDSA signature"
            extensions = 0
            while extensions < 2:                       # the host hears from us while the person walks over
                r = await rig.t.next()
                assert (r["seq"], r["status"] & 0xC0) == (3, 0x80)
                extensions += 1
            assert (await rig.client("confirm", slot=0)) == {"slot": 0, "confirmed": True}
            while True:
                r = await rig.t.next()
                if r["status"] & 0xC0 != 0x80:
                    break
            assert r["data"][-2:] == b"\x90\x00"
            assert rig.board.hub.confirmed == 1
            with pytest.raises(ControlError, match="does not wait for a touch"):
                await rig.client("confirm", slot=0)
    asyncio.run(main())


def test_deny_and_timeout_answer_6982(tmp_path):
    async def main():
        board = BoardConfig(presence=PresenceConfig(timeout=1))
        async with Rig(tmp_path, board, [piv_with_key(tmp_path, "a")]) as rig:
            await rig.power_on_select()
            rig.service.bulk_out(msg(XFR_BLOCK, 0, 3, SIGN), transfer_end=True)
            await rig.wait_for(0, "touch")
            assert (await rig.client("deny", slot=0))["denied"] == "touch"
            r, data = await _answer(rig)
            assert data[-2:] == b"\x69\x82"
            rig.service.bulk_out(msg(XFR_BLOCK, 0, 4, SIGN), transfer_end=True)
            r, data = await _answer(rig, timeout=5)
            assert data[-2:] == b"\x69\x82" and rig.board.hub.timed_out == 1
    asyncio.run(main())


async def _answer(rig, timeout=5.0):
    while True:
        r = await rig.t.next(timeout)
        if r["status"] & 0xC0 != 0x80:
            return r, r["data"]


def test_abort_frees_the_worker_and_the_other_slot_keeps_serving(tmp_path):
    async def main():
        board = BoardConfig(presence=PresenceConfig(timeout=30))
        cards = [piv_with_key(tmp_path, "a"), piv_with_key(tmp_path, "b", touch=0x01)]
        async with Rig(tmp_path, board, cards) as rig:
            await rig.power_on_select(0)
            await rig.power_on_select(1, seq=5)
            rig.service.bulk_out(msg(XFR_BLOCK, 0, 3, SIGN), transfer_end=True)
            await rig.wait_for(0, "touch")
            # slot 1 (touch NEVER) signs while slot 0 waits
            r, data = await transmit(rig.t, rig.service, SIGN, 1, 7)
            assert data[-2:] == b"\x90\x00"
            # the host aborts slot 0 (§5.3.1: ep0 ABORT + PC_to_RDR_Abort)
            rig.service.control_request(0x21, ABORT_REQUEST, 0 | 3 << 8, 0, 0)
            r = await rig.t.next()
            assert (r["seq"], r["error"]) == (3, 0xFF)                 # CMD_ABORTED
            assert rig.board.waiting(0) is None and rig.board.hub.cancelled == 1
            rig.service.bulk_out(msg(0x72, 0, 3), transfer_end=True)
            r = await rig.t.next()
            assert r["error"] == 0
            # the worker is free: the next command on slot 0 runs (and asks again)
            rig.service.bulk_out(msg(XFR_BLOCK, 0, 4, apdu(0xCB, 0x3F, 0xFF, tlv(0x5C, b"\x7e"))), transfer_end=True)
            r, data = await _answer(rig, timeout=2)
            assert data[-2:] == b"\x90\x00"
    asyncio.run(main())


def test_pin_pad_verify_through_the_control_socket(tmp_path):
    async def main():
        board = BoardConfig(pinpad=PinpadConfig(enabled=True, timeout=5, max_timeout=5))
        async with Rig(tmp_path, board, [piv_with_key(tmp_path, "a")]) as rig:
            assert rig.service.reader.descriptor.bPINSupport == 0x03
            await rig.power_on_select()
            # wrong PIN: the card counts it
            rig.service.bulk_out(msg(SECURE, 0, 3, OPENSC_PIV_VERIFY), transfer_end=True)
            w = await rig.wait_for(0, "pin")
            assert (w["operation"], w["min"], w["max"], w["entries"]) == ("verify", 4, 8, ["current"])
            with pytest.raises(ControlError, match="4..8"):
                await rig.client("pin", slot=0, current="12")
            await rig.client("pin", slot=0, current="999999")
            r, data = await _answer(rig)
            assert data == b"\x63\xC2"
            # right PIN
            rig.service.bulk_out(msg(SECURE, 0, 4, OPENSC_PIV_VERIFY), transfer_end=True)
            await rig.wait_for(0, "pin")
            await rig.client("pin", slot=0, current="123456")
            r, data = await _answer(rig)
            assert data == b"\x90\x00"
            # cancel: bError EF; timeout: bError F0 (bTimeOut 30 capped by max_timeout... GnuPG sends 0 -> 5 s)
            rig.service.bulk_out(msg(SECURE, 0, 5, OPENSC_PIV_VERIFY), transfer_end=True)
            await rig.wait_for(0, "pin")
            assert (await rig.client("deny", slot=0))["denied"] == "pin"
            r = await rig.t.next()
            assert (r["seq"], r["status"] & 0xC0, r["error"]) == (5, 0x40, 0xEF)
    asyncio.run(main())


def test_pin_pad_timeout_is_bError_f0(tmp_path):
    async def main():
        board = BoardConfig(pinpad=PinpadConfig(enabled=True, timeout=1, max_timeout=1))
        async with Rig(tmp_path, board, [piv_with_key(tmp_path, "a")]) as rig:
            await rig.power_on_select()
            rig.service.bulk_out(msg(SECURE, 0, 3, gnupg_verify(0)), transfer_end=True)
            r, _ = await _answer(rig, timeout=5)
            assert (r["seq"], r["status"] & 0xC0, r["error"]) == (3, 0x40, 0xF0)
            assert rig.board.pinpad.timed_out == 1
    asyncio.run(main())


def test_ccidgadget_pin_reads_the_pin_and_it_reaches_no_log(tmp_path, monkeypatch, caplog, capsys):
    import io
    import logging

    from ccidgadget import cli
    caplog.set_level(logging.DEBUG)
    secret = "73915824"
    monkeypatch.setattr("sys.stdin", io.StringIO("123456\n" + secret + "\n" + secret + "\n"))

    async def main():
        board = BoardConfig(pinpad=PinpadConfig(enabled=True, timeout=10, max_timeout=10))
        async with Rig(tmp_path, board, [piv_with_key(tmp_path, "a")]) as rig:
            await rig.power_on_select()
            # CHANGE REFERENCE DATA as OpenSC sends it for PIV: current PIN, new PIN twice
            from tests.ccid.test_secure import libccid_modify, pcsc_modify
            structure = libccid_modify(pcsc_modify(fmt=0x02, block=0x08, old=0, new=8, min_digits=4, max_digits=8,
                                                   confirm=0x03, messages=0,
                                                   apdu=bytes.fromhex("0024008010") + b"\xff" * 16))
            rig.service.bulk_out(msg(SECURE, 0, 3, structure), transfer_end=True)
            rc = await asyncio.to_thread(cli.main, ["pin", "0", "--stdin", "--wait", "5", "--socket", str(rig.sock)])
            assert rc == 0
            r, data = await _answer(rig)
            assert data == b"\x90\x00"
            # the new PIN works
            r, data = await transmit(rig.t, rig.service, apdu(0x20, 0x00, 0x80, secret.encode(), le=False), 0, 4)
            assert data[-2:] == b"\x90\x00"
    asyncio.run(main())
    assert "PIN passed to the card" in capsys.readouterr().out
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "slot 0 waits for a PIN (modify" in text
    assert secret not in text and "123456" not in text
