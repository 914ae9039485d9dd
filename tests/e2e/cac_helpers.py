# SPDX-License-Identifier: GPL-3.0-or-later
"""Raw-APDU checks of the CAC card (docs/cac.md section 5), shared by the e2e test.

``run_status_word_checks(tx)`` drives a card through a sequence of bad (and a few good) APDUs and
returns the mismatches. ``tx(apdu_bytes) -> (data, sw)`` is anything that talks to a CAC card: a
pyscard connection through the USB gadget in tests/e2e/test_cac.py, or ``card.process_apdu`` in
process. GET RESPONSE chaining (61xx) is followed here, so ``tx`` may return 61xx.
``build_nss_db`` makes the certificate database of QEMU's ccid.rst (test_cac.py, qemu_host.py,
scripts/bench_qemu_ccid.py).

None of the checks changes the PIN retry counter, and the PIN is left unverified.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Callable

from ccidgadget.cards.cac.applets import ACA_AID, CCC_AID, pki_aid

PIV_AID = bytes.fromhex("A000000308000010000100")
UNKNOWN_AID = bytes.fromhex("A000000079010A")          # a PKI applet number the card does not have
CHUNK = 240                                              # card-cac.c CAC_MAX_CHUNK_SIZE

Tx = Callable[[bytes], "tuple[bytes, int]"]


def build_nss_db(directory: Path) -> str:
    """QEMU's docs/system/devices/ccid.rst NSS database (CA ``fake-smartcard-ca`` + ``id-cert``,
    ``signing-cert``, ``encryption-cert``), verbatim but for --empty-password, -z (noise: no typing)
    and -m (distinct serials: certutil's clock-derived default repeats within a second).
    Returns ``sql:DIR``."""
    directory = Path(directory)
    directory.mkdir()
    db = f"sql:{directory}"
    noise = directory.parent / f"{directory.name}.noise"
    noise.write_bytes(os.urandom(64))
    z = ["-z", str(noise)]

    def certutil(*args: str) -> None:
        p = subprocess.run(["certutil", *args], capture_output=True, stdin=subprocess.DEVNULL, timeout=120)
        if p.returncode != 0:
            raise AssertionError(f"exit {p.returncode}: certutil {' '.join(args)}\n"
                                 f"{p.stdout.decode(errors='replace')}{p.stderr.decode(errors='replace')}")

    certutil("-N", "-d", db, "--empty-password")
    certutil("-S", "-d", db, "-s", "CN=Fake Smart Card CA", "-x", "-t", "TC,TC,TC", "-n", "fake-smartcard-ca",
             "-m", "1", *z)
    certutil("-S", "-d", db, "-t", ",,", "-s", "CN=John Doe", "-n", "id-cert", "-c", "fake-smartcard-ca",
             "-m", "2", *z)
    certutil("-S", "-d", db, "-t", ",,", "-s", "CN=John Doe (signing)", "--nsCertType", "smime",
             "-n", "signing-cert", "-c", "fake-smartcard-ca", "-m", "3", *z)
    certutil("-S", "-d", db, "-t", ",,", "-s", "CN=John Doe (encryption)", "--nsCertType", "sslClient",
             "-n", "encryption-cert", "-c", "fake-smartcard-ca", "-m", "4", *z)
    return db


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def with_get_response(raw: Tx) -> Tx:
    """Follow 61xx with GET RESPONSE, as the host's T=0 layer would."""
    def tx(apdu: bytes) -> tuple[bytes, int]:
        data, sw = raw(apdu)
        while sw >> 8 == 0x61:
            more, sw = raw(bytes((0x00, 0xC0, 0x00, 0x00, sw & 0xFF)))
            data += more
        return data, sw
    return tx


def select_aid(aid: bytes, p2: int = 0x00) -> bytes:
    return bytes((0x00, 0xA4, 0x04, p2, len(aid))) + aid + b"\x00"


def verify_apdu(pin: bytes) -> bytes:
    return h("00 20 00 00 08") + pin.ljust(8, b"\xFF")


def run_status_word_checks(tx: Tx) -> tuple[list[str], list[str]]:
    """Returns (mismatches, log): each step as 'what: APDU -> SW (want SW)'."""
    tx = with_get_response(tx)
    bad: list[str] = []
    log: list[str] = []

    def check(what: str, apdu: bytes, want_sw: int, want_data: bytes | None = None,
              want_len: int | None = None) -> bytes:
        data, sw = tx(apdu)
        line = f"{what}: {apdu.hex(' ')} -> {sw:04X} ({len(data)} bytes; want {want_sw:04X})"
        log.append(line)
        if sw != want_sw or (want_data is not None and data != want_data) \
                or (want_len is not None and len(data) != want_len):
            bad.append(line + (f" data {data.hex()} want {want_data.hex()}" if want_data is not None else ""))
        return data

    # SELECT: the PIV probe OpenSC sends first, an applet the card lacks, a real one (FCI)
    check("SELECT PIV", select_aid(PIV_AID), 0x6A82)
    check("SELECT unknown AID", select_aid(UNKNOWN_AID), 0x6A82)
    check("SELECT unknown RID", select_aid(h("D2760001240102")), 0x6A82)
    check("SELECT PKI 0", select_aid(pki_aid(0)), 0x9000,
          want_data=b"\x6F\x0B\x84\x07" + pki_aid(0) + b"\xA5\x00")
    check("SELECT object 0105 (unknown)", h("00 A4 02 00 02 01 05"), 0x6A82)
    check("SELECT object with a 3-byte id", h("00 A4 02 00 03 01 00 00"), 0x6984)
    check("SELECT by path (no file system)", h("00 A4 08 00 02 3F 00"), 0x6A81)
    check("SELECT object 0100", h("00 A4 02 00 02 01 00"), 0x9000, want_data=b"")

    # READ BUFFER: 2-byte length of the TL buffer, then past its end
    head = check("READ BUFFER TL length", h("80 52 00 00 02 01 02 02"), 0x9000, want_len=2)
    tl_len = int.from_bytes(head[:2], "little") if len(head) == 2 else 0
    end, past = 2 + tl_len, 2 + tl_len + 1
    check("READ BUFFER at the end", bytes((0x80, 0x52, end >> 8, end & 0xFF, 2, 1, 1, 0)), 0x9000, want_data=b"")
    check("READ BUFFER offset (P1P2) past the end", bytes((0x80, 0x52, past >> 8, past & 0xFF, 2, 1, 1, 0)),
          0x6A86)
    check("READ BUFFER offset FFFF", h("80 52 FF FF 02 02 01 00"), 0x6A86)
    check("READ BUFFER Lc=1", h("80 52 00 00 01 01 00"), 0x6984)
    check("READ BUFFER neither TL nor V", h("80 52 00 00 02 03 02 00"), 0x6984)
    check("UPDATE BUFFER (read-only card)", h("80 58 00 00 01 00"), 0x6985)

    # GET PROPERTIES
    check("GET PROPERTIES all", h("80 56 01 00 00"), 0x9000)
    check("GET PROPERTIES P1=00", h("80 56 00 00 00"), 0x6A86)
    check("GET PROPERTIES P2=01", h("80 56 01 01 00"), 0x6A86)
    check("GET PROPERTIES tag 77 absent", h("80 56 02 00 01 77 00"), 0x6A88)

    # SIGN/DECRYPT before the PIN, and with bad P1/P2
    check("SIGN without PIN", h("80 42 00 00 01 00 00"), 0x6982)
    check("SIGN P1=01", h("80 42 01 00 01 00 00"), 0x6A86)
    check("SIGN P2=01", h("80 42 00 01 01 00 00"), 0x6A86)

    # VERIFY forms that must not count as a wrong PIN
    check("VERIFY status", h("00 20 00 00"), 0x63C3)
    check("VERIFY P2=01 (no such PIN)", h("00 20 00 01 08 3132333435363738"), 0x6A88)
    check("VERIFY P1=01", h("00 20 01 00 08 3132333435363738"), 0x6A86)
    check("VERIFY 9-byte PIN", h("00 20 00 00 09 313233343536373839"), 0x6700)
    check("VERIFY status unchanged", h("00 20 00 00"), 0x63C3)

    # card-wide
    check("GET CHALLENGE", h("00 84 00 00 08"), 0x9000, want_len=8)
    check("GET CHALLENGE P1=01", h("00 84 01 00 08"), 0x6A86)
    check("unknown INS CA", h("80 CA 00 00 00"), 0x6D00)

    # the ACA: GET ACR forms; GET ACR anywhere else is an unknown instruction
    check("SELECT ACA", select_aid(ACA_AID), 0x9000)
    check("GET ACR table", h("80 4C 00 00 00"), 0x9000)
    check("GET ACR P1=30", h("80 4C 30 00 00"), 0x6A86)
    check("GET ACR P2=01", h("80 4C 00 01 00"), 0x6A86)
    check("GET ACR ACRID 55 absent", h("80 4C 01 00 01 55 00"), 0x6A88)
    check("SELECT CCC", select_aid(CCC_AID), 0x9000)
    check("GET ACR in the CCC", h("80 4C 00 00 00"), 0x6D00)
    check("SIGN in the CCC", h("80 42 00 00 01 00 00"), 0x6D00)
    return bad, log
