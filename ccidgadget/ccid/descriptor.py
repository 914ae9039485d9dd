# SPDX-License-Identifier: GPL-3.0-or-later
"""The 54-byte CCID class descriptor (CCID rev 1.1 §5.1, table 5.1-1).

FunctionFS accepts a descriptor of type 0x21 inside a class-0x0B interface only
when it is exactly ``sizeof(struct ccid_descriptor)`` = 54 bytes (Linux
``drivers/usb/gadget/function/f_fs.c``, UAPI ``linux/usb/ccid.h``).
libccid reads the fields at fixed offsets (ccid_usb.c: dwFeatures @40,
dwMaxCCIDMessageLength @44, bPINSupport @52, bMaxCCIDBusySlots @53).
"""

from __future__ import annotations

import struct
from dataclasses import asdict, dataclass

from .config import ReaderConfig
from .constants import BCD_CCID, CCID_DESCRIPTOR_LENGTH, CCID_DESCRIPTOR_TYPE, Feature

_LAYOUT = struct.Struct("<BBHBBIIIBIIBIIIIIBBHBB")
assert _LAYOUT.size == CCID_DESCRIPTOR_LENGTH == 54

#: bVoltageSupport: 5 V, 3 V and 1.8 V (bits 0..2).  Windows' class driver asks for
#: all three; with automatic voltage (below) libccid sends bPowerSelect 0 anyway.
VOLTAGE_SUPPORT_ALL = 0x07

#: dwProtocols: T=0 and T=1.  We exchange APDUs, so the protocol is nominal; both
#: are listed so that any ATR an engine produces (or a real card passes through)
#: names a protocol the reader claims, and libccid's IFDHSetProtocolParameters
#: ("Protocol T=%d not supported by reader") never refuses it.
PROTOCOLS_T0_T1 = 0x00000003

#: dwFeatures, one line of reasoning per bit (§5.1, table 5.1-1).
DEFAULT_FEATURES = (
    # 0x02 Automatic parameter configuration based on ATR data: the "reader" takes
    # Fi/Di, guard time, WI/BWI from the ATR itself; hosts need not SetParameters.
    # libccid only reads it for some vendor quirks; Windows' usbccid.sys reads it
    # to decide whether it must send SetParameters (it may still do so: we accept).
    Feature.AUTO_PARAMETERS_FROM_ATR
    # 0x04 Automatic activation of ICC on inserting: with 0x04 or 0x08 libccid sends
    # IccPowerOn with bPowerSelect 0 (commands.c CmdPowerOn) instead of walking
    # 5 V -> 3 V -> 1.8 V; an emulated card has no voltage to pick.  (We still
    # wait for IccPowerOn before powering the engine, as every CCID reader does.)
    | Feature.AUTO_ACTIVATION
    # 0x08 Automatic ICC voltage selection: same libccid effect; Windows and macOS
    # (libccid too) then also use bPowerSelect 0.
    | Feature.AUTO_VOLTAGE
    # 0x10 Automatic ICC clock frequency change: hosts must not pick a clock
    # (we have exactly one, and SetDataRateAndClockFrequency just reports it).
    | Feature.AUTO_CLOCK
    # 0x20 Automatic baud rate change according to active parameters: hosts must
    # not program a rate; there is no serial line behind the slot.
    | Feature.AUTO_BAUD
    # 0x40 Automatic parameters negotiation made by the CCID: libccid then skips
    # both PPS and SetParameters (ifdhandler.c "goto end" / "Skip SetParameters"),
    # so no TPDU-level negotiation is attempted against an emulated card.
    | Feature.AUTO_PARAMETER_NEGOTIATION
    # 0x80 Automatic PPS made by the CCID according to active parameters: with it
    # libccid never sends a PPS exchange through XfrBlock (which at APDU level
    # would reach the card engine as garbage).  QEMU and ccid-emulator set it too.
    | Feature.AUTO_PPS
    # 0x400 Automatic IFSD exchange as first exchange (T=1): libccid negotiates
    # IFSD with an S-block only at TPDU level, and macOS's libccid is the same code;
    # setting it documents that no S(IFS) will ever be needed.
    | Feature.AUTO_IFSD
    # 0x40000 Short and extended APDU level exchange: the engines speak APDUs, and
    # extended level lets libccid send up to 64 KiB APDUs with wLevelParameter
    # chaining and makes it report dwMaxAPDUDataSize 0x10000 to middleware (OpenSC
    # then sends extended APDUs).  Windows usbccid.sys supports every exchange level.
    | Feature.EXTENDED_APDU_LEVEL
    # Not set: 0x100 clock stop (no clock), 0x200 NAD (APDU level has none),
    # 0x100000 USB wake-up (the gadget does not do remote wake-up).
)


@dataclass(frozen=True)
class ClassDescriptor:
    """Smart Card Device Class descriptor, field names as in §5.1 and ``struct ccid_descriptor``."""

    bLength: int = CCID_DESCRIPTOR_LENGTH
    bDescriptorType: int = CCID_DESCRIPTOR_TYPE
    bcdCCID: int = BCD_CCID
    bMaxSlotIndex: int = 0
    bVoltageSupport: int = VOLTAGE_SUPPORT_ALL
    dwProtocols: int = PROTOCOLS_T0_T1
    dwDefaultClock: int = 4000
    dwMaximumClock: int = 4000
    #: One clock, returned by GET_CLOCK_FREQUENCIES (Microsoft asks readers to
    #: implement that request even with automatic clock).
    bNumClockSupported: int = 1
    dwDataRate: int = 10752
    dwMaxDataRate: int = 10752
    #: One rate, returned by GET_DATA_RATES.  libccid reads the table at start-up.
    bNumDataRatesSupported: int = 1
    dwMaxIFSD: int = 254
    dwSynchProtocols: int = 0
    dwMechanical: int = 0
    dwFeatures: int = int(DEFAULT_FEATURES)
    dwMaxCCIDMessageLength: int = 1034
    #: 0xFF: at APDU level the reader echoes the host's class byte (§5.1).
    bClassGetResponse: int = 0xFF
    bClassEnvelope: int = 0xFF
    wLcdLayout: int = 0  # no LCD
    bPINSupport: int = 0  # 0: no PIN pad, PC_to_RDR_Secure is not supported; 0x03 with [pinpad]
    #: Every slot may have a command outstanding; libccid then reports the slots
    #: as thread-safe (TAG_IFD_SLOT_THREAD_SAFE) and talks to them concurrently.
    bMaxCCIDBusySlots: int = 1

    @classmethod
    def from_config(cls, config: ReaderConfig) -> "ClassDescriptor":
        return cls(
            bMaxSlotIndex=config.slots - 1,
            dwDefaultClock=config.default_clock_khz,
            dwMaximumClock=config.default_clock_khz,
            dwDataRate=config.data_rate_bps,
            dwMaxDataRate=config.data_rate_bps,
            dwMaxIFSD=config.max_ifsd,
            dwMaxCCIDMessageLength=config.max_message_length,
            bMaxCCIDBusySlots=config.slots,
            bPINSupport=config.pin_support,
            wLcdLayout=config.lcd_layout,
        )

    def to_bytes(self) -> bytes:
        """The 54 descriptor bytes, little-endian, as they go on the wire."""
        return _LAYOUT.pack(*asdict(self).values())

    def fields(self) -> dict[str, int]:
        """Keyword arguments for ``functionfs.getDescriptor(<ctypes ccid_descriptor>, **fields)``.

        bLength and bDescriptorType are left out: getDescriptor fills them in.
        """
        values = asdict(self)
        del values["bLength"], values["bDescriptorType"]
        return values
