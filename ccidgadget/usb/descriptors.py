"""USB descriptors for the CCID interface, in python-functionfs terms.

One interface of class 0x0B (Chip/SmartCard, CCID rev 1.1 §4.3), subclass 0,
protocol 0 (CCID bulk transfers, not ICCD), with the 54-byte class descriptor
right after it (f_fs accepts type 0x21 only there and only at that length),
then bulk OUT, bulk IN and interrupt IN (§3.2: the interrupt pipe carries
NotifySlotChange; libccid polls it only when bNumEndpoints == 3).
"""

from __future__ import annotations

import functionfs
from functionfs import ch9
from functionfs.common import USBDescriptorHeader, le16, le32, u8

from ..ccid import ClassDescriptor

#: Interrupt IN: NotifySlotChange for 8 slots is 1 + 2 bytes, HardwareError 4.
INTERRUPT_MAX_PACKET = 8
#: Host polling interval for the interrupt endpoint, in ms: fast enough that
#: an insertion shows up at once, slow enough to cost nothing.
INTERRUPT_INTERVAL_MS = 16


class USBCCIDDescriptor(USBDescriptorHeader):
    """struct ccid_descriptor (include/uapi/linux/usb/ccid.h; CCID rev 1.1 table 5.1-1)."""

    _bDescriptorType = 0x21
    _fields_ = [
        ("bcdCCID", le16), ("bMaxSlotIndex", u8), ("bVoltageSupport", u8),
        ("dwProtocols", le32), ("dwDefaultClock", le32), ("dwMaximumClock", le32),
        ("bNumClockSupported", u8), ("dwDataRate", le32), ("dwMaxDataRate", le32),
        ("bNumDataRatesSupported", u8), ("dwMaxIFSD", le32), ("dwSynchProtocols", le32),
        ("dwMechanical", le32), ("dwFeatures", le32), ("dwMaxCCIDMessageLength", le32),
        ("bClassGetResponse", u8), ("bClassEnvelope", u8), ("wLcdLayout", le16),
        ("bPINSupport", u8), ("bMaxCCIDBusySlots", u8),
    ]


def ccid_descriptors(class_descriptor: ClassDescriptor, *, interface_string: int = 1):
    """Return (fs_list, hs_list, ss_list) for functionfs.Function."""
    ccid = functionfs.getDescriptor(USBCCIDDescriptor, **class_descriptor.fields())
    if len(functionfs.serialise(ccid)) != 54:          # f_fs rejects any other length
        raise AssertionError("CCID class descriptor must be 54 bytes")
    return functionfs.getInterfaceInAllSpeeds(
        interface={
            "bInterfaceClass": ch9.USB_CLASS_CSCID,
            "bInterfaceSubClass": 0,
            "bInterfaceProtocol": 0,
            "iInterface": interface_string,
        },
        endpoint_list=[
            {"endpoint": {"bEndpointAddress": ch9.USB_DIR_OUT,
                          "bmAttributes": ch9.USB_ENDPOINT_XFER_BULK}},
            {"endpoint": {"bEndpointAddress": ch9.USB_DIR_IN,
                          "bmAttributes": ch9.USB_ENDPOINT_XFER_BULK}},
            {"endpoint": {"bEndpointAddress": ch9.USB_DIR_IN,
                          "bmAttributes": ch9.USB_ENDPOINT_XFER_INT,
                          "wMaxPacketSize": INTERRUPT_MAX_PACKET,
                          "bInterval": INTERRUPT_INTERVAL_MS}},
        ],
        class_descriptor_list=[ccid],
    )
