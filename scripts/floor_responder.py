#!/usr/bin/env python3
"""The floor: the least a Python CCID gadget on python-functionfs can do per APDU.

    scripts/floor_responder.py [--read-size 4096]        # as root, on a machine with a UDC

A bare CCID responder for the benchmarks (scripts/bench_floor.py), not a reader: one slot with a
card always present, the PIV card's fixed ATR, ``90 00`` to every XfrBlock, except that a GET DATA
(INS CB) is answered with ``--read-size`` filler bytes before ``90 00`` so that a 4 KiB read goes
through the same response chaining as the daemon's. It has the daemon's USB identity, strings and
descriptors (ccidgadget.usb.gadget / usb.descriptors, ccid.descriptor), so pcscd and libccid on the
host do exactly what they do with the daemon; everything per APDU is its own: no asyncio, no core,
no card, no logging, python-functionfs' own ``processEventsForever`` loop, one bulk-IN AIO
submission per answer.

What it answers (CCID rev 1.1 §6.1/§6.2), enough for libccid's start-up and APDU-level exchanges:
GetSlotStatus and IccPowerOff -> SlotStatus; IccPowerOn -> DataBlock(ATR); Get/Set/ResetParameters
-> Parameters (T=1, from the ATR's defaults); XfrBlock -> DataBlock, with wLevelParameter command
chaining (§6.1.4: 01 begins, 03 continues, 02 ends, 10 asks for more of a chained answer) and
bChainParameter response chaining; anything else -> SlotStatus "command not supported".
It runs until SIGTERM/SIGINT and then removes its gadget.
"""

from __future__ import annotations

import argparse
import errno
import signal
import struct
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import functionfs  # noqa: E402
from functionfs import ch9  # noqa: E402

from ccidgadget.cards.iso7816 import make_atr  # noqa: E402
from ccidgadget.cards.piv.applet import ATR_HISTORICAL  # noqa: E402
from ccidgadget.ccid import ClassDescriptor  # noqa: E402
from ccidgadget.ccid.config import ReaderConfig  # noqa: E402
from ccidgadget.ccid.constants import MessageType  # noqa: E402
from ccidgadget.options import DaemonOptions  # noqa: E402
from ccidgadget.usb.descriptors import ccid_descriptors  # noqa: E402
from ccidgadget.usb.gadget import ConfigfsGadget  # noqa: E402

HEADER = struct.Struct("<BIBB3s")          # bMessageType dwLength bSlot bSeq + 3 message-specific bytes
#: bStatus: ICC present and active, command processed (§6.2.6)
STATUS_OK = 0x00
#: bStatus: command failed (bmCommandStatus 1), bError 0 = command not supported
STATUS_FAILED = 0x40
#: T=1 protocol data structure of RDR_to_PC_Parameters (§6.1.7, table 6.1-7): Fi/Di 11, TCCKST 10
#: (LRC, direct convention), guard time 0, BWI/CWI 4D, clock stop not allowed, IFSC 254, NAD 0
T1_PARAMETERS = bytes((0x11, 0x10, 0x00, 0x4D, 0x00, 0xFE, 0x00))
INS_GET_DATA = 0xCB
SW_OK = b"\x90\x00"


class FloorResponder(functionfs.Function):
    def __init__(self, path: str, descriptor: ClassDescriptor, interface_name: str, atr: bytes,
                 read_size: int) -> None:
        fs, hs, ss = ccid_descriptors(descriptor)
        super().__init__(path, fs_list=fs, hs_list=hs, ss_list=ss, lang_dict={0x0409: [interface_name]})
        self.atr = atr
        self.read_size = read_size
        self.max_payload = descriptor.dwMaxCCIDMessageLength - HEADER.size
        self.max_packet = 512
        self.command = bytearray()         # a chained command APDU being assembled
        self.pending = b""                 # the rest of a chained answer (wLevelParameter 10 asks for it)
        self.message = bytearray()         # one bulk-OUT message being assembled from transfers

    def getEndpointClass(self, is_in, descriptor):
        if is_in:
            return functionfs.EndpointINFile
        owner = self

        class BulkOut(functionfs.EndpointOUTFile):
            def onComplete(self, data, status):
                if data is not None:
                    owner.bulk_out(data)
        return BulkOut

    def onEnable(self):
        super().onEnable()
        try:
            self.max_packet = self.getEndpoint(2).getDescriptor().wMaxPacketSize
        except OSError:
            pass
        self.command.clear()
        self.message.clear()
        self.pending = b""

    def onSetup(self, request_type, request, value, index, length):
        if (request_type & ch9.USB_TYPE_MASK) == ch9.USB_TYPE_CLASS:
            # GET_CLOCK_FREQUENCIES / GET_DATA_RATES (§5.3.2, §5.3.3): the one value the descriptor names
            if request_type & ch9.USB_DIR_IN and request in (0x02, 0x03):
                self.ep0.write(struct.pack("<I", 4000 if request == 0x02 else 10752)[:length])
            elif not request_type & ch9.USB_DIR_IN:
                self.ep0.read(0)           # ABORT (§5.3.1): nothing is ever in progress here
            else:
                self.ep0.halt(request_type)
            return
        super().onSetup(request_type, request, value, index, length)

    # -- bulk ------------------------------------------------------------------
    def bulk_out(self, data) -> None:
        self.message += data
        while len(self.message) >= HEADER.size:
            length = struct.unpack_from("<I", self.message, 1)[0]
            if len(self.message) < HEADER.size + length:
                return
            msg = bytes(self.message[:HEADER.size + length])
            del self.message[:HEADER.size + length]
            self.answer(msg)

    def send(self, message_type: int, slot: int, seq: int, status: int, chain: int, data: bytes = b"") -> None:
        out = HEADER.pack(message_type, len(data), slot, seq, bytes((status, 0, chain))) + data
        ep = self.getEndpoint(2)
        ep.submit([bytearray(out)])
        if len(out) % self.max_packet == 0:
            ep.submit([bytearray()])       # f_fs sends no ZLP by itself (USB 2.0 §5.8.3)

    def data_block(self, slot: int, seq: int, answer: bytes) -> None:
        # bChainParameter (§6.2.1): 00 whole, 01 begins, 03 continues, 02 ends
        if len(answer) <= self.max_payload and not self.pending:
            self.send(MessageType.RDR_to_PC_DataBlock, slot, seq, STATUS_OK, 0x00, answer)
            return
        first = not self.pending
        chunk, self.pending = answer[:self.max_payload], answer[self.max_payload:]
        chain = (0x01 if first else 0x03) if self.pending else 0x02
        self.send(MessageType.RDR_to_PC_DataBlock, slot, seq, STATUS_OK, chain, chunk)

    def answer(self, msg: bytes) -> None:
        message_type, length, slot, seq, specific = HEADER.unpack_from(msg)
        data = msg[HEADER.size:]
        if message_type == MessageType.PC_to_RDR_XfrBlock:
            level = int.from_bytes(specific[1:3], "little")       # wLevelParameter
            if level == 0x10:                                      # more of the chained answer
                self.data_block(slot, seq, self.pending)
                return
            self.command += data
            if level in (0x01, 0x03):                              # more command to come
                self.send(MessageType.RDR_to_PC_DataBlock, slot, seq, STATUS_OK, 0x10)
                return
            apdu, self.command = bytes(self.command), bytearray()
            body = bytes(self.read_size) if len(apdu) > 1 and apdu[1] == INS_GET_DATA else b""
            self.pending = b""
            self.data_block(slot, seq, body + SW_OK)
        elif message_type == MessageType.PC_to_RDR_IccPowerOn:
            self.command.clear()
            self.pending = b""
            self.send(MessageType.RDR_to_PC_DataBlock, slot, seq, STATUS_OK, 0x00, self.atr)
        elif message_type in (MessageType.PC_to_RDR_GetSlotStatus, MessageType.PC_to_RDR_IccPowerOff):
            self.send(MessageType.RDR_to_PC_SlotStatus, slot, seq, STATUS_OK, 0x00)
        elif message_type in (MessageType.PC_to_RDR_GetParameters, MessageType.PC_to_RDR_SetParameters,
                              MessageType.PC_to_RDR_ResetParameters):
            self.send(MessageType.RDR_to_PC_Parameters, slot, seq, STATUS_OK, 0x01, T1_PARAMETERS)
        else:
            self.send(MessageType.RDR_to_PC_SlotStatus, slot, seq, STATUS_FAILED, 0x00)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--read-size", type=int, default=4096,
                    help="filler bytes before 90 00 in the answer to GET DATA (default 4096)")
    args = ap.parse_args(argv)
    settings = DaemonOptions()                   # the daemon's defaults: identity, strings, gadget name
    gadget = ConfigfsGadget(name=settings.gadget_name, identity=settings.usb_identity,
                            runtime_dir=Path("/run/ccidgadget-floor"))
    mount = gadget.create()
    try:
        function = FloorResponder(str(mount), ClassDescriptor.from_config(ReaderConfig()), settings.product,
                                  make_atr(ATR_HISTORICAL), args.read_size)
        with function:
            def stop(*_):
                function.close()
            signal.signal(signal.SIGTERM, stop)
            signal.signal(signal.SIGINT, stop)
            gadget.bind()
            print("floor responder ready", flush=True)
            try:
                function.processEventsForever()
            except OSError as e:
                if e.errno not in (errno.EBADF, errno.EINTR):
                    raise
    finally:
        gadget.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
