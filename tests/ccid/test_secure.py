# SPDX-License-Identifier: GPL-3.0-or-later
"""PC_to_RDR_Secure structures (CCID §6.1.11): parsing and building the PIN APDU.

The inputs are the structures real hosts send: the PC/SC part 10 structures
OpenSC (reader-pcsc.c part10_build_*_pin_block) and GnuPG (scd/apdu.c
pcsc_pinpad_*) build, turned into abData the way libccid does it
(commands.c SecurePINVerify/Modify: bTimeOut2 and ulDataLength dropped, a
modification's bMsgIndex2/3 only when bNumberMessage says so).  The expected
APDUs of the bit- and byte-level formats are the worked examples of ACS's
ACR83 reference manual (§11.3-11.5, §12.9).
"""

from __future__ import annotations

import struct

import pytest

from ccidgadget.ccid.secure import ConfirmPIN, EntryValidation, PINCoding, PINOperation, SecureError, parse_secure


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


# -- what hosts hand to SCardControl (PC/SC v2 part 10), and what libccid makes of it --------
def pcsc_verify(*, timeout=0, fmt, block, length=0, min_digits, max_digits, validation=0x02, messages=0,
                lang=0x0409, apdu: bytes) -> bytes:
    return (bytes([timeout, timeout, fmt, block, length]) + struct.pack("<H", min_digits << 8 | max_digits)
            + bytes([validation, messages]) + struct.pack("<H", lang) + b"\x00" + b"\x00\x00\x00"
            + struct.pack("<I", len(apdu)) + apdu)


def pcsc_modify(*, timeout=0, fmt, block, length=0, old, new, min_digits, max_digits, confirm, validation=0x02,
                messages=0, indexes=(0, 1, 2), apdu: bytes) -> bytes:
    return (bytes([timeout, timeout, fmt, block, length, old, new]) + struct.pack("<H", min_digits << 8 | max_digits)
            + bytes([confirm, validation, messages]) + struct.pack("<H", 0x0409) + bytes(indexes)
            + b"\x00\x00\x00" + struct.pack("<I", len(apdu)) + apdu)


def libccid_verify(pcsc: bytes) -> bytes:
    """SecurePINVerify: bPINOperation 0, then every byte but bTimeOut2 (1) and ulDataLength (15..18)."""
    validation = pcsc[7]
    body = bytearray(b for i, b in enumerate(pcsc) if i != 1 and not 15 <= i <= 18)
    if validation == 0 or validation > 7:       # libccid's own fix-up
        body[6] = 0x02
    return b"\x00" + bytes(body)


def libccid_modify(pcsc: bytes) -> bytes:
    """SecurePINModify: bPINOperation 1; drops bTimeOut2, ulDataLength (20..23), bMsgIndex2/3 (15, 16) as libccid."""
    messages = pcsc[11]
    out = bytearray()
    for i, b in enumerate(pcsc):
        if i == 1 or 20 <= i <= 23 or (i == 15 and messages == 0) or (i == 16 and messages < 3):
            continue
        out.append(b)
    return b"\x01" + bytes(out)


# -- OpenSC: PIV VERIFY through the PIN pad (card-piv.c: ASCII, 8-byte block padded with FF) --------
OPENSC_PIV_VERIFY = libccid_verify(pcsc_verify(
    timeout=30, fmt=0x82, block=0x08, min_digits=4, max_digits=8, apdu=h("00 20 00 80 08 FFFFFFFFFFFFFFFF")))


def test_opensc_piv_verify() -> None:
    r = parse_secure(OPENSC_PIV_VERIFY)
    assert r.operation == PINOperation.VERIFY
    assert r.timeout == 30
    assert (r.min_digits, r.max_digits) == (4, 8)
    assert r.format.coding == PINCoding.ASCII and r.format.byte_units and r.format.block_size == 8
    assert r.validation == EntryValidation.VALIDATION_KEY
    assert r.prompts() == ["current"]
    assert r.build_apdu("123456") == h("00 20 00 80 08 313233343536 FFFF")
    assert r.build_apdu("12345678") == h("00 20 00 80 08 3132333435363738")


def test_opensc_piv_change_reference_data() -> None:
    # Without a display (wLcdLayout 0) OpenSC sends bNumberMessage 0; libccid then drops bMsgIndex2 and 3.
    abdata = libccid_modify(pcsc_modify(timeout=30, fmt=0x02, block=0x08, old=0, new=8, min_digits=4, max_digits=8,
                                        confirm=0x03, messages=0, apdu=h("00 24 00 80 10" + "FF" * 16)))
    r = parse_secure(abdata)
    assert r.operation == PINOperation.MODIFY
    assert r.confirm == ConfirmPIN.CURRENT_PIN | ConfirmPIN.CONFIRM_NEW
    assert r.prompts() == ["current", "new", "confirm"]
    assert r.msg_indexes == (0,)
    assert r.build_apdu("123456", "87654321") == h("00 24 00 80 10 313233343536FFFF 3837363534333231")


def test_opensc_piv_reset_retry_counter() -> None:
    # RESET RETRY COUNTER: the PUK is the "current" PIN, OpenSC asks for current + new twice as well.
    abdata = libccid_modify(pcsc_modify(fmt=0x02, block=0x08, old=0, new=8, min_digits=4, max_digits=8,
                                        confirm=0x03, messages=3, apdu=h("00 2C 00 80 10" + "FF" * 16)))
    r = parse_secure(abdata)
    assert r.msg_indexes == (0, 1, 2)
    assert r.build_apdu("12345678", "1234") == h("00 2C 00 80 10 3132333435363738 31323334FFFFFFFF")


# -- GnuPG (scd/apdu.c): fixed length and variable length (enable-pinpad-varlen) --------------------
def gnupg_verify(fixedlen: int, minlen: int = 6, maxlen: int = 15) -> bytes:
    validation = 0x02 | (0x01 if minlen == maxlen else 0)
    return libccid_verify(pcsc_verify(fmt=0x82, block=fixedlen, min_digits=minlen, max_digits=maxlen,
                                      validation=validation, messages=1,
                                      apdu=bytes([0x00, 0x20, 0x00, 0x81, fixedlen]) + b"\xFF" * fixedlen))


def gnupg_modify(fixedlen: int, p1: int = 0, minlen: int = 6, maxlen: int = 15) -> bytes:
    return libccid_modify(pcsc_modify(fmt=0x82, block=fixedlen, old=0, new=fixedlen, min_digits=minlen,
                                      max_digits=maxlen, confirm=0x03 if p1 == 0 else 0x01, messages=3,
                                      apdu=bytes([0x00, 0x24, p1, 0x81, 2 * fixedlen]) + b"\xFF" * (2 * fixedlen)))


def test_gnupg_variable_length_verify() -> None:
    r = parse_secure(gnupg_verify(0))
    assert (r.min_digits, r.max_digits) == (6, 15)
    assert r.msg_indexes == (0,)
    assert r.build_apdu("123456") == h("00 20 00 81 06 313233343536")
    assert r.build_apdu("123456789012345") == b"\x00\x20\x00\x81\x0f" + b"123456789012345"


def test_gnupg_fixed_length_verify_stops_at_max() -> None:
    r = parse_secure(gnupg_verify(8, minlen=8, maxlen=8))
    assert r.validation == EntryValidation.VALIDATION_KEY | EntryValidation.MAX_SIZE_REACHED
    assert r.build_apdu("12345678") == h("00 20 00 81 08 3132333435363738")


def test_gnupg_variable_length_modify_puts_the_new_pin_after_the_current_one() -> None:
    r = parse_secure(gnupg_modify(0))
    assert r.prompts() == ["current", "new", "confirm"]
    assert r.build_apdu("123456", "8765432") == h("00 24 00 81 0D 313233343536 38373635343332")


def test_gnupg_fixed_length_modify() -> None:
    r = parse_secure(gnupg_modify(6, minlen=6, maxlen=6))
    assert r.build_apdu("123456", "654321") == h("00 24 00 81 0C 313233343536 363534333231")


def test_gnupg_reset_code_modify_asks_for_the_new_pin_only() -> None:
    r = parse_secure(gnupg_modify(0, p1=1))
    assert r.prompts() == ["new", "confirm"]
    assert r.build_apdu(new="123456") == h("00 24 01 81 06 313233343536")


# -- ACR83 worked examples: bit units, BCD, PIN length field, both justifications ------------------
def acr83_verify(fmt: int, block: int, length: int, max_digits: int, apdu: str) -> bytes:
    return libccid_verify(pcsc_verify(fmt=fmt, block=block, length=length, min_digits=1, max_digits=max_digits,
                                      apdu=h(apdu)))


@pytest.mark.parametrize("fmt, block, length, max_digits, template, pin, expected", [
    # §11.3: bit units, PIN at bit 7, 4-bit length at bit 2, 9-byte block
    (0x39, 0x49, 0x02, 10, "00200001 09 57 3030303030303030", "123456780",
     "00200001 09 66 24 68 AC F0 10 30 30 30"),
    (0x3D, 0x49, 0x02, 10, "00200001 09 57 3030303030303030", "123456780",
     "00200001 09 67 30 30 30 31 23 45 67 80"),
    # §11.4: PIN at bit 11, length at bit 6
    (0x59, 0x48, 0x06, 8, "00200001 08 57 A5 303030303030", "12345", "00200001 08 55 62 46 8A 30 30 30 30"),
    (0x5D, 0x48, 0x06, 8, "00200001 08 57 A5 303030303030", "12345", "00200001 08 55 65 30 30 30 31 23 45"),
    # §11.5: byte units: the 8-byte frame starts at byte 1, length in the high... low nibble of byte 0
    (0x89, 0x48, 0x04, 10, "00200001 09 57 3030303030303030", "123456780",
     "00200001 09 59 12 34 56 78 00 30 30 30"),
])
def test_acr83_verify_examples(fmt, block, length, max_digits, template, pin, expected) -> None:
    assert parse_secure(acr83_verify(fmt, block, length, max_digits, template)).build_apdu(pin) == h(expected)


def test_acr83_modify_example_new_pin_at_offset_1() -> None:
    # §12.9: only the new PIN (bConfirmPIN 0), its block at bInsertionOffsetNew 1.
    abdata = libccid_modify(pcsc_modify(fmt=0x39, block=0x49, length=0x02, old=0, new=1, min_digits=1,
                                        max_digits=10, confirm=0x00, messages=1,
                                        apdu=h("00240001 0A 20 57 3030303030303030")))
    r = parse_secure(abdata)
    assert r.prompts() == ["new"]
    assert r.build_apdu(new="123456780") == h("00240001 0A 20 66 24 68 AC F0 10 30 30 30")


def test_bcd_variable_length_odd_pin_ends_in_an_f_nibble() -> None:
    abdata = libccid_verify(pcsc_verify(fmt=0x81, block=0x00, min_digits=4, max_digits=12, apdu=h("00200001")))
    assert parse_secure(abdata).build_apdu("12345") == h("00200001 03 12 34 5F")


def test_max_digits_shrinks_to_what_the_block_holds() -> None:
    r = parse_secure(libccid_verify(pcsc_verify(fmt=0x82, block=0x08, min_digits=4, max_digits=15,
                                                apdu=h("00200080 08" + "FF" * 8))))
    assert r.max_digits == 8


# -- what the PIN may be ----------------------------------------------------------------------------
def test_check_pin() -> None:
    r = parse_secure(OPENSC_PIV_VERIFY)
    assert r.check_pin("1234") is None
    assert "4..8" in r.check_pin("123")
    assert "4..8" in r.check_pin("123456789")
    assert r.check_pin("abc d") is None             # ASCII coding: a control-socket PIN may hold letters
    bcd = parse_secure(libccid_verify(pcsc_verify(fmt=0x81, block=0x08, min_digits=4, max_digits=8,
                                                  apdu=h("00200001 08" + "FF" * 8))))
    assert "digits" in bcd.check_pin("12a4")
    assert "digits" in bcd.check_pin("１２３４")     # full-width digits are not ASCII digits
    with pytest.raises(ValueError, match="current PIN is missing"):
        r.build_apdu()
    with pytest.raises(ValueError, match="cannot be used"):
        r.build_apdu("12")


def test_describe_has_no_pin_and_names_the_entries() -> None:
    d = parse_secure(gnupg_modify(0)).describe()
    assert d["operation"] == "modify" and d["entries"] == ["current", "new", "confirm"] and d["ins"] == "24"


# -- errors: bError is the offset of the bad field in the message -------------------------------------
def _error(abdata: bytes) -> int:
    with pytest.raises(SecureError) as e:
        parse_secure(abdata)
    return e.value.offset


def test_errors_carry_the_field_offset() -> None:
    good = bytearray(OPENSC_PIV_VERIFY)
    assert _error(b"") == 1
    assert _error(b"\x02" + bytes(good[1:])) == 10            # bPINOperation TRANSFER: TPDU level only
    assert _error(b"\x07" + bytes(good[1:])) == 10
    assert _error(bytes(good[:17])) == 1                       # cut short
    bad = bytearray(good); bad[2] = 0x83                       # coding 3 is RFU
    assert _error(bytes(bad)) == 12
    bad = bytearray(good); bad[4] = 0x20                       # bmPINLengthFormat RFU bit
    assert _error(bytes(bad)) == 14
    bad = bytearray(good); bad[5], bad[6] = 4, 8               # min 8 > max 4
    assert _error(bytes(bad)) == 15
    bad = bytearray(good); bad[7] = 0x08                       # bEntryValidationCondition RFU bit
    assert _error(bytes(bad)) == 17
    bad = bytearray(good); bad[8] = 0x04                       # bNumberMessage 4
    assert _error(bytes(bad)) == 18
    bad = bytearray(good); bad[3] = 0x09                       # a 9-byte block in 8 data bytes
    assert _error(bytes(bad)) == 13
    bad = bytearray(good); bad[2] = 0x82 | (8 << 3)            # PIN position 8 bytes: past the data
    assert _error(bytes(bad)) == 12
    assert _error(bytes(good[:-1])) == 29                      # Lc 8 but 7 data bytes
    modify = bytearray(gnupg_modify(0))
    modify[9] = 0x04                                           # bConfirmPIN RFU bit
    assert _error(bytes(modify)) == 19


def test_overlapping_blocks_and_length_fields_are_refused() -> None:
    overlap = libccid_modify(pcsc_modify(fmt=0x82, block=0x08, old=0, new=4, min_digits=4, max_digits=8,
                                         confirm=0x03, messages=3, apdu=h("00240080 10" + "FF" * 16)))
    assert _error(overlap) == 16
    length_on_pin = libccid_verify(pcsc_verify(fmt=0x82, block=0x48, length=0x10, min_digits=4, max_digits=8,
                                               apdu=h("00200080 08" + "FF" * 8)))
    assert _error(length_on_pin) == 14
    too_small = libccid_verify(pcsc_verify(fmt=0x82, block=0x02, min_digits=4, max_digits=8,
                                           apdu=h("00200080 02 FFFF")))
    assert _error(too_small) == 13
