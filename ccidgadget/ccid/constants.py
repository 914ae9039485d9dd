# SPDX-License-Identifier: GPL-3.0-or-later
"""Numbers from the CCID specification (USB Device Class: Smart Card CCID, rev 1.1, 2005).

Names follow the specification so the code can be held against it:
`MessageType.PC_to_RDR_XfrBlock` is the spec's ``PC_to_RDR_XfrBlock``.
All multi-byte CCID fields are little-endian (§6: "all values are LSB first").
"""

from __future__ import annotations

import enum

#: Every bulk message starts with a 10-byte header (§6.1, §6.2).
CCID_HEADER_SIZE = 10

#: bcdCCID for rev 1.10 (§5.1).
BCD_CCID = 0x0110

#: Class descriptor type (CS_DEVICE-like, USB_TYPE_CLASS | 0x01) and length (§5.1).
CCID_DESCRIPTOR_TYPE = 0x21
CCID_DESCRIPTOR_LENGTH = 0x36

#: bMaxSlotIndex is one byte but libccid and the spec examples stop at 8 slots; a
#: NotifySlotChange for 8 slots is 1 + 2 bytes, well inside libccid's 8-byte
#: interrupt buffer (defs.h CCID_INTERRUPT_SIZE).
MAX_SLOTS = 8


class MessageType(enum.IntEnum):
    """bMessageType (§6.1 bulk-OUT, §6.2 bulk-IN, §6.3 interrupt-IN)."""

    # §6.1 command pipe, bulk-OUT
    PC_to_RDR_SetParameters = 0x61
    PC_to_RDR_IccPowerOn = 0x62
    PC_to_RDR_IccPowerOff = 0x63
    PC_to_RDR_GetSlotStatus = 0x65
    PC_to_RDR_Secure = 0x69
    PC_to_RDR_T0APDU = 0x6A
    PC_to_RDR_Escape = 0x6B
    PC_to_RDR_GetParameters = 0x6C
    PC_to_RDR_ResetParameters = 0x6D
    PC_to_RDR_IccClock = 0x6E
    PC_to_RDR_XfrBlock = 0x6F
    PC_to_RDR_Mechanical = 0x71
    PC_to_RDR_Abort = 0x72
    PC_to_RDR_SetDataRateAndClockFrequency = 0x73
    # §6.2 response pipe, bulk-IN
    RDR_to_PC_DataBlock = 0x80
    RDR_to_PC_SlotStatus = 0x81
    RDR_to_PC_Parameters = 0x82
    RDR_to_PC_Escape = 0x83
    RDR_to_PC_DataRateAndClockFrequency = 0x84
    # §6.3 interrupt-IN
    RDR_to_PC_NotifySlotChange = 0x50
    RDR_to_PC_HardwareError = 0x51


#: The bulk-IN message that answers each bulk-OUT message (§6.1.1 to §6.1.14).
RESPONSE_TYPE: dict[int, MessageType] = {
    MessageType.PC_to_RDR_IccPowerOn: MessageType.RDR_to_PC_DataBlock,  # §6.1.1
    MessageType.PC_to_RDR_IccPowerOff: MessageType.RDR_to_PC_SlotStatus,  # §6.1.2
    MessageType.PC_to_RDR_GetSlotStatus: MessageType.RDR_to_PC_SlotStatus,  # §6.1.3
    MessageType.PC_to_RDR_XfrBlock: MessageType.RDR_to_PC_DataBlock,  # §6.1.4
    MessageType.PC_to_RDR_GetParameters: MessageType.RDR_to_PC_Parameters,  # §6.1.5
    MessageType.PC_to_RDR_ResetParameters: MessageType.RDR_to_PC_Parameters,  # §6.1.6
    MessageType.PC_to_RDR_SetParameters: MessageType.RDR_to_PC_Parameters,  # §6.1.7
    MessageType.PC_to_RDR_Escape: MessageType.RDR_to_PC_Escape,  # §6.1.8
    MessageType.PC_to_RDR_IccClock: MessageType.RDR_to_PC_SlotStatus,  # §6.1.9
    MessageType.PC_to_RDR_T0APDU: MessageType.RDR_to_PC_SlotStatus,  # §6.1.10
    MessageType.PC_to_RDR_Secure: MessageType.RDR_to_PC_DataBlock,  # §6.1.11
    MessageType.PC_to_RDR_Mechanical: MessageType.RDR_to_PC_SlotStatus,  # §6.1.12
    MessageType.PC_to_RDR_Abort: MessageType.RDR_to_PC_SlotStatus,  # §6.1.13
    MessageType.PC_to_RDR_SetDataRateAndClockFrequency:
        MessageType.RDR_to_PC_DataRateAndClockFrequency,  # §6.1.14
}


class ICCStatus(enum.IntEnum):
    """bmICCStatus, bits 0-1 of bStatus (§6.2.6)."""

    ACTIVE = 0  # an ICC is present and active (powered and clocked)
    INACTIVE = 1  # an ICC is present and inactive (not activated or shut down)
    ABSENT = 2  # no ICC is present


class CommandStatus(enum.IntEnum):
    """bmCommandStatus, bits 6-7 of bStatus (§6.2.6)."""

    PROCESSED = 0  # processed without error
    FAILED = 1  # failed, the error code is in bError
    TIME_EXTENSION = 2  # time extension is requested, bError holds the multiplier


def make_status(icc: ICCStatus | int, command: CommandStatus | int = CommandStatus.PROCESSED) -> int:
    """bStatus = bmICCStatus | bmCommandStatus << 6 (§6.2.6)."""
    return (int(icc) & 0x03) | ((int(command) & 0x03) << 6)


class SlotError(enum.IntEnum):
    """bError values with a name (§6.2.6, table 6.2-2).

    Positive values below 0x80 that are not listed here are the *offset of the
    offending field* in the bulk-OUT message: see `FieldOffset`.
    """

    CMD_ABORTED = 0xFF
    ICC_MUTE = 0xFE
    XFR_PARITY_ERROR = 0xFD
    XFR_OVERRUN = 0xFC
    HW_ERROR = 0xFB
    BAD_ATR_TS = 0xF8
    BAD_ATR_TCK = 0xF7
    ICC_PROTOCOL_NOT_SUPPORTED = 0xF6
    ICC_CLASS_NOT_SUPPORTED = 0xF5
    PROCEDURE_BYTE_CONFLICT = 0xF4
    DEACTIVATED_PROTOCOL = 0xF3
    BUSY_WITH_AUTO_SEQUENCE = 0xF2
    PIN_TIMEOUT = 0xF0
    PIN_CANCELLED = 0xEF
    CMD_SLOT_BUSY = 0xE0
    CMD_NOT_SUPPORTED = 0x00


class FieldOffset(enum.IntEnum):
    """bError = offset of the bad field in the PC_to_RDR message (§6.2.6, "Index of not supported/incorrect message parameter")."""

    DW_LENGTH = 1  # dwLength does not fit the message or exceeds dwMaxCCIDMessageLength
    B_SLOT = 5  # slot does not exist
    B_POWER_SELECT = 7  # IccPowerOn: bPowerSelect
    B_PROTOCOL_NUM = 7  # SetParameters: bProtocolNum
    B_CLOCK_COMMAND = 7  # IccClock: bClockCommand
    ABRFU_7 = 7
    ABRFU_8 = 8  # also XfrBlock's wLevelParameter
    W_LEVEL_PARAMETER = 8
    ABRFU_9 = 9
    AB_DATA = 10  # first byte of abProtocolDataStructure / abData


class ClassRequest(enum.IntEnum):
    """Class-specific control requests (§5.3)."""

    ABORT = 0x01  # §5.3.1, host to device, wValue = bSlot | bSeq << 8
    GET_CLOCK_FREQUENCIES = 0x02  # §5.3.2, device to host, le32 kHz array
    GET_DATA_RATES = 0x03  # §5.3.3, device to host, le32 bps array


#: bmRequestType for class requests addressed to the interface (USB 2.0 §9.3.1).
REQUEST_TYPE_CLASS_INTERFACE_OUT = 0x21
REQUEST_TYPE_CLASS_INTERFACE_IN = 0xA1


class Feature(enum.IntFlag):
    """dwFeatures bits (§5.1).  `descriptor.py` explains which ones we set and why."""

    AUTO_PARAMETERS_FROM_ATR = 0x00000002
    AUTO_ACTIVATION = 0x00000004
    AUTO_VOLTAGE = 0x00000008
    AUTO_CLOCK = 0x00000010
    AUTO_BAUD = 0x00000020
    AUTO_PARAMETER_NEGOTIATION = 0x00000040
    AUTO_PPS = 0x00000080
    CAN_STOP_CLOCK = 0x00000100
    NAD_OTHER_THAN_0 = 0x00000200
    AUTO_IFSD = 0x00000400
    TPDU_LEVEL = 0x00010000
    SHORT_APDU_LEVEL = 0x00020000
    EXTENDED_APDU_LEVEL = 0x00040000
    USB_WAKE_UP = 0x00100000


class Protocol(enum.IntEnum):
    """bProtocolNum (§6.1.7) and dwProtocols bit numbers (§5.1)."""

    T0 = 0
    T1 = 1


class PowerSelect(enum.IntEnum):
    """bPowerSelect of PC_to_RDR_IccPowerOn (§6.1.1)."""

    AUTOMATIC = 0
    V5_0 = 1
    V3_0 = 2
    V1_8 = 3


class ClockCommand(enum.IntEnum):
    """bClockCommand of PC_to_RDR_IccClock (§6.1.9)."""

    RESTART = 0
    STOP = 1


class ClockStatus(enum.IntEnum):
    """bClockStatus of RDR_to_PC_SlotStatus (§6.2.2)."""

    RUNNING = 0
    STOPPED_L = 1
    STOPPED_H = 2
    STOPPED_UNKNOWN = 3


class LevelParameter(enum.IntEnum):
    """wLevelParameter of PC_to_RDR_XfrBlock at extended APDU level (§6.1.4)."""

    SINGLE = 0x0000  # the command APDU begins and ends with this command
    BEGIN = 0x0001  # the command APDU begins with this command, and continues in the next
    END = 0x0002  # this abData continues a command APDU and ends it
    CONTINUE = 0x0003  # this abData continues a command APDU and another block follows
    NEXT_RESPONSE = 0x0010  # empty abData: continuation of the response APDU is expected


class ChainParameter(enum.IntEnum):
    """bChainParameter of RDR_to_PC_DataBlock at extended APDU level (§6.2.1)."""

    SINGLE = 0x00  # the response APDU begins and ends in this command
    BEGIN = 0x01  # the response APDU begins with this command and is to continue
    END = 0x02  # this abData continues the response APDU and ends it
    CONTINUE = 0x03  # this abData continues the response APDU and another block follows
    EXPECT_MORE_COMMAND = 0x10  # empty abData: continuation of the command APDU is expected next


class HardwareErrorCode(enum.IntEnum):
    """bHardwareErrorCode of RDR_to_PC_HardwareError (§6.3.2)."""

    OVERCURRENT = 0x01
