"""A small ISO 7816-4 card: files, a challenge and a serial number.

It is the simplest engine that exercises a reader end to end: SELECT by AID
and by file identifier, READ BINARY (short and extended Le, so a 4 KiB read
goes through CCID response chaining), UPDATE BINARY on a scratch file (so an
extended command goes through CCID command chaining), GET CHALLENGE and GET
DATA for the serial number.  Everything else gets the status word ISO 7816-4
prescribes.

File system (file identifiers, ISO 7816-4 §5.3.1):
    3F00 MF
      2F00 EF.DIR      the application template of our applet
      2F02 EF.SN       the serial number (ASCII)
    applet F0 63 63 69 64 67 61 64 67 65 74 ("ccidgadget", proprietary RID F0)
      0101 EF.HELLO    a short greeting
      0102 EF.LARGE    4096 bytes of a counting pattern (tests chaining)
      0103 EF.SCRATCH  65535 bytes, writable, volatile
"""

from __future__ import annotations

import os

from .applet import Applet, AppletCard
from .iso7816 import SW, ApduError, CommandAPDU, make_atr
from .tlv import tlv

ISO_APPLET_AID = b"\xF0" + b"ccidgadget"        # proprietary RID F0 (ISO 7816-5), then our name
ATR_HISTORICAL = b"ccidgadget"

INS_READ_BINARY = 0xB0
INS_UPDATE_BINARY = 0xD6
INS_GET_CHALLENGE = 0x84
INS_GET_DATA = 0xCA
INS_SELECT = 0xA4

#: GET DATA tag for the card serial number; 5A is "application primary
#: account number" in ISO 7816-6 and the usual home of a card number.
TAG_SERIAL = 0x5A
LARGE_EF_SIZE = 4096
SCRATCH_EF_SIZE = 65535


class _Files:
    """Transparent EFs addressed by file identifier."""

    def __init__(self, files: dict[int, bytearray], writable: set[int]) -> None:
        self.files = files
        self.writable = writable
        self.current: int | None = None

    def select(self, cmd: CommandAPDU) -> bytes:
        # P1=00 select by file id (§7.1.1); 3F00 or empty data is the MF.
        if cmd.p1 != 0x00:
            raise ApduError(SW.INCORRECT_P1P2)
        if len(cmd.data) != 2:
            raise ApduError(SW.WRONG_LENGTH if cmd.data else SW.INCORRECT_P1P2)
        fid = int.from_bytes(cmd.data, "big")
        if fid not in self.files:
            raise ApduError(SW.FILE_NOT_FOUND)
        self.current = fid
        if (cmd.p2 & 0x0C) == 0x0C:
            return b""
        # FCP template (§5.3.3): file size 80, descriptor 82 (transparent EF), id 83.
        return tlv(0x62, tlv(0x80, len(self.files[fid]).to_bytes(2, "big"))
                   + tlv(0x82, b"\x01") + tlv(0x83, cmd.data))

    def _target(self, cmd: CommandAPDU) -> tuple[bytearray, int, int]:
        if cmd.p1 & 0x80:                   # short EF identifier in P1 (§7.2.2)
            if cmd.p1 & 0x60:
                raise ApduError(SW.INCORRECT_P1P2)
            sfi = cmd.p1 & 0x1F
            fid = next((f for f in self.files if f & 0x1F == sfi and f >> 8 in (0x01, 0x2F)), None)
            if fid is None:
                raise ApduError(SW.FILE_NOT_FOUND)
            self.current = fid
            offset = cmd.p2
        else:
            if self.current is None:
                raise ApduError(SW.COMMAND_NOT_ALLOWED, "no current EF")
            fid = self.current
            offset = cmd.p1p2
        return self.files[fid], offset, fid

    def read(self, cmd: CommandAPDU):
        if cmd.data:
            raise ApduError(SW.WRONG_LENGTH)
        content, offset, _ = self._target(cmd)
        if offset > len(content):
            raise ApduError(SW.WRONG_P1P2)
        le = cmd.le if cmd.le is not None else 256
        out = bytes(content[offset:offset + le])
        if len(out) < le and cmd.le is not None and not (cmd.le in (256, 65536)):
            return out, SW.END_OF_FILE     # §7.2.3: fewer bytes than asked, end reached
        return out

    def update(self, cmd: CommandAPDU) -> bytes:
        content, offset, fid = self._target(cmd)
        if fid not in self.writable:
            raise ApduError(SW.SECURITY_STATUS_NOT_SATISFIED)
        if not cmd.data:
            raise ApduError(SW.WRONG_LENGTH)
        if offset + len(cmd.data) > len(content):
            raise ApduError(SW.WRONG_P1P2)
        content[offset:offset + len(cmd.data)] = cmd.data
        return b""


class IsoApplet(Applet):
    aid = ISO_APPLET_AID
    name = "ccidgadget ISO 7816-4 demo"

    def __init__(self, card: "IsoCard") -> None:
        self.card = card
        self.files = _Files({
            0x0101: bytearray(b"Hello from ccidgadget\n"),
            0x0102: bytearray(i & 0xFF for i in range(LARGE_EF_SIZE)),
            0x0103: bytearray(SCRATCH_EF_SIZE),
        }, writable={0x0103})

    def select(self, cmd: CommandAPDU) -> bytes:
        self.files.current = None
        # FCI (§5.3.3): DF name 84 and a proprietary label A5/50.
        return tlv(0x6F, tlv(0x84, self.aid) + tlv(0xA5, tlv(0x50, self.name.encode())))

    def process(self, cmd: CommandAPDU):
        return self.card.common(cmd, self.files)


class IsoCard(AppletCard):
    """The small demo card (`--card emulated --type iso`)."""

    # Everything it does is in memory.
    QUICK_INS = frozenset({INS_SELECT, INS_READ_BINARY, INS_UPDATE_BINARY, INS_GET_CHALLENGE, INS_GET_DATA, 0xC0})

    def __init__(self, serial: str | None = None, *, inserted: bool = True) -> None:
        # os.urandom, not secrets: secrets brings hmac and OpenSSL's libcrypto into every ISO start.
        self.serial = serial or os.urandom(8).hex().upper()
        self.applet = IsoApplet(self)
        super().__init__([self.applet], inserted=inserted)
        self.mf = _Files({
            0x3F00: bytearray(),
            0x2F00: bytearray(tlv(0x61, tlv(0x4F, ISO_APPLET_AID) + tlv(0x50, IsoApplet.name.encode()))),
            0x2F02: bytearray(self.serial.encode()),
        }, writable=set())

    def atr(self) -> bytes:
        return make_atr(ATR_HISTORICAL)

    def reset(self) -> None:
        super().reset()
        self.mf.current = None

    def select_other(self, cmd: CommandAPDU) -> bytes:
        if cmd.p1 != 0x00:
            raise ApduError(SW.INCORRECT_P1P2)
        # Inside the applet its own EFs are visible; 3F00 always returns to the MF.
        if self.selected is not None and cmd.data != b"\x3F\x00":
            return self.applet.files.select(cmd)
        fci = self.mf.select(cmd)
        if self.selected is not None:
            self.selected.deselect()
            self.selected = None
        return fci

    def process_unselected(self, cmd: CommandAPDU):
        return self.common(cmd, self.mf)

    def common(self, cmd: CommandAPDU, files: _Files):
        if cmd.cla not in (0x00,):
            raise ApduError(SW.CLA_NOT_SUPPORTED)
        if cmd.ins == INS_READ_BINARY:
            return files.read(cmd)
        if cmd.ins == INS_UPDATE_BINARY:
            return files.update(cmd)
        if cmd.ins == INS_GET_CHALLENGE:
            # §7.5.3: P1P2 0000, Le = number of random bytes; no data.
            if cmd.p1 or cmd.p2:
                raise ApduError(SW.INCORRECT_P1P2)
            if cmd.data or cmd.le is None:
                raise ApduError(SW.WRONG_LENGTH)
            return os.urandom(min(cmd.le, 256))
        if cmd.ins == INS_GET_DATA:
            # §7.4.2: P1P2 is the tag.
            if cmd.p1p2 != TAG_SERIAL:
                raise ApduError(SW.REFERENCE_NOT_FOUND)
            return tlv(TAG_SERIAL, self.serial.encode())
        raise ApduError(SW.INS_NOT_SUPPORTED)


def build_card(spec, context) -> IsoCard:
    """`--card emulated --type iso` (options.CARD_TYPES)."""
    return IsoCard(inserted=spec.inserted)
