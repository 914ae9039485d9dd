# SPDX-License-Identifier: GPL-3.0-or-later
"""Fault injection and resource stability through the USB gadget (issue 7, second half).

The daemon is the USB device; the host side is the guest's kernel, driven through usbfs by the raw
CCID client of faults_helpers.py (no pcscd restart per round: the loops re-enumerate the device
hundreds of times) and, where it is cheap, by pcscd + libccid + pyscard.

- host resets, deauthorises and re-probes the device 50 times while a thread keeps APDUs in flight;
- the UDC is unbound and rebound 50 times behind the daemon's back (FunctionFS UNBIND/BIND);
- VSCard and vpcd clients are SIGKILLed mid-APDU 50 times each;
- kill -9 of the daemon during PIN changes and key generations: the card is the old or the new one
  (format 2: the PIN change rewraps the data key, the new key is sealed); the same for the OpenPGP
  card's PW1/PW3 changes, whose signature key still opens afterwards;
- kill -9 of the daemon while it converts a format 1 state (keys in clear) to format 2: the file is
  the old or the new one, and the card works after the restart with the same keys and PIN;
- a full and a read-only state directory during state writes: 6581 to the host, the reason in the
  log, the state file untouched;
- 1,000 network client cycles and 100 host re-enumerations with flat RSS and fd counts;
- a 4 GiB CCID dwLength and oversized VSCard/vpcd/control frames cost no memory.

Figures (RSS, fds, latencies) are appended to ``$CCIDGADGET_VM_OUT/stability.txt`` and printed;
``scripts/bench_stability.py`` runs the module in the guest and prints that file. The kill -9 test
draws its kill moments from a fixed seed (``DEFAULT_FAULT_SEED``), so every run replays the same
moments; ``CCIDGADGET_FAULT_SEED=N`` overrides it (test_vm and the test bed pass it into the guest).
The seed is printed first (pytest shows it with a failure) and written into the figures.
"""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import socket
import statistics
import struct
import threading
import time
from pathlib import Path

from faults_helpers import (CLIENT_ATR, ICC_ABSENT, PC_TO_RDR_XFR_BLOCK, RDR_TO_PC_DATA_BLOCK, CcidDevice,
                            Figures, ForkedClient, authorize_cycle, ccid_message, daemon_status, driver_rebind,
                            find_ccid, format_1_piv_card, report, usb_device_reset, vpcd_connect, vpcd_frame,
                            vsc_connect, wait_ccid)

from ccidgadget.cards.iso import ISO_APPLET_AID

ISO = ["--card", "emulated", "--type", "iso"]
SELECT_ISO = "00A40400%02X%s00" % (len(ISO_APPLET_AID), ISO_APPLET_AID.hex())
GET_CHALLENGE = "0084000008"
GADGET = Path("/sys/kernel/config/usb_gadget/ccidgadget")
RUNTIME = Path("/run/ccidgadget")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def open_iso(slot: int = 0, timeout: float = 30) -> CcidDevice:
    dev = CcidDevice(timeout)
    try:
        dev.power_on(slot)
        _, sw = dev.apdu(SELECT_ISO, slot)
        assert sw == 0x9000, hex(sw)
    except BaseException:
        dev.close()
        raise
    return dev


def challenge_ok(dev: CcidDevice, slot: int = 0, timeout: float = 30) -> bool:
    data, sw = dev.apdu(GET_CHALLENGE, slot, timeout=timeout)
    return sw == 0x9000 and len(data) == 8


def log_problems(log: str) -> list[str]:
    return [line for line in log.splitlines() if "Traceback" in line or " ERROR " in line
            or "CRITICAL" in line or "exception" in line.lower()]


def wait_gone(timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while find_ccid() is not None:
        if time.monotonic() > deadline:
            raise AssertionError(f"the host still sees a CCID interface after {timeout} s")
        time.sleep(0.05)


# --------------------------------------------------------------------------- host resets


class ApduPump(threading.Thread):
    """Keeps GET CHALLENGE APDUs in flight through usbfs; reopens the device after every error."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.ok = 0
        self.opens = 0
        self.stale = 0                                   # answers to bSeq values not waited for
        self.errors: collections.Counter[str] = collections.Counter()
        self.halt = threading.Event()

    def run(self) -> None:
        dev = None
        while not self.halt.is_set():
            try:
                if dev is None:
                    dev = open_iso(timeout=5)
                    self.opens += 1
                # short timeout: a command sent before a reset is dropped with the session (as CCID
                # wants: the host forgot it too) and never gets an answer; a live one takes ~0.1 s
                if not challenge_ok(dev, timeout=2):
                    self.errors["bad answer"] += 1
                    continue
                self.ok += 1
            except Exception as e:                       # noqa: BLE001 - every failure is counted
                key = type(e).__name__ + (f"/{os.strerror(e.errno)}" if getattr(e, "errno", None) else "")
                self.errors[key] += 1
                if dev is not None:
                    self.stale += dev.stale
                    dev.close()
                    dev = None
                time.sleep(0.02)
        if dev is not None:
            self.stale += dev.stale
            dev.close()


def test_host_reset_and_rebind_50_times_with_apdus_in_flight(daemon, tmp_path, e2e, log_dir, wait_for_reader):
    d = daemon(*ISO, "--state-dir", str(tmp_path / "state"))
    d.wait_bound(90)
    enum_before = daemon_status()["enumerations"]
    pump = ApduPump()
    pump.start()
    t0 = time.monotonic()
    disruptions = collections.Counter()
    try:
        for i in range(50):
            for what in ("reset", "authorized" if i % 2 == 0 else "rebind"):
                # the pump must get an APDU through after every disruption: the daemon keeps serving,
                # and an APDU is in flight when the next disruption hits
                ok = pump.ok
                e2e.wait_until(lambda: pump.ok > ok or not pump.is_alive(), 60,
                               what=f"an APDU after disruption {2 * i + (what != 'reset')}")
                assert pump.is_alive(), "the APDU pump thread died"
                assert d.running, d.log()
                dev, _ = wait_ccid(30)
                if what == "reset":
                    usb_device_reset(dev)
                elif what == "authorized":
                    authorize_cycle(dev)
                else:
                    driver_rebind(dev)
                disruptions[what] += 1
        ok = pump.ok
        e2e.wait_until(lambda: pump.ok > ok + 5, 60, what="APDUs after the last disruption")
    finally:
        pump.halt.set()
        pump.join(30)
    elapsed = time.monotonic() - t0
    assert d.running, d.log()
    with open_iso() as dev:
        for _ in range(5):
            assert challenge_ok(dev)
    status = daemon_status()
    enumerations = status["enumerations"] - enum_before
    report(f"host disruptions: {dict(disruptions)} in {elapsed:.0f} s; pump {pump.ok} APDUs ok, "
           f"{pump.opens} device opens, {pump.stale} late answers skipped, client-side errors (commands cut by "
           f"a disruption) {dict(pump.errors)}; daemon saw {enumerations} enumerations")
    assert enumerations >= 100, status
    # no error storm: every disruption is an info line or two, nothing at ERROR, no traceback
    log = d.log()
    assert not log_problems(log), "\n".join(log_problems(log)[:40])
    warnings = [line for line in log.splitlines() if "WARNING" in line]
    assert len(warnings) <= 100, "\n".join(warnings[-40:])
    # and the real host stack: pcscd + libccid + pyscard
    pcscd = e2e.PcscdProcess(log_dir / "pcscd.log")
    try:
        pcscd.start()
        conn = wait_for_reader(lambda n: "ccidgadget" in n, timeout=60).createConnection()
        conn.connect()
        data, sw1, sw2 = conn.transmit(list(bytes.fromhex(SELECT_ISO)))
        assert (sw1, sw2) == (0x90, 0x00)
        e2e.close_connection(conn)                       # before pcscd goes, not in __del__
    finally:
        pcscd.stop()


# --------------------------------------------------------------------------- UDC unbind/rebind


def test_udc_unbind_rebind_50_times(daemon, tmp_path, e2e):
    d = daemon(*ISO, "--state-dir", str(tmp_path / "state"))
    d.wait_bound(90)
    udc_file = GADGET / "UDC"
    udc = udc_file.read_text().strip()
    assert udc
    t0 = time.monotonic()
    apdu_rounds = 0
    states = collections.Counter()
    for i in range(50):
        udc_file.write_text("\n")                         # behind the daemon's back
        wait_gone(30)
        # FunctionFS queues UNBIND (it supersedes a pending DISABLE) and the daemon acts on it
        states[e2e.wait_until(lambda: daemon_status()["usb_state"] == "unbound" and "unbound", 30,
                              what=f"round {i}: the daemon sees UNBIND")] += 1
        udc_file.write_text(udc + "\n")
        wait_ccid(30)
        # BIND, then ENABLE once the host configures the device (ENABLE may supersede BIND)
        states[e2e.wait_until(lambda: daemon_status()["usb_state"] == "enabled" and "enabled", 30,
                              what=f"round {i}: the daemon sees ENABLE")] += 1
        if i % 10 == 9 or i == 0:
            with open_iso() as dev:
                assert challenge_ok(dev)
            apdu_rounds += 1
        assert d.running, d.log()
    with open_iso() as dev:
        for _ in range(3):
            assert challenge_ok(dev)
    elapsed = time.monotonic() - t0
    log = d.log()
    counts = {what: log.count(text) for what, text in (
        ("unbind", "gadget unbound"), ("bind", "gadget bound to the UDC"),
        ("disable", "host disabled the reader"), ("enable", "host enumerated the reader"))}
    report(f"UDC unbind/rebind: 50 rounds in {elapsed:.0f} s, APDUs checked in {apdu_rounds + 1} rounds; "
           f"daemon states seen {dict(states)}; FunctionFS events logged {counts} "
           f"(f_fs drops a pending DISABLE/BIND that UNBIND/ENABLE supersedes)")
    assert states == {"unbound": 50, "enabled": 50}, states
    assert counts["unbind"] >= 50 and counts["enable"] >= 51, counts
    assert not log_problems(log), "\n".join(log_problems(log)[:40])


# --------------------------------------------------------------------------- clients killed mid-APDU


def test_network_clients_killed_mid_apdu_50_times_each(daemon, tmp_path):
    vsc_port, vpcd_port = free_port(), free_port()
    d = daemon("--card", "passthru", "--listen", f"127.0.0.1:{vsc_port}",
               "--card", "vpcd", "--listen", f"127.0.0.1:{vpcd_port}", "--state-dir", str(tmp_path / "state"))
    d.wait_bound(90)
    engines = {"vscard": (0, vsc_port), "vpcd": (1, vpcd_port)}
    latency: dict[str, list[float]] = {k: [] for k in engines}
    t0 = time.monotonic()
    with CcidDevice() as dev:
        for i in range(100):
            kind = "vscard" if i % 2 == 0 else "vpcd"
            slot, port = engines[kind]
            client = ForkedClient(kind, port, answers=1)
            try:
                client.wait_for(b"R")
                dev.wait_present(slot)
                assert dev.power_on(slot) == CLIENT_ATR
                assert dev.apdu("00A4040000", slot) == (b"", 0x9000)      # this client works
                seq = dev.send(PC_TO_RDR_XFR_BLOCK, slot, bytes.fromhex("00B0000000"))
                client.wait_for(b"P")                     # the APDU is at the client, unanswered
                start = time.monotonic()
                client.kill()
                answer = dev.receive(seq, timeout=20)
                latency[kind].append(time.monotonic() - start)
            finally:
                client.kill()
            assert answer.type == RDR_TO_PC_DATA_BLOCK and not answer.ok, (i, kind, str(answer))
            assert answer.icc == ICC_ABSENT, (i, kind, str(answer))
            dev.wait_notify(slot, present=False)          # the interrupt pipe reports the removal
            assert dev.slot_status(slot).icc == ICC_ABSENT
        # after all that, a client of each kind works for several APDUs
        for kind, (slot, port) in engines.items():
            client = ForkedClient(kind, port, answers=5)
            try:
                client.wait_for(b"R")
                dev.wait_present(slot)
                dev.power_on(slot)
                for _ in range(5):
                    assert dev.apdu("00A4040000", slot) == (b"", 0x9000)
            finally:
                client.kill()
            dev.wait_present(slot, present=False)
    elapsed = time.monotonic() - t0
    for kind, values in latency.items():
        report(f"{kind} client SIGKILLed mid-APDU {len(values)} times: failed XfrBlock answer after "
               f"median {statistics.median(values) * 1000:.0f} ms, max {max(values) * 1000:.0f} ms")
        assert max(values) < 5, values
    report(f"clients killed mid-APDU: 100 rounds in {elapsed:.0f} s")
    assert d.running
    assert not log_problems(d.log()), "\n".join(log_problems(d.log())[:40])


# --------------------------------------------------------------------------- kill -9 during state changes

PIV_AID = "A000000308000010000100"
SELECT_PIV = "00A404000B" + PIV_AID + "00"
MGM_KEY = bytes.fromhex("010203040506070801020304050607080102030405060708")


def tlv_parse(data: bytes) -> dict[int, bytes]:
    out, i = {}, 0
    while i < len(data):
        tag = data[i]
        i += 1
        if tag & 0x1F == 0x1F:
            tag = (tag << 8) | data[i]
            i += 1
        n = data[i]
        i += 1
        if n & 0x80:
            k = n & 0x7F
            n = int.from_bytes(data[i:i + k], "big")
            i += k
        out[tag] = data[i:i + n]
        i += n
    return out


def tlv(tag: int, value: bytes) -> bytes:
    t = tag.to_bytes(2 if tag > 0xFF else 1, "big")
    n = len(value)
    ln = bytes([n]) if n < 0x80 else (b"\x81" + bytes([n]) if n < 0x100 else b"\x82" + n.to_bytes(2, "big"))
    return t + ln + value


def apdu_hex(cla_ins_p1_p2: str, data: bytes = b"", le: bool = True) -> bytes:
    head = bytes.fromhex(cla_ins_p1_p2)
    if not data:
        return head + (b"\x00" if le else b"")
    if len(data) > 255:
        return head + b"\x00" + len(data).to_bytes(2, "big") + data + (b"\x00\x00" if le else b"")
    return head + bytes([len(data)]) + data + (b"\x00" if le else b"")


def pin_block(pin: str) -> bytes:
    return pin.encode().ljust(8, b"\xff")


class RawCard:
    """An applet through the raw client: powered on and selected (`SELECT`)."""

    SELECT = ""

    def __init__(self, dev: CcidDevice) -> None:
        self.dev = dev
        dev.power_on()
        self.ok(self.SELECT)

    def sw(self, apdu: bytes | str, timeout: float = 60) -> tuple[bytes, int]:
        return self.dev.apdu(apdu, timeout=timeout)

    def ok(self, apdu: bytes | str, timeout: float = 60) -> bytes:
        data, sw = self.sw(apdu, timeout)
        assert sw == 0x9000, f"{apdu if isinstance(apdu, str) else apdu.hex()}: {sw:04X}"
        return data


class Piv(RawCard):
    """The PIV card through the raw client."""

    SELECT = SELECT_PIV

    def verify(self, pin: str) -> int:
        return self.sw(apdu_hex("00200080", pin_block(pin), le=False))[1]

    @staticmethod
    def change_pin_apdu(old: str, new: str) -> bytes:
        return apdu_hex("00240080", pin_block(old) + pin_block(new), le=False)

    @staticmethod
    def generate_apdu(alg: int, slot: int = 0x9A) -> bytes:
        return apdu_hex(f"004700{slot:02X}", tlv(0xAC, tlv(0x80, bytes([alg]))))

    def authenticate_management(self) -> None:
        from ccidgadget.cryptocompat import TripleDES
        from cryptography.hazmat.primitives.ciphers import Cipher, modes

        cipher = Cipher(TripleDES(MGM_KEY), modes.ECB())
        data = self.ok(apdu_hex("0087039B", tlv(0x7C, tlv(0x80, b""))))
        witness_enc = tlv_parse(tlv_parse(data)[0x7C])[0x80]
        dec = cipher.decryptor()
        witness = dec.update(witness_enc) + dec.finalize()
        challenge = os.urandom(8)
        data = self.ok(apdu_hex("0087039B", tlv(0x7C, tlv(0x80, witness) + tlv(0x81, challenge))))
        enc = cipher.encryptor()
        assert tlv_parse(tlv_parse(data)[0x7C])[0x82] == enc.update(challenge) + enc.finalize()

    def metadata_public_key(self, slot: int = 0x9A) -> tuple[int, bytes] | None:
        data, sw = self.sw(f"00F700{slot:02X}00")
        if sw == 0x6A88:
            return None
        assert sw == 0x9000, hex(sw)
        meta = tlv_parse(data)
        return meta[0x01][0], meta[0x04]

    def check_private_key(self, alg: int, public: bytes, slot: int = 0x9A) -> None:
        """Sign with the slot's key; the public key of GET METADATA verifies it (PIN verified)."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec, utils

        pub = tlv_parse(public)
        if alg == 0x11:
            digest = os.urandom(32)
            data = self.ok(apdu_hex(f"0087{alg:02X}{slot:02X}", tlv(0x7C, tlv(0x82, b"") + tlv(0x81, digest))))
            sig = tlv_parse(tlv_parse(data)[0x7C])[0x82]
            key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), pub[0x86])
            key.verify(sig, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
        else:                                                    # raw RSA: m^d, checked with e
            n, e = int.from_bytes(pub[0x81], "big"), int.from_bytes(pub[0x82], "big")
            size = (n.bit_length() + 7) // 8
            m = int.from_bytes(b"\x00\x01" + os.urandom(size - 2), "big") % n
            data = self.ok(apdu_hex(f"0087{alg:02X}{slot:02X}",
                                    tlv(0x7C, tlv(0x82, b"") + tlv(0x81, m.to_bytes(size, "big")))))
            s = int.from_bytes(tlv_parse(tlv_parse(data)[0x7C])[0x82], "big")
            assert pow(s, e, n) == m, "the slot's private key does not match its public key"


def check_card(piv: Piv, acked_pin: str, pending_pin: str | None,
               acked_key: tuple[int, bytes] | None, pending_key: bool) -> tuple[str, tuple[int, bytes] | None, str]:
    """After a kill: the PIN is the acknowledged one or the pending new one, exactly one of them
    verifies; the 9A key is the acknowledged one or (if a generation was in flight) a new whole key
    pair. Returns (pin, key, which) as found."""
    sw = piv.verify(acked_pin)
    if sw == 0x9000:
        pin, which = acked_pin, "old PIN"
        if pending_pin is not None:
            assert piv.verify(pending_pin) & 0xFFF0 == 0x63C0, "both the old and the new PIN verify"
            assert piv.verify(acked_pin) == 0x9000
    else:
        assert sw & 0xFFF0 == 0x63C0, f"VERIFY {sw:04X}"
        assert pending_pin is not None, "the acknowledged PIN no longer verifies and no change was in flight"
        assert piv.verify(pending_pin) == 0x9000, "neither the old nor the new PIN verifies"
        pin, which = pending_pin, "new PIN"
    key = piv.metadata_public_key()
    if key != acked_key:
        assert pending_key, f"9A key changed without a generation in flight: {acked_key} -> {key}"
        assert key is not None, "the 9A key vanished"
        which += ", new key"
    elif pending_key:
        which += ", old key"
    if key is not None:
        piv.check_private_key(*key)
    return pin, key, which


#: The kill -9 test's seed unless CCIDGADGET_FAULT_SEED says otherwise (any integer).
DEFAULT_FAULT_SEED = 20260710


def fault_seed() -> int:
    value = os.environ.get("CCIDGADGET_FAULT_SEED", "").strip()
    if not value:
        return DEFAULT_FAULT_SEED
    try:
        return int(value, 0)
    except ValueError:
        raise AssertionError(f"CCIDGADGET_FAULT_SEED={value!r} is not an integer") from None


def test_kill_9_during_pin_changes_and_key_generation(daemon, tmp_path, e2e):
    state_dir = tmp_path / "state"
    card_dir = state_dir / "cards" / "slot0-piv"
    seed = fault_seed()
    print(f"kill -9 test: seed {seed} (replay with CCIDGADGET_FAULT_SEED={seed})")
    rng = random.Random(seed)
    rounds = 8
    pin, key = "123456", None
    pending_pin, pending_key = None, False
    outcomes = []
    durations: dict[str, list[float]] = {"pin": [], "keygen": []}
    t0 = time.monotonic()
    d = daemon("--state-dir", str(state_dir))
    for rnd in range(rounds + 1):
        d.wait_bound(120)
        with CcidDevice() as dev:
            piv = Piv(dev)
            if rnd:
                pin, key, which = check_card(piv, pin, pending_pin, key, pending_key)
                outcomes.append(which)
            else:
                assert piv.verify(pin) == 0x9000
            if rnd == rounds:
                break
            kind = "pin" if rnd % 2 == 0 else "keygen"
            alg = 0x11 if rnd % 4 == 1 else 0x06                    # P-256, RSA-1024
            if kind == "keygen":
                piv.authenticate_management()
            # a few acknowledged operations (they time the one the kill interrupts)
            for _ in range(rng.randint(1, 3)):
                start = time.monotonic()
                if kind == "pin":
                    new = f"{rng.randrange(10**6, 10**8)}"
                    piv.ok(Piv.change_pin_apdu(pin, new))
                    pin = new
                else:
                    piv.ok(Piv.generate_apdu(alg))
                    key = piv.metadata_public_key()
                durations[kind].append(time.monotonic() - start)
            # the interrupted one: sent, then SIGKILL at a random moment of its expected run time
            pending_pin, pending_key = None, False
            if kind == "pin":
                pending_pin = f"{rng.randrange(10**6, 10**8)}"
                dev.send(PC_TO_RDR_XFR_BLOCK, 0, Piv.change_pin_apdu(pin, pending_pin))
            else:
                pending_key = True
                dev.send(PC_TO_RDR_XFR_BLOCK, 0, Piv.generate_apdu(alg))
            time.sleep(rng.uniform(0, 1.2 * statistics.mean(durations[kind][-3:])))
            os.kill(d.pid, signal.SIGKILL)
            d.proc.wait()
        # whatever the moment, the file on disk is a whole state (old or new), sealed (format 2)
        state = json.loads((card_dir / "state.json").read_text())
        assert state["format"] == "ccidgadget-card" and state["type"] == "piv" and state["version"] == 2
        assert "pem" not in json.dumps(state["keys"]) and "mac" in state
        wait_gone(30)
        d = daemon("--state-dir", str(state_dir))
    leftovers = sorted(p.name for p in card_dir.iterdir() if p.name != "state.json")
    elapsed = time.monotonic() - t0
    report(f"kill -9 during state changes (seed {seed}): {rounds} kills in {elapsed:.0f} s, found after restart: {outcomes}; "
           f"op times pin {statistics.mean(durations['pin']):.2f} s, keygen {statistics.mean(durations['keygen']):.2f} s; "
           f"files left in the card directory: {leftovers}")
    assert not [p for p in leftovers if not p.startswith(".state.json.")], leftovers


SELECT_OPENPGP = "00A4040006D2760001240100"


class OpenPgp(RawCard):
    """The OpenPGP card through the raw client."""

    SELECT = SELECT_OPENPGP
    REF = {"pw1": "81", "pw3": "83"}

    def verify(self, which: str, value: str) -> int:
        return self.sw(apdu_hex("002000" + self.REF[which], value.encode(), le=False))[1]

    @classmethod
    def change_apdu(cls, which: str, old: str, new: str) -> bytes:
        return apdu_hex("002400" + cls.REF[which], old.encode() + new.encode(), le=False)

    def sign_check(self, pw1: str, public: bytes) -> None:
        """PSO:CDS with the Ed25519 signature key (the data key opened by VERIFY PW1), checked with `public`."""
        from cryptography.hazmat.primitives.asymmetric import ed25519
        assert self.verify("pw1", pw1) == 0x9000
        message = os.urandom(32)
        ed25519.Ed25519PublicKey.from_public_bytes(public).verify(self.ok(apdu_hex("002A9E9A", message)), message)


def check_pw(card: OpenPgp, which: str, acked: str, pending: str | None) -> tuple[str, str]:
    """After a kill: exactly one of the acknowledged and the pending value verifies; (value, which)."""
    sw = card.verify(which, acked)
    if sw == 0x9000:
        if pending is not None:
            assert card.verify(which, pending) & 0xFFF0 == 0x63C0, f"both the old and the new {which} verify"
            assert card.verify(which, acked) == 0x9000
        return acked, f"old {which}"
    assert sw & 0xFFF0 == 0x63C0, f"VERIFY {which} {sw:04X}"
    assert pending is not None, f"the acknowledged {which} no longer verifies and no change was in flight"
    assert card.verify(which, pending) == 0x9000, f"neither the old nor the new {which} verifies"
    return pending, f"new {which}"


def test_kill_9_during_openpgp_pin_changes(daemon, tmp_path, e2e):
    """CHANGE REFERENCE DATA of PW1 and PW3 rewraps the card's data key (keys at rest); SIGKILL at a random
    moment of one leaves the old or the new PW, never both or neither, and the data key either opens still
    decrypts the signature key."""
    state_dir = tmp_path / "state"
    card_dir = state_dir / "cards" / "slot0-openpgp"
    args = ("--card", "emulated", "--type", "openpgp", "--state-dir", str(state_dir))
    seed = fault_seed()
    rng = random.Random(seed)
    rounds = 6
    pws = {"pw1": "123456", "pw3": "12345678"}
    pending: dict[str, str | None] = {"pw1": None, "pw3": None}
    outcomes, durations = [], []
    t0 = time.monotonic()
    d = daemon(*args)
    public = None
    for rnd in range(rounds + 1):
        d.wait_bound(120)
        with CcidDevice() as dev:
            card = OpenPgp(dev)
            if public is None:                   # an Ed25519 signature key, generated on the card (PW3)
                assert card.verify("pw3", pws["pw3"]) == 0x9000
                card.ok(apdu_hex("00DA00C1", bytes.fromhex("162B06010401DA470F01"), le=False))
                template = card.ok("0047800002B60000")
                assert template[:5] == bytes.fromhex("7F49228620"), template.hex()
                public = template[5:37]
            else:
                which = "pw1" if rnd % 2 else "pw3"
                pws[which], found = check_pw(card, which, pws[which], pending[which])
                outcomes.append(found)
            card.sign_check(pws["pw1"], public)
            if rnd == rounds:
                break
            which = "pw1" if rnd % 2 == 0 else "pw3"
            pending = {"pw1": None, "pw3": None}
            for _ in range(rng.randint(1, 3)):   # acknowledged changes; they time the one the kill interrupts
                new = f"{rng.randrange(10 ** 7, 10 ** 9)}"
                start = time.monotonic()
                card.ok(OpenPgp.change_apdu(which, pws[which], new))
                durations.append(time.monotonic() - start)
                pws[which] = new
            pending[which] = f"{rng.randrange(10 ** 7, 10 ** 9)}"
            dev.send(PC_TO_RDR_XFR_BLOCK, 0, OpenPgp.change_apdu(which, pws[which], pending[which]))
            time.sleep(rng.uniform(0, 1.2 * statistics.mean(durations[-3:])))
            os.kill(d.pid, signal.SIGKILL)
            d.proc.wait()
        state = json.loads((card_dir / "state.json").read_text())
        assert state["type"] == "openpgp" and state["version"] == 2 and "mac" in state and "vault" in state
        assert all("wrap" in state[p] for p in ("pw1", "pw3")) and "pem" not in json.dumps(state["keys"])
        wait_gone(30)
        d = daemon(*args)
    leftovers = sorted(p.name for p in card_dir.iterdir() if p.name != "state.json")
    report(f"kill -9 during OpenPGP PW changes (seed {seed}): {rounds} kills in {time.monotonic() - t0:.0f} s, "
           f"found after restart: {outcomes}; CHANGE REFERENCE DATA {statistics.mean(durations):.2f} s; "
           f"files left in the card directory: {leftovers}")
    assert not [p for p in leftovers if not p.startswith(".state.json.")], leftovers


def test_kill_9_during_migration_from_format_1(daemon, tmp_path, e2e):
    """The daemon converts a format 1 card at start (one atomic rename); SIGKILL at random moments around
    it leaves the old file or the new one, and the next start converts or opens it: same keys, same PIN."""
    seed = int(os.environ.get("CCIDGADGET_FAULT_SEED", time.time()))
    rng = random.Random(seed)
    outcomes: collections.Counter[str] = collections.Counter()
    convert_time = None
    t0 = time.monotonic()
    for rnd in range(7):
        state_dir = tmp_path / f"state{rnd}"
        card_dir = state_dir / "cards" / "slot0-piv"
        made = format_1_piv_card(card_dir)
        original = (card_dir / "state.json").read_bytes()
        start = time.monotonic()
        d = daemon("--state-dir", str(state_dir))
        if convert_time is None:        # the first round measures when the converted file appears
            e2e.wait_until(lambda: json.loads((card_dir / "state.json").read_text())["version"] == 2, 120,
                           what="the format 1 state converted")
            convert_time = time.monotonic() - start
        else:
            time.sleep(rng.uniform(0.2, 1.4) * convert_time)
        os.kill(d.pid, signal.SIGKILL)
        d.proc.wait()
        now = (card_dir / "state.json").read_bytes()
        doc = json.loads(now)
        assert now == original or (doc["version"] == 2 and "mac" in doc), "neither the old nor the new state"
        outcomes["old" if now == original else "new"] += 1
        assert not [p.name for p in card_dir.iterdir() if p.name != "state.json" and not p.name.startswith(".state.json.")]
        wait_gone(30)
        d = daemon("--state-dir", str(state_dir))
        d.wait_bound(120)
        assert json.loads((card_dir / "state.json").read_text())["version"] == 2
        with CcidDevice() as dev:
            piv = Piv(dev)
            alg, public = piv.metadata_public_key(0x9A)
            n = made["keys"][0x9A].public_key().public_numbers().n
            assert alg == 0x06 and int.from_bytes(tlv_parse(public)[0x81], "big") == n, "9A is not the old key"
            sign_9e = apdu_hex("0087119E", tlv(0x7C, tlv(0x82, b"") + tlv(0x81, os.urandom(32))))
            assert piv.sw(sign_9e)[1] == 0x9000                          # 9E (PIN policy never): no PIN
            assert piv.verify(made["pin"]) == 0x9000
            piv.check_private_key(alg, public)
        d.stop()
        wait_gone(30)
    report(f"kill -9 during migration (seed {seed}): {sum(outcomes.values())} kills in "
           f"{time.monotonic() - t0:.0f} s, conversion {convert_time:.2f} s after start, file found {dict(outcomes)}")


# --------------------------------------------------------------------------- full / read-only state directory


def test_full_and_read_only_state_directory(daemon, tmp_path, e2e, run_cmd):
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    run_cmd(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "ccidgadget-faults", str(state_dir)])
    try:
        d = daemon("--state-dir", str(state_dir))
        d.wait_bound(120)
        state_file = state_dir / "cards" / "slot0-piv" / "state.json"
        with CcidDevice() as dev:
            piv = Piv(dev)
            piv.authenticate_management()
            assert piv.verify("123456") == 0x9000
            before = state_file.read_bytes()
            # fill the file system
            filler = state_dir / "filler"
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                for block in (4096, 1):
                    try:
                        while True:
                            os.write(fd, b"\0" * block)
                    except OSError:
                        pass
            finally:
                os.close(fd)
            assert piv.sw(Piv.change_pin_apdu("123456", "87654321"))[1] == 0x6581
            assert piv.sw(Piv.generate_apdu(0x11))[1] == 0x6581
            assert state_file.read_bytes() == before
            assert "no space left on the device" in d.log(), d.log()
            filler.unlink()
            assert piv.verify("123456") == 0x9000
            assert piv.verify("87654321") & 0xFFF0 == 0x63C0
            assert piv.verify("123456") == 0x9000
            assert piv.metadata_public_key() is None
            # read-only
            before = state_file.read_bytes()
            run_cmd(["mount", "-o", "remount,ro", str(state_dir)])
            try:
                assert piv.sw(Piv.change_pin_apdu("123456", "87654321"))[1] == 0x6581
                assert piv.sw(Piv.generate_apdu(0x11))[1] == 0x6581
            finally:
                run_cmd(["mount", "-o", "remount,rw", str(state_dir)])
            assert state_file.read_bytes() == before
            assert "the file system is read-only" in d.log(), d.log()
            # the card works with its old state, and writes again
            assert piv.verify("123456") == 0x9000
            piv.ok(Piv.change_pin_apdu("123456", "87654321"))
            assert piv.verify("87654321") == 0x9000
            piv.ok(Piv.generate_apdu(0x11))
        assert sorted(p.name for p in state_file.parent.iterdir()) == ["state.json"]
        errors = [line for line in d.log().splitlines() if "not saved" in line]
        report(f"full/read-only state directory: 4 refused writes answered 6581, log: {errors[:1]} ...")
        assert len(errors) == 4, errors
        assert d.stop() == 0
    finally:
        run_cmd(["umount", "-l", str(state_dir)], check=False)


# --------------------------------------------------------------------------- resource stability


def vsc_cycle(port: int) -> None:
    s = vsc_connect(port, pipelined=True)
    s.close()


def vpcd_cycle(port: int) -> None:
    s = vpcd_connect(port)
    s.close()


def settle(fig: Figures, fds: int, timeout: float = 10) -> None:
    """Sample until the fd count is back to ``fds`` (closing sockets take a loop turn)."""
    deadline = time.monotonic() + timeout
    while True:
        fig.sample()
        if fig.fd_after <= fds or time.monotonic() > deadline:
            return
        time.sleep(0.2)


def test_resource_stability_1000_clients_100_enumerations(daemon, tmp_path, e2e):
    vsc_port, vpcd_port = free_port(), free_port()
    d = daemon(*ISO, "--card", "passthru", "--listen", f"127.0.0.1:{vsc_port}",
               "--card", "vpcd", "--listen", f"127.0.0.1:{vpcd_port}", "--state-dir", str(tmp_path / "state"))
    d.wait_bound(90)
    cycles = {"vscard": lambda: vsc_cycle(vsc_port), "vpcd": lambda: vpcd_cycle(vpcd_port)}
    # warm up: the first cycles and enumerations allocate what the daemon keeps (caches, buffers)
    for i in range(40):
        cycles["vscard" if i % 2 else "vpcd"]()
    for _ in range(4):
        dev, _ = wait_ccid(30)
        authorize_cycle(dev)
    wait_ccid(30)
    with open_iso() as dev:
        assert challenge_ok(dev)
    time.sleep(1)

    fig = Figures(d.pid)
    t0 = time.monotonic()
    for i in range(1000):
        cycles["vscard" if i % 2 else "vpcd"]()
        if i % 100 == 99:
            fig.sample()
    settle(fig, fig.fd_before)
    net_time = time.monotonic() - t0
    report(fig.line(f"1000 network client cycles (500 VSCard, 500 vpcd, {net_time:.0f} s)"))
    net = fig

    fig = Figures(d.pid)
    t0 = time.monotonic()
    enum = daemon_status()["enumerations"]
    for i in range(100):
        dev, _ = wait_ccid(30)
        authorize_cycle(dev) if i % 2 == 0 else driver_rebind(dev)
        e2e.wait_until(lambda: daemon_status()["enumerations"] > enum, 30, what=f"enumeration {i + 1}")
        enum = daemon_status()["enumerations"]
        if i % 10 == 9:
            fig.sample()
        if i % 25 == 24:
            with open_iso() as dev:
                assert challenge_ok(dev)
    settle(fig, fig.fd_before)
    enum_time = time.monotonic() - t0
    report(fig.line(f"100 host re-enumerations ({enum_time:.0f} s)"))
    # the cards still work, the network slots take clients
    with open_iso() as dev:
        assert challenge_ok(dev)
    vsc_cycle(vsc_port)
    vpcd_cycle(vpcd_port)
    assert d.running
    for what, f in (("network cycles", net), ("re-enumerations", fig)):
        assert f.rss_after - f.rss_before < 5 * 1024, f.line(what)
        assert f.fd_after <= f.fd_before, f.line(what)
    assert not log_problems(d.log()), "\n".join(log_problems(d.log())[:40])


# --------------------------------------------------------------------------- maximum message sizes


def wait_closed(s: socket.socket, timeout: float = 10) -> bool:
    """True once the daemon closed the connection (EOF or RST) within ``timeout``, whatever it sent
    before; False while it keeps the connection open."""
    deadline = time.monotonic() + timeout
    try:
        while (left := deadline - time.monotonic()) > 0:
            s.settimeout(left)
            if not s.recv(65536):
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        pass
    return False


def test_maximum_message_sizes_cost_no_memory(daemon, tmp_path):
    vsc_port, vpcd_port = free_port(), free_port()
    d = daemon(*ISO, "--card", "passthru", "--listen", f"127.0.0.1:{vsc_port}",
               "--card", "vpcd", "--listen", f"127.0.0.1:{vpcd_port}", "--state-dir", str(tmp_path / "state"))
    d.wait_bound(90)
    with open_iso() as dev:
        assert challenge_ok(dev)
        fig = Figures(d.pid)
        # 1. a 4 GiB XfrBlock header in a short transfer: answered at once with bError 1 (dwLength)
        dev.seq = (dev.seq + 1) & 0xFF
        dev.bulk_out(ccid_message(PC_TO_RDR_XFR_BLOCK, 0, dev.seq, os.urandom(100), length=0xFFFFFFFF))
        r = dev.receive(dev.seq)
        assert r.type == RDR_TO_PC_DATA_BLOCK and not r.ok and r.error == 1, str(r)
        assert challenge_ok(dev)
        # 2. the same header followed by 16 MiB of payload in full-packet transfers: skipped, not stored
        dev.seq = (dev.seq + 1) & 0xFF
        seq = dev.seq
        chunk = 64 * 1024
        first = ccid_message(PC_TO_RDR_XFR_BLOCK, 0, seq, b"\xAA" * (chunk - 10), length=0xFFFFFFFF)
        t0 = time.monotonic()
        dev.bulk_out(first, timeout=60)
        junk = os.urandom(chunk)
        for i in range(16 * 16 - 1):
            dev.bulk_out(junk, timeout=60)
            if i % 32 == 31:
                fig.sample()
        dev.bulk_out(b"\x00", timeout=60)                 # a short packet ends the transfer
        stream_time = time.monotonic() - t0
        r = dev.receive(seq)
        assert r.type == RDR_TO_PC_DATA_BLOCK and not r.ok and r.error == 1, str(r)
        for _ in range(3):
            assert challenge_ok(dev)
        fig.sample()
        report(fig.line(f"CCID dwLength 4 GiB + 16 MiB streamed ({stream_time:.1f} s)"))
        assert fig.rss_max - fig.rss_before < 2 * 1024, fig.line("4 GiB dwLength")
    # 3. VSCard: a header announcing 4 GiB closes the connection, before and after the handshake
    fig = Figures(d.pid)
    for handshake in (False, True):
        s = vsc_connect(vsc_port) if handshake else socket.create_connection(("127.0.0.1", vsc_port), timeout=10)
        t0 = time.monotonic()
        s.sendall(struct.pack(">III", 7, 0, 0xFFFFFFFF) + b"\x00" * 1024)
        assert wait_closed(s) and time.monotonic() - t0 < 5
        s.close()
        s = vsc_connect(vsc_port)                        # the next client is served
        s.close()
    # one byte over the maximum VSCard payload (an extended APDU + header)
    s = vsc_connect(vsc_port)
    s.sendall(struct.pack(">III", 7, 0, 65545))
    assert wait_closed(s)
    s.close()
    # 4. vpcd: the length field is 16 bits; an unsolicited maximal frame closes the connection
    s = vpcd_connect(vpcd_port)
    s.sendall(vpcd_frame(b"\x55" * 0xFFFF))
    assert wait_closed(s)
    s.close()
    s = vpcd_connect(vpcd_port)
    s.close()
    # 5. control socket: a line without end is cut off at its maximum
    c = socket.socket(socket.AF_UNIX)
    c.connect(str(RUNTIME / "control.sock"))
    try:
        c.sendall(b"{" + b" " * (256 * 1024))
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert wait_closed(c)
    c.close()
    assert daemon_status()["slots"]
    time.sleep(0.5)
    fig.sample()
    report(fig.line("VSCard 4 GiB / over-maximum headers, vpcd maximal frame, control socket 256 KiB line"))
    assert fig.rss_after - fig.rss_before < 2 * 1024, fig.line("network frames")
    assert fig.fd_after <= fig.fd_before + 0, fig.line("network frames")
    with open_iso() as dev:
        assert challenge_ok(dev)
    assert d.running
    assert not log_problems(d.log()), "\n".join(log_problems(d.log())[:40])
