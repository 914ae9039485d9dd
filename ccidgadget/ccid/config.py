# SPDX-License-Identifier: GPL-3.0-or-later
"""Reader configuration and the resource limits of the CCID core.

Every limit is named here, with the reason for its value, in the manner of
h11's ``DEFAULT_MAX_INCOMPLETE_EVENT_SIZE``.  The core never holds more than
about ``MAX_COMMAND_APDU_LENGTH + MAX_RESPONSE_APDU_LENGTH`` bytes per slot plus
one bulk message, whatever the host sends.
"""

from __future__ import annotations

from dataclasses import dataclass

from .constants import CCID_HEADER_SIZE, MAX_SLOTS

#: dwMaxCCIDMessageLength, header included (CCID §5.1).
#:
#: 1034 = 10-byte header + 1024 bytes of abData.  Why this value:
#: - §5.1 requires at least 261 + 10 for an APDU-level reader, so every short
#:   APDU (4 + 1 + 255 + 1 = 261) and every short response (256 + SW = 258)
#:   travels in one message, even with a host that never chains.
#: - libccid (commands.c CmdXfrBlockAPDU_extended) splits a command into
#:   XfrBlocks of min(CMD_BUF_SIZE = 65546, dwMaxCCIDMessageLength - 10) bytes,
#:   and follows bChainParameter 0x01/0x03 on responses.  With 1024 bytes of
#:   abData a 4 KiB certificate read (4098 bytes with SW) goes through response
#:   chaining in 5 DataBlocks, so that code path runs in everyday use (PIV and
#:   OpenPGP certificates are 1-2 KiB) and in the VM tests, not only with
#:   contrived 64 KiB APDUs.  libccid's own buffers are fixed at about 64 KiB
#:   (CCID_Receive: 10 + CMD_BUF_SIZE) whatever we advertise, so a small value
#:   costs the host nothing but round trips; at full speed one round trip of
#:   1034 bytes is 17 packets, about 1-2 ms.
#: - 1034 is not a multiple of 64 or 512, so a full-size chained DataBlock never
#:   needs a trailing zero-length packet.
#: - It bounds the one bulk message the core buffers before it can act on it.
#: Others: Gnuk 271, CanoKey 1352, pico-keys 2048, QEMU 384, ccid-emulator 65545.
DEFAULT_MAX_MESSAGE_LENGTH = CCID_HEADER_SIZE + 1024

#: Smallest and largest dwMaxCCIDMessageLength §5.1 allows for an APDU-level reader.
MIN_MAX_MESSAGE_LENGTH = CCID_HEADER_SIZE + 261
MAX_MAX_MESSAGE_LENGTH = CCID_HEADER_SIZE + 65544

#: Largest command APDU the core reassembles from chained XfrBlocks (§6.1.4).
#: An ISO 7816-4 case 4E APDU is at most 4 + 3 + 65535 + 2 = 65544 bytes;
#: pcsc-lite accepts up to MAX_BUFFER_SIZE_EXTENDED = 4 + 3 + 65536 + 3 + 2 = 65548
#: bytes from applications and libccid forwards them as is, so that is our limit:
#: anything pcscd lets through is reassembled, anything longer cannot come from
#: a well-behaved host and is answered with bError 1 (dwLength) and dropped.
MAX_COMMAND_APDU_LENGTH = 65548

#: Largest response APDU an engine may return: 65536 data bytes + SW1 SW2
#: (ISO 7816-4 §5.1, Ne max 65536).  Longer answers are an engine bug and the
#: host sees HW_ERROR.  pcsc-lite's receive buffer is 65548 bytes, so this fits.
MAX_RESPONSE_APDU_LENGTH = 65536 + 2

#: ISO 7816-3 §8.2.1: an ATR has at most 32 bytes after TS (33 in all).  libccid's
#: power-on buffer is 10 + MAX_ATR_SIZE (33) bytes; a longer ATR would overflow it.
MAX_ATR_LENGTH = 33

#: RDR_to_PC_HardwareError messages kept while the interrupt pipe is busy; older
#: ones are dropped (and counted) past this.  Slot changes are coalesced and need no queue.
MAX_PENDING_HARDWARE_ERRORS = 16

#: Seconds between time-extension requests (bStatus 0x80, bError 1) while a card
#: works on an XfrBlock.  The adapter runs the timer; the core only builds the message.
#:
#: libccid waits `readTimeout` ms for each bulk-IN message, and a time extension
#: with bError 1 restarts that wait at the same length (commands.c CCID_Receive).
#: After the ATR, ifdhandler.c IFDHSetProtocolParameters recomputes readTimeout,
#: even when dwFeatures 0x40 makes it skip SetParameters:
#:   T=0: max(3000, 261*EGT + 6*WWT, 5*EGT + 260*WWT) ms, WWT = 960*WI*F/clock;
#:        with WI 10, F 372 and our 4000 kHz that is 232 s, never below 3 s.
#:   T=1: 260*EGT + BWT + 260*CWT + 1000 ms, BWT = 11 etu + 2^BWI * 960 * 372 / clock,
#:        CWT = (11 + 2^CWI) etu, etu = F / D / clock.  The 1000 ms term is a hard
#:        floor: no T=1 ATR can bring it under 1.09 s at 4 MHz (BWI 0, large D);
#:        BWI 0 / CWI 0 at D 1 gives 1.67 s; the recommended ATR below gives 3.76 s.
#:   Before the protocol is set, DEFAULT_COM_READ_TIMEOUT is 3 s.
#: 1.0 s is therefore 3x below every timeout libccid uses with the recommended
#: ATR, leaves room for a stalled event loop or a busy USB bus, and is still under
#: the 1.09 s floor for any T=1 ATR.  (Gnuk sends one every 1.95 s, CanoKey and
#: pico-keys every 1.5 s.)  One 10-byte message per second per busy slot is free.
#:
#: libccid's CmdPowerOn does *not* understand time extensions (it would take the
#: empty time-extension DataBlock for an empty ATR), and it waits 60 s for an ATR,
#: so the core sends time extensions for XfrBlock only.
#:
#: Recommended ATR interface bytes for emulated cards (T=1, direct convention):
#:   TS=3B  T0=9K (TA1, TD1 present; K historical bytes)
#:   TA1=11 (Fi 372, Di 1: the rate equals our one dwDataRate, 10752 bps at 4 MHz)
#:   TD1=81 (TD2 follows, T=1)   TD2=31 (TA3, TB3 follow, T=1)
#:   TA3=FE (IFSC 254 = our dwMaxIFSD)   TB3=45 (BWI 4, CWI 5: libccid timeout 3.76 s)
#:   ... K historical bytes ... TCK (XOR of T0..last byte; mandatory once T=1 is offered)
#: Omit TC1 (extra guard time 0) and TB1/TB2 (deprecated).  A larger BWI (e.g. TB3=75,
#: timeout ~13.7 s) only makes the host slower to notice a dead engine.
TIME_EXTENSION_INTERVAL = 1.0


@dataclass(frozen=True)
class ReaderConfig:
    """What the reader advertises in its class descriptor and enforces on the wire."""

    #: Number of slots, 1..8; bMaxSlotIndex = slots - 1 and bMaxCCIDBusySlots = slots.
    slots: int = 1
    #: dwMaxCCIDMessageLength, header included.
    max_message_length: int = DEFAULT_MAX_MESSAGE_LENGTH
    #: dwDefaultClock = dwMaximumClock; the only value of GET_CLOCK_FREQUENCIES.
    #: 4 MHz is the ISO 7816-3 default activation frequency range's usual value.
    default_clock_khz: int = 4000
    #: dwDataRate = dwMaxDataRate; the only value of GET_DATA_RATES.  10752 bps is
    #: 4 MHz / 372 (Fi 372, Di 1), the rate an ATR with TA1 absent or 11 implies.
    #: There is no wire: the value only has to agree with the ATRs we hand out.
    data_rate_bps: int = 10752
    #: dwMaxIFSD: the largest T=1 information field we could accept (§5.1); 254 is ISO's maximum.
    max_ifsd: int = 254
    #: Limits, see the module constants.
    max_command_apdu_length: int = MAX_COMMAND_APDU_LENGTH
    max_response_apdu_length: int = MAX_RESPONSE_APDU_LENGTH
    #: bPINSupport (§5.1): 0x01 PIN verification, 0x02 modification; non-zero turns on
    #: PC_to_RDR_Secure (§6.1.11, ccid/secure.py).  wLcdLayout: 0 = no display.
    pin_support: int = 0
    lcd_layout: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.slots <= MAX_SLOTS:
            raise ValueError(f"slots must be 1..{MAX_SLOTS}, not {self.slots}")
        if not MIN_MAX_MESSAGE_LENGTH <= self.max_message_length <= MAX_MAX_MESSAGE_LENGTH:
            raise ValueError(f"max_message_length must be {MIN_MAX_MESSAGE_LENGTH}..{MAX_MAX_MESSAGE_LENGTH}")
        if not 0 < self.default_clock_khz < 1 << 32 or not 0 < self.data_rate_bps < 1 << 32:
            raise ValueError("clock and data rate must be positive 32-bit values")
        if not 1 <= self.max_ifsd <= 254:
            raise ValueError("max_ifsd must be 1..254")
        if self.max_command_apdu_length < 4 or self.max_response_apdu_length < 2:
            raise ValueError("APDU limits too small")
        if self.pin_support & ~0x03 or not 0 <= self.lcd_layout <= 0xFFFF:
            raise ValueError("pin_support takes bits 0x01 and 0x02; lcd_layout is 16 bits")

    @property
    def max_payload(self) -> int:
        """Largest abData in one bulk message."""
        return self.max_message_length - CCID_HEADER_SIZE
