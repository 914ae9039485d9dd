# SPDX-License-Identifier: GPL-3.0-or-later
"""PC_to_RDR_Secure (CCID rev 1.1 §6.1.11): the PIN verification and modification structures.

Pure code: `parse_secure(abData)` reads the structure a host sent and returns a
`PinRequest`, or raises `SecureError` whose `offset` is the bError (§6.2.6:
the offset of the first bad field in the message, header included).
`PinRequest.build_apdu(current, new)` then writes the PIN(s) a person entered
on the board into the APDU template exactly as the structure says.  No I/O,
clocks or logging: the PIN never leaves the returned bytes.

abData as libccid builds it (commands.c SecurePINVerify/Modify: the PC/SC
part 10 structure without bTimeOut2 and ulDataLength):

  offset  verify (bPINOperation 0)          modify (bPINOperation 1)
  10      bPINOperation                     bPINOperation
  11      bTimeOut                          bTimeOut
  12      bmFormatString                    bmFormatString
  13      bmPINBlockString                  bmPINBlockString
  14      bmPINLengthFormat                 bmPINLengthFormat
  15-16   wPINMaxExtraDigit                 bInsertionOffsetOld, bInsertionOffsetNew
  17      bEntryValidationCondition         wPINMaxExtraDigit (17-18)
  18      bNumberMessage                    19 bConfirmPIN, 20 bEntryValidationCondition
  19-20   wLangId                           21 bNumberMessage, 22-23 wLangId
  21      bMsgIndex                         24 bMsgIndex1 [, bMsgIndex2] [, bMsgIndex3]
  22-24   bTeoPrologue                      bTeoPrologue (3 bytes)
  25      abPINApdu                         abPINApdu

In the modification structure bMsgIndex2 is present when bNumberMessage is not
0 and bMsgIndex3 when it is 3 or more (0xFF included): that is how libccid
packs it (its comment: "in CCID the bMsgIndex2 is present only if
bNumberMessage != 0"), and libccid is the host that sends it.

Where the PIN goes (the formats below are how ACS documents its CCID PIN pads,
ACR83 reference manual §11-12, whose worked examples are our unit tests; every
host we know, OpenSC and GnuPG, sends PIN position 0, where every reading
agrees).  Positions count from the first byte after Lc; a modification has
two PIN blocks, at bInsertionOffsetOld and bInsertionOffsetNew bytes:

- bmFormatString: bit 7 system units (0 bits, 1 bytes); bits 6-3 the PIN
  position in those units; bit 2 right justification; bits 1-0 the coding
  (0 binary: one byte per digit, 1 BCD: one nibble per digit, 2 ASCII).
- bmPINBlockString: bits 7-4 the size in bits of the PIN length field (0: no
  length field); bits 3-0 the PIN block size in bytes.  In byte units the PIN
  frame starts at the PIN position and is that many bytes long; in bit units
  the block starts at the block start and the frame runs from the PIN
  position to the block's end.  Size 0 means "as long as the PIN": with Lc 0
  (GnuPG's variable length PIN pad, `enable-pinpad-varlen`) the reader sets Lc
  to the length it built; with a pre-padded template (Lc > 0) the frame runs
  to the next block or the end of the data.
- bmPINLengthFormat: bit 4 units of the length position (0 bits, 1 bytes),
  bits 3-0 the position of the length field from the block start.
- wPINMaxExtraDigit: high byte minimum, low byte maximum number of digits.
- Bits of the template that no digit and no length field covers keep their
  value: a host pre-pads with FF (PIV, OpenSC) or '0' characters.  Bytes a
  variable length frame adds start as FF (ISO 9564 fill), so an odd BCD PIN
  ends in an F nibble.
- A variable length modification whose two blocks would overlap (GnuPG sends
  both insertion offsets 0) puts the new PIN right after the current one.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

#: Offset of abData in a bulk-OUT message (§6.1: 10-byte header).
AB_DATA = 10
#: The PIN APDU is a short APDU: CLA INS P1 P2 [Lc data] [Le].
MIN_APDU = 4
MAX_SHORT_LC = 255


class PINOperation(enum.IntEnum):
    """bPINOperation, the first byte of abData (§6.1.11)."""

    VERIFY = 0x00
    MODIFY = 0x01
    TRANSFER = 0x02           # TPDU level only
    WAIT_ICC_RESPONSE = 0x03  # TPDU level only
    CANCEL = 0x04
    RESEND_LAST_I_BLOCK = 0x05
    SEND_NEXT_APDU_PART = 0x06


class PINCoding(enum.IntEnum):
    """bmFormatString bits 1-0."""

    BINARY = 0
    BCD = 1
    ASCII = 2


class EntryValidation(enum.IntFlag):
    """bEntryValidationCondition: what ends the entry."""

    MAX_SIZE_REACHED = 0x01
    VALIDATION_KEY = 0x02
    TIMEOUT = 0x04


class ConfirmPIN(enum.IntFlag):
    """bConfirmPIN of the modification structure."""

    CONFIRM_NEW = 0x01        # the new PIN is entered twice
    CURRENT_PIN = 0x02        # the current PIN is entered and inserted too


#: Bits per digit for each coding.
_DIGIT_BITS = {PINCoding.BINARY: 8, PINCoding.BCD: 4, PINCoding.ASCII: 8}


class SecureError(ValueError):
    """A structure the reader cannot honour; `offset` is the bError (§6.2.6)."""

    def __init__(self, offset: int, message: str) -> None:
        super().__init__(f"offset {offset}: {message}")
        self.offset = offset


@dataclass(frozen=True)
class PINFormat:
    """bmFormatString, bmPINBlockString and bmPINLengthFormat, decoded."""

    byte_units: bool
    pin_position: int
    right_justify: bool
    coding: PINCoding
    length_size: int          # bits; 0 = no PIN length field
    block_size: int           # bytes; 0 = the PIN's own length
    length_byte_units: bool
    length_position: int

    @classmethod
    def decode(cls, fmt: int, block: int, length: int, *, base: int) -> "PINFormat":
        """`base` is the message offset of bmFormatString (for bError)."""
        coding = fmt & 0x03
        if coding == 3:
            raise SecureError(base, "bmFormatString coding 3 is RFU (0 binary, 1 BCD, 2 ASCII)")
        if length & 0xE0:
            raise SecureError(base + 2, "bmPINLengthFormat bits 7-5 are RFU")
        return cls(byte_units=bool(fmt & 0x80), pin_position=(fmt >> 3) & 0x0F, right_justify=bool(fmt & 0x04),
                   coding=PINCoding(coding), length_size=block >> 4, block_size=block & 0x0F,
                   length_byte_units=bool(length & 0x10), length_position=length & 0x0F)

    @property
    def digit_bits(self) -> int:
        return _DIGIT_BITS[self.coding]

    def pin_offset_bits(self) -> int:
        return self.pin_position * (8 if self.byte_units else 1)

    def length_offset_bits(self) -> int:
        return self.length_position * (8 if self.length_byte_units else 1)


@dataclass(frozen=True)
class _Frame:
    """Where one PIN goes, in bits from the first data byte.  `end` None: as long as the PIN."""

    block: int
    start: int
    end: int | None

    def capacity(self, digit_bits: int) -> int | None:
        return None if self.end is None else (self.end - self.start) // digit_bits


@dataclass(frozen=True)
class PinRequest:
    """One PC_to_RDR_Secure PIN operation, parsed and checked."""

    operation: PINOperation
    timeout: int                   # bTimeOut, seconds; 0 = the reader's default
    format: PINFormat
    min_digits: int
    max_digits: int
    validation: EntryValidation
    number_message: int
    lang_id: int
    msg_indexes: tuple[int, ...]
    confirm: ConfirmPIN            # modify only (0 for verify)
    offset_old: int                # modify only
    offset_new: int                # modify only
    apdu: bytes                    # the template (abPINApdu)

    # -- what a person must enter --------------------------------------------------
    @property
    def wants_current(self) -> bool:
        return self.operation == PINOperation.VERIFY or ConfirmPIN.CURRENT_PIN in self.confirm

    @property
    def wants_new(self) -> bool:
        return self.operation == PINOperation.MODIFY

    @property
    def wants_confirmation(self) -> bool:
        return self.wants_new and ConfirmPIN.CONFIRM_NEW in self.confirm

    def prompts(self) -> list[str]:
        """The entries, in order: 'current' / 'new' / 'confirm'."""
        out = ["current"] if self.wants_current else []
        if self.wants_new:
            out.append("new")
        if self.wants_confirmation:
            out.append("confirm")
        return out

    @property
    def ascii(self) -> bool:
        """The coding takes any printable ASCII character (a PIN pad gives digits only)."""
        return self.format.coding == PINCoding.ASCII

    def describe(self) -> dict:
        """For status and the journal: never a PIN (there is none in here)."""
        return {"operation": self.operation.name.lower(), "ins": f"{self.apdu[1]:02X}",
                "p2": f"{self.apdu[3]:02X}", "min": self.min_digits, "max": self.max_digits,
                "entries": self.prompts(), "timeout_s": self.timeout,
                "coding": self.format.coding.name.lower()}

    def check_pin(self, pin: str) -> str | None:
        """Why `pin` cannot be used, or None."""
        if not self.min_digits <= len(pin) <= self.max_digits:
            return f"a PIN of {self.min_digits}..{self.max_digits} characters is needed, not {len(pin)}"
        if self.ascii:
            if not all(0x20 <= ord(c) <= 0x7E for c in pin):
                return "only printable ASCII characters fit this PIN's coding"
        elif not pin.isascii() or not pin.isdigit():
            return f"only digits fit this PIN's {self.format.coding.name} coding"
        return None

    # -- the APDU ---------------------------------------------------------------------
    def _lc(self) -> int:
        return self.apdu[4] if len(self.apdu) > 4 else 0

    def _frames(self, lengths: dict[str, int] | None = None) -> dict[str, _Frame]:
        """The frame of each PIN the APDU carries; with `lengths`, variable frames get their ends."""
        fmt = self.format
        lc = self._lc()
        out: dict[str, _Frame] = {}
        starts: list[tuple[str, int]] = []
        if self.wants_current:
            starts.append(("current", 0 if self.operation == PINOperation.VERIFY else self.offset_old))
        if self.wants_new:
            starts.append(("new", self.offset_new))
        previous_end: int | None = None
        for index, (which, block) in enumerate(starts):
            block_bits = block * 8
            if previous_end is not None and lc == 0 and fmt.block_size == 0:
                # Variable length modification (GnuPG: both offsets 0): after the current PIN.
                block_bits = max(block_bits, (previous_end + 7) // 8 * 8)
            start = block_bits + fmt.pin_offset_bits()
            if fmt.block_size:
                end = (start if fmt.byte_units else block_bits) + fmt.block_size * 8
            elif lc:
                nxt = [b * 8 for _, b in starts[index + 1:] if b * 8 > block_bits]
                end = nxt[0] if nxt else lc * 8
            elif lengths is not None:
                end = start + lengths[which] * fmt.digit_bits
            else:
                end = None
            out[which] = _Frame(block_bits, start, end)
            previous_end = end
        return out

    def build_apdu(self, current: str | None = None, new: str | None = None) -> bytes:
        """The command APDU with the PIN(s) written in; ValueError if a PIN does not fit."""
        pins = {"current": current, "new": new}
        wanted = [w for w in ("current", "new") if (w == "current" and self.wants_current)
                  or (w == "new" and self.wants_new)]
        for which in wanted:
            pin = pins[which]
            if pin is None:
                raise ValueError(f"the {which} PIN is missing")
            problem = self.check_pin(pin)
            if problem:
                raise ValueError(f"the {which} PIN cannot be used: {problem}")
        fmt = self.format
        lc = self._lc()
        frames = self._frames({w: len(pins[w] or "") for w in wanted})
        data = bytearray(self.apdu[5:5 + lc])
        variable = lc == 0
        if variable:
            end = max(max(f.end for f in frames.values()),
                      max(f.block + fmt.length_offset_bits() + fmt.length_size for f in frames.values()))
            data = bytearray(b"\xFF" * ((end + 7) // 8))
            if len(data) > MAX_SHORT_LC:
                raise ValueError(f"the PIN block would be {len(data)} bytes; a short APDU carries at most 255")
        bits = _Bits(data)
        for which in wanted:
            pin = pins[which]
            frame = frames[which]
            width = fmt.digit_bits * len(pin)
            start = frame.start
            if fmt.right_justify and not variable:
                start = frame.end - width
            for i, char in enumerate(pin):
                bits.put(start + i * fmt.digit_bits, fmt.digit_bits, _digit_value(fmt.coding, char))
            if fmt.length_size:
                bits.put(frame.block + fmt.length_offset_bits(), fmt.length_size, len(pin))
        header = self.apdu[:4]
        trailer = self.apdu[5 + lc:]
        return bytes(header) + bytes([len(data)]) + bytes(data) + bytes(trailer)


def _digit_value(coding: PINCoding, char: str) -> int:
    if coding == PINCoding.ASCII:
        return ord(char)
    return ord(char) - 0x30


class _Bits:
    """A bytearray addressed in bits, most significant bit of byte 0 first (ACR83 §11)."""

    def __init__(self, data: bytearray) -> None:
        self.data = data

    def put(self, position: int, size: int, value: int) -> None:
        for i in range(size):
            bit = (value >> (size - 1 - i)) & 1
            index, shift = divmod(position + i, 8)
            mask = 0x80 >> shift
            if bit:
                self.data[index] |= mask
            else:
                self.data[index] &= ~mask & 0xFF


# -- parsing ------------------------------------------------------------------------------
_VERIFY_FIXED = 14      # bTimeOut .. bTeoPrologue, after bPINOperation (offsets 11-24)
_MODIFY_FIXED = 17      # with bMsgIndex1 only (offsets 11-27)


def parse_secure(ab_data: bytes) -> PinRequest:
    """Parse abData of PC_to_RDR_Secure (bPINOperation first); SecureError on anything we cannot honour."""
    ab_data = bytes(ab_data)
    if not ab_data:
        raise SecureError(1, "dwLength 0: bPINOperation is missing")
    try:
        operation = PINOperation(ab_data[0])
    except ValueError:
        raise SecureError(AB_DATA, f"bPINOperation {ab_data[0]:#04x} is not defined") from None
    if operation not in (PINOperation.VERIFY, PINOperation.MODIFY):
        raise SecureError(AB_DATA, f"bPINOperation {operation.name} is for TPDU level readers; this one "
                                   f"exchanges APDUs and supports VERIFY (0) and MODIFY (1)")
    body = ab_data[1:]
    base = AB_DATA + 1        # message offset of body[0]
    if operation == PINOperation.VERIFY:
        if len(body) < _VERIFY_FIXED + MIN_APDU:
            raise SecureError(1, f"dwLength {len(ab_data)}: a PIN verification structure and its APDU "
                                 f"take at least {1 + _VERIFY_FIXED + MIN_APDU} bytes")
        timeout, fmt, block, length = body[0], body[1], body[2], body[3]
        max_digits, min_digits = body[4], body[5]
        validation, number_message = body[6], body[7]
        (lang_id,) = struct.unpack_from("<H", body, 8)
        msg_indexes = (body[10],)
        apdu_at = _VERIFY_FIXED
        confirm, offset_old, offset_new = ConfirmPIN(0), 0, 0
        digits_offset, validation_offset, message_offset = base + 4, base + 6, base + 7
    else:
        if len(body) < _MODIFY_FIXED + MIN_APDU:
            raise SecureError(1, f"dwLength {len(ab_data)}: a PIN modification structure and its APDU "
                                 f"take at least {1 + _MODIFY_FIXED + MIN_APDU} bytes")
        timeout, fmt, block, length = body[0], body[1], body[2], body[3]
        offset_old, offset_new = body[4], body[5]
        max_digits, min_digits = body[6], body[7]
        confirm_byte, validation, number_message = body[8], body[9], body[10]
        (lang_id,) = struct.unpack_from("<H", body, 11)
        if confirm_byte & ~0x03:
            raise SecureError(base + 8, f"bConfirmPIN {confirm_byte:#04x}: bits 7-2 are RFU")
        confirm = ConfirmPIN(confirm_byte)
        extra = (1 if number_message != 0 else 0) + (1 if number_message >= 3 else 0)
        msg_indexes = tuple(body[13:14 + extra])
        apdu_at = _MODIFY_FIXED + extra
        if len(body) < apdu_at + MIN_APDU:
            raise SecureError(1, f"dwLength {len(ab_data)}: with bNumberMessage {number_message} the "
                                 f"structure takes {1 + apdu_at} bytes before the APDU")
        digits_offset, validation_offset, message_offset = base + 6, base + 9, base + 10
    if number_message > 3 and number_message != 0xFF:
        raise SecureError(message_offset, f"bNumberMessage {number_message}: allowed 0..3 or 0xFF")
    if validation == 0 or validation & ~0x07:
        raise SecureError(validation_offset, f"bEntryValidationCondition {validation:#04x}: allowed a "
                                             f"combination of 01 (max size), 02 (validation key), 04 (timeout)")
    if max_digits == 0 or min_digits > max_digits:
        raise SecureError(digits_offset, f"wPINMaxExtraDigit: minimum {min_digits} and maximum {max_digits} "
                                         f"digits; allowed 1 <= maximum and minimum <= maximum")
    pin_format = PINFormat.decode(fmt, block, length, base=base + 1)
    apdu = body[apdu_at:]
    apdu_offset = base + apdu_at
    _check_apdu(apdu, apdu_offset)
    request = PinRequest(operation=operation, timeout=timeout, format=pin_format, min_digits=max(min_digits, 1),
                         max_digits=max_digits, validation=EntryValidation(validation),
                         number_message=number_message, lang_id=lang_id, msg_indexes=msg_indexes,
                         confirm=confirm, offset_old=offset_old, offset_new=offset_new, apdu=apdu)
    return _check_geometry(request, base, apdu_offset)


def _check_apdu(apdu: bytes, offset: int) -> None:
    if len(apdu) == MIN_APDU:
        return                                  # case 1: Lc 0, the PIN makes the data field
    lc = apdu[4]
    rest = len(apdu) - 5 - lc
    if rest not in (0, 1):
        raise SecureError(offset + 4, f"abPINApdu: Lc {lc} with {len(apdu) - 5} bytes after it; allowed Lc "
                                      f"data bytes and at most one Le byte")


def _check_geometry(request: PinRequest, base: int, apdu_offset: int) -> PinRequest:
    """Every PIN and length field fits in the template; the maximum shrinks to what fits."""
    fmt = request.format
    lc = request._lc()
    frames = request._frames()
    capacity = request.max_digits
    for which, frame in frames.items():
        if lc and frame.start >= lc * 8:
            raise SecureError(base + 1, f"the {which} PIN would start at bit {frame.start}, past the "
                                        f"{lc} data bytes of the APDU")
        if frame.end is not None:
            if lc and frame.end > lc * 8:
                raise SecureError(base + 2, f"the {which} PIN block ends at bit {frame.end}, past the "
                                            f"{lc} data bytes of the APDU (Lc)")
            capacity = min(capacity, frame.capacity(fmt.digit_bits))
        if fmt.length_size:
            length_start = frame.block + fmt.length_offset_bits()
            length_end = length_start + fmt.length_size
            if lc and length_end > lc * 8:
                raise SecureError(base + 3, f"the {which} PIN length field ends past the APDU data")
            if length_end > frame.start and (frame.end is None or length_start < frame.end):
                raise SecureError(base + 3, f"the {which} PIN length field overlaps the PIN")
            if request.max_digits >= 1 << fmt.length_size:
                capacity = min(capacity, (1 << fmt.length_size) - 1)
    if request.operation == PINOperation.MODIFY and request.wants_current and lc:
        old, new = frames["current"], frames["new"]
        if old.end is not None and new.start < old.end and old.start < (new.end or lc * 8):
            raise SecureError(base + 5, "bInsertionOffsetNew puts the new PIN inside the current one")
    if capacity < request.min_digits:
        raise SecureError(base + 2, f"the PIN block holds {capacity} digits, fewer than the minimum "
                                    f"{request.min_digits}")
    if capacity < request.max_digits:
        request = PinRequest(**{**request.__dict__, "max_digits": capacity})
    return request
