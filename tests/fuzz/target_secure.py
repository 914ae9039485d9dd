# SPDX-License-Identifier: GPL-3.0-or-later
"""Fuzz target `secure`: PC_to_RDR_Secure abData (CCID §6.1.11) through the parser and the PIN APDU builder.

The first input byte chooses a PIN (length and characters); the rest is abData.
Checked, from the structure's own rules (not the parser's code):

- parsing fails only with SecureError, whose offset lies in the message
  (1 for dwLength, 10.. inside abData);
- an accepted structure is a VERIFY or MODIFY whose APDU template starts the
  built APDU (CLA INS P1 P2 kept), whose digit limits satisfy 1 <= min <= max;
- a PIN of an allowed length and coding is built into a short APDU whose Lc
  matches its data; any other PIN is refused with ValueError, never an
  exception of another kind.
"""

from __future__ import annotations

from ccidgadget.ccid.secure import PINOperation, SecureError, parse_secure

from .harness import Finding, Target, register


def run_secure(data: bytes) -> None:
    if not data:
        return
    choice, ab_data = data[0], data[1:]
    try:
        request = parse_secure(ab_data)
    except SecureError as e:
        if not (e.offset == 1 or 10 <= e.offset < 10 + max(len(ab_data), 1)):
            raise Finding(f"bError {e.offset} is outside the message ({len(ab_data)} bytes of abData)") from e
        return
    if request.operation not in (PINOperation.VERIFY, PINOperation.MODIFY):
        raise Finding(f"accepted bPINOperation {request.operation}")
    if not 1 <= request.min_digits <= request.max_digits:
        raise Finding(f"digit limits {request.min_digits}..{request.max_digits}")
    length = request.min_digits + choice % (request.max_digits - request.min_digits + 1)
    digits = "".join(str((choice + i) % 10) for i in range(length))
    for pin in (digits, digits + "0" * (request.max_digits + 1 - length), "x" * length):
        ok = request.check_pin(pin) is None
        try:
            apdu = request.build_apdu(pin if request.wants_current else None, pin if request.wants_new else None)
        except ValueError:
            continue          # refused: a PIN that does not fit, or a variable block over 255 bytes
        if not ok:
            raise Finding(f"built an APDU with a PIN check_pin refuses ({len(pin)} characters)")
        if apdu[:4] != request.apdu[:4] or len(apdu) < 5:
            raise Finding(f"APDU header changed: {request.apdu[:4].hex()} -> {apdu[:4].hex()}")
        lc = apdu[4]
        if len(apdu) - 5 - lc not in (0, 1):
            raise Finding(f"built APDU {apdu.hex()}: Lc {lc} does not match its data")


def secure_seeds() -> dict[str, bytes]:
    from tests.ccid.test_secure import OPENSC_PIV_VERIFY, acr83_verify, gnupg_modify, gnupg_verify
    return {
        "opensc-piv-verify": b"\x05" + OPENSC_PIV_VERIFY,
        "gnupg-varlen-verify": b"\x02" + gnupg_verify(0),
        "gnupg-varlen-modify": b"\x07" + gnupg_modify(0),
        "gnupg-fixed-modify": b"\x00" + gnupg_modify(6, minlen=6, maxlen=6),
        "acr83-bits": b"\x09" + acr83_verify(0x39, 0x49, 0x02, 10, "0020000109 57 3030303030303030"),
        "acr83-bytes": b"\x03" + acr83_verify(0x89, 0x48, 0x04, 10, "0020000109 57 3030303030303030"),
        "short": b"\x00\x00\x1e",
    }


register(Target("secure", lambda: run_secure, secure_seeds, max_len=512, bounded_runs=8000))
