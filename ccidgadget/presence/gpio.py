# SPDX-License-Identifier: GPL-3.0-or-later
"""One GPIO line through the GPIO character device, uAPI v2 (include/uapi/linux/gpio.h).

Why the ioctls and not libgpiod's Python binding: Debian 12's python3-libgpiod
is libgpiod 1.6 with the v1 API (and the v1 ioctls, which the kernel keeps only
behind CONFIG_GPIO_CDEV_V1 and calls deprecated); PyPI's `gpiod` 2.x has
another, incompatible API and builds libgpiod from source.  Code for one would
not run on the other, Raspberry Pi OS ships either depending on its release,
and only v2 has debounce and bias in the request.  The v2 structures are
fixed-layout (every 64-bit field is __aligned_u64), so one `struct` layout is
right on 32- and 64-bit ARM and x86 alike; the ioctls are a few lines.

A requested line is a file descriptor: edge events are read from it (48-byte
`struct gpio_v2_line_event`), so an input line registers with the daemon's
asyncio loop like any socket.  With GPIO_V2_LINE_FLAG_ACTIVE_LOW the kernel
reports values and edges in *logical* terms: a button to ground with a
pull-up reads 1 and gives a RISING_EDGE event when pressed.  Debounce is
asked of the kernel (GPIO_V2_LINE_ATTR_ID_DEBOUNCE): the chip does it if it
can, else gpiolib's cdev debounces in software.
"""

from __future__ import annotations

import enum
import errno
import fcntl
import os
import struct
from dataclasses import dataclass
from pathlib import Path

GPIO_MAX_NAME_SIZE = 32
GPIO_V2_LINES_MAX = 64
GPIO_V2_LINE_NUM_ATTRS_MAX = 10


class LineFlag(enum.IntFlag):
    """enum gpio_v2_line_flag."""

    USED = 1 << 0
    ACTIVE_LOW = 1 << 1
    INPUT = 1 << 2
    OUTPUT = 1 << 3
    EDGE_RISING = 1 << 4
    EDGE_FALLING = 1 << 5
    OPEN_DRAIN = 1 << 6
    OPEN_SOURCE = 1 << 7
    BIAS_PULL_UP = 1 << 8
    BIAS_PULL_DOWN = 1 << 9
    BIAS_DISABLED = 1 << 10


class AttrId(enum.IntEnum):
    """enum gpio_v2_line_attr_id."""

    FLAGS = 1
    OUTPUT_VALUES = 2
    DEBOUNCE = 3


class EdgeEvent(enum.IntEnum):
    """enum gpio_v2_line_event_id."""

    RISING_EDGE = 1
    FALLING_EDGE = 2


BIASES = {"pull-up": LineFlag.BIAS_PULL_UP, "pull-down": LineFlag.BIAS_PULL_DOWN,
          "disabled": LineFlag.BIAS_DISABLED, "as-is": LineFlag(0)}

# struct gpio_v2_line_attribute { u32 id; u32 padding; union { u64 flags; u64 values; u32 debounce_period_us; } }
_ATTR = struct.Struct("<IIQ")
# struct gpio_v2_line_config_attribute { attr; u64 mask; }
_CONFIG_ATTR = struct.Struct("<16sQ")
# struct gpio_v2_line_config { u64 flags; u32 num_attrs; u32 padding[5]; attrs[10] }
_CONFIG = struct.Struct(f"<QI20x{_CONFIG_ATTR.size * GPIO_V2_LINE_NUM_ATTRS_MAX}s")
# struct gpio_v2_line_request { u32 offsets[64]; char consumer[32]; config; u32 num_lines;
#                               u32 event_buffer_size; u32 padding[5]; s32 fd; }
_REQUEST = struct.Struct(f"<{GPIO_V2_LINES_MAX}I{GPIO_MAX_NAME_SIZE}s{_CONFIG.size}sII20xi")
# struct gpio_v2_line_values { u64 bits; u64 mask; }
_VALUES = struct.Struct("<QQ")
# struct gpio_v2_line_event { u64 timestamp_ns; u32 id; u32 offset; u32 seqno; u32 line_seqno; u32 padding[6]; }
LINE_EVENT = struct.Struct("<QIIII24x")
# struct gpiochip_info { char name[32]; char label[32]; u32 lines; }
_CHIP_INFO = struct.Struct(f"<{GPIO_MAX_NAME_SIZE}s{GPIO_MAX_NAME_SIZE}sI")
assert (_ATTR.size, _CONFIG_ATTR.size, _CONFIG.size, _REQUEST.size, _VALUES.size, LINE_EVENT.size,
        _CHIP_INFO.size) == (16, 24, 272, 592, 16, 48, 68)


def _ioc(direction: int, number: int, size: int) -> int:
    """_IOC from include/uapi/asm-generic/ioctl.h (x86 and ARM share it): dir 2 bits, size 14, type, nr."""
    return direction << 30 | size << 16 | 0xB4 << 8 | number


_IOC_WRITE, _IOC_READ = 1, 2
GPIO_GET_CHIPINFO_IOCTL = _ioc(_IOC_READ, 0x01, _CHIP_INFO.size)
GPIO_V2_GET_LINE_IOCTL = _ioc(_IOC_READ | _IOC_WRITE, 0x07, _REQUEST.size)
GPIO_V2_LINE_GET_VALUES_IOCTL = _ioc(_IOC_READ | _IOC_WRITE, 0x0E, _VALUES.size)
GPIO_V2_LINE_SET_VALUES_IOCTL = _ioc(_IOC_READ | _IOC_WRITE, 0x0F, _VALUES.size)


class GpioError(OSError):
    """A line could not be requested or used; the message says which and why."""


@dataclass(frozen=True)
class ChipInfo:
    name: str
    label: str
    lines: int


def chip_path(chip: str) -> Path:
    """'gpiochip0', '/dev/gpiochip0' or a chip label such as 'pinctrl-bcm2835' -> the device path."""
    if chip.startswith("/"):
        return Path(chip)
    if (Path("/dev") / chip).exists() or chip.startswith("gpiochip"):
        return Path("/dev") / chip
    for path in sorted(Path("/dev").glob("gpiochip*")):
        try:
            if chip_info(path).label == chip:
                return path
        except OSError:
            continue
    raise GpioError(errno.ENOENT, f"no GPIO chip labelled {chip!r} (gpiodetect lists them)")


def chip_info(path: Path | str) -> ChipInfo:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        buf = bytearray(_CHIP_INFO.size)
        fcntl.ioctl(fd, GPIO_GET_CHIPINFO_IOCTL, buf)
    finally:
        os.close(fd)
    name, label, lines = _CHIP_INFO.unpack(buf)
    return ChipInfo(name.split(b"\0")[0].decode(errors="replace"), label.split(b"\0")[0].decode(errors="replace"),
                    lines)


class GpioLine:
    """One requested line; `fd` is the line request's file descriptor (non-blocking)."""

    def __init__(self, chip: str, offset: int, *, output: bool = False, active_low: bool = False,
                 bias: str = "as-is", debounce_us: int = 0, edges: bool = False, initial: bool = False,
                 consumer: str = "ccidgadget") -> None:
        if bias not in BIASES:
            raise ValueError(f"bias {bias!r}: allowed {', '.join(BIASES)}")
        self.chip = str(chip_path(chip))
        self.offset = offset
        flags = LineFlag.OUTPUT if output else LineFlag.INPUT
        if active_low:
            flags |= LineFlag.ACTIVE_LOW
        flags |= BIASES[bias]
        if edges and not output:
            flags |= LineFlag.EDGE_RISING | LineFlag.EDGE_FALLING
        attrs: list[bytes] = []
        if debounce_us and not output:
            attrs.append(_CONFIG_ATTR.pack(_ATTR.pack(AttrId.DEBOUNCE, 0, debounce_us), 1))
        if output:
            attrs.append(_CONFIG_ATTR.pack(_ATTR.pack(AttrId.OUTPUT_VALUES, 0, 1 if initial else 0), 1))
        config = _CONFIG.pack(int(flags), len(attrs), b"".join(attrs))
        offsets = [offset] + [0] * (GPIO_V2_LINES_MAX - 1)
        request = bytearray(_REQUEST.pack(*offsets, consumer.encode()[:GPIO_MAX_NAME_SIZE - 1], config, 1, 0, -1))
        try:
            chip_fd = os.open(self.chip, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise GpioError(e.errno, f"{self.chip}: {e.strerror}") from None
        try:
            fcntl.ioctl(chip_fd, GPIO_V2_GET_LINE_IOCTL, request)
        except OSError as e:
            why = {errno.EBUSY: "the line is used by another consumer (gpioinfo shows which)",
                   errno.EINVAL: "the chip has no such line, or refuses this configuration"}.get(e.errno, e.strerror)
            raise GpioError(e.errno, f"{self.chip} line {offset}: {why}") from None
        finally:
            os.close(chip_fd)
        self.fd: int = _REQUEST.unpack(request)[-1]
        os.set_blocking(self.fd, False)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def get(self) -> bool:
        buf = bytearray(_VALUES.pack(0, 1))
        fcntl.ioctl(self.fd, GPIO_V2_LINE_GET_VALUES_IOCTL, buf)
        return bool(_VALUES.unpack(buf)[0] & 1)

    def set(self, value: bool) -> None:
        fcntl.ioctl(self.fd, GPIO_V2_LINE_SET_VALUES_IOCTL, bytearray(_VALUES.pack(1 if value else 0, 1)))

    def read_events(self) -> list[tuple[EdgeEvent, int]]:
        """Pending edge events (logical edges, kernel timestamps in ns); [] when none."""
        out = []
        while True:
            try:
                data = os.read(self.fd, LINE_EVENT.size * 16)
            except BlockingIOError:
                return out
            if not data:
                return out
            for pos in range(0, len(data) - LINE_EVENT.size + 1, LINE_EVENT.size):
                timestamp, event_id, _offset, _seqno, _line_seqno = LINE_EVENT.unpack_from(data, pos)
                if event_id in (EdgeEvent.RISING_EDGE, EdgeEvent.FALLING_EDGE):
                    out.append((EdgeEvent(event_id), timestamp))

    def __repr__(self) -> str:
        return f"GpioLine({self.chip!r}, {self.offset})"
