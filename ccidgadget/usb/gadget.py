"""configfs gadget management: build, bind, unbind and tear down our USB gadget.

The layout (see configfs/README.md for the same by hand):

    /sys/kernel/config/usb_gadget/<name>/
        idVendor idProduct bcdDevice bcdUSB bDeviceClass=0
        strings/0x409/{manufacturer,product,serialnumber}
        configs/c.1/{MaxPower,bmAttributes,strings/0x409/configuration}
        functions/ffs.<name>            FunctionFS instance, mounted at <runtime>/ffs
        functions/<kind>.<name>         optional kernel functions (acm, ncm, ecm, rndis)
        configs/c.1/<function> -> functions/...
        UDC                             name of the controller we are bound to

We manage configfs ourselves rather than through functionfs.gadget.Gadget:
that class binds the UDC inside __enter__ and its teardown fails on an
unbound gadget, while we need to bind and unbind at will (VSCard readers
appear on the host only while a client is attached), to clean up what a
crashed run left behind, and to refuse precisely when another gadget owns
the UDC.  FunctionFS itself goes through python-functionfs.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ..libc import libc

try:
    # hashlib loads OpenSSL's libcrypto (3.4 MiB resident) for one digest per start; CPython's own
    # SHA-256 gives the same bytes (random.py does the same for SHA-512).
    from _sha256 import sha256
except ImportError:                      # Python 3.12 and later: _sha2
    try:
        from _sha2 import sha256
    except ImportError:
        from hashlib import sha256

log = logging.getLogger(__name__)

CONFIGFS = Path("/sys/kernel/config")
UDC_CLASS = Path("/sys/class/udc")
LANG = "0x409"


class GadgetError(Exception):
    """A set-up problem, with the fix in the message."""


@dataclass(frozen=True)
class Identity:
    """What the host sees in the device descriptor."""

    vid: int
    pid: int
    manufacturer: str = "ccidgadget"
    product: str = "ccidgadget CCID reader"
    serial: str | None = None          # None: stable per board, see board_serial()
    bcd_device: int = 0x0100


#: Named VID:PID choices.  pcsc-lite binds a USB reader only when its VID:PID
#: is listed in a driver bundle's Info.plist (Debian's libccid 1.5.2 lists 562
#: pairs, no catch-all), while Windows and macOS bind any interface of class
#: 0x0B.  So the default must be a listed pair; we pick one that carries no
#: vendor quirks in libccid and describes a device of our own kind.  See the
#: README, "USB identity", for the trade-offs.
PRESETS: dict[str, tuple[int, int, str]] = {
    # pid.codes VID, the USB armory Mk II: an open-hardware Linux board whose
    # GoKey firmware is a USB smart card, as we are.  libccid lists it (1.5.x
    # supported_readers.txt) and keys no quirk on it.  Default.
    "usbarmory": (0x1209, 0x2702, "listed in libccid; no quirks; open-hardware Linux board"),
    # What VMware's virtual CCID reader uses: listed, no libccid quirks, but
    # VM-detection code on the host flags 0E0F devices as 'running in VMware'.
    "vmware": (0x0E0F, 0x0004, "listed in libccid; marks the host as a VMware guest to VM detectors"),
    # QEMU usb-ccid's identity (Gemalto GemPC433-Swap): listed, but libccid
    # applies Gemalto vendor behaviour (escape commands for firmware features).
    "gemalto": (0x08E6, 0x4433, "QEMU usb-ccid compatible; Gemalto vendor quirks in libccid"),
    # Our honest own identity (Linux Foundation multifunction composite
    # gadget).  Not listed in libccid: Linux hosts need an Info.plist entry;
    # Windows and macOS bind it by class.
    "linux": (0x1D6B, 0x0104, "not listed in libccid: Linux hosts need an Info.plist entry"),
}
DEFAULT_PRESET = "usbarmory"

#: Kernel functions that may share the gadget (a Pi Zero stays reachable).
KERNEL_FUNCTIONS = ("acm", "ncm", "ecm", "rndis")


def board_serial() -> str:
    """A serial number stable per board and not revealing the machine id."""
    for source in ("/proc/device-tree/serial-number", "/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            raw = Path(source).read_bytes().strip(b"\x00\n ")
        except OSError:
            continue
        if raw:
            return sha256(b"ccidgadget usb serial\0" + raw).hexdigest()[:16].upper()
    return "0000000000000001"


def _c() -> ctypes.CDLL:
    c = libc()
    if c is None:
        raise OSError(errno.ENOSYS, "no C library to call mount(2) with")
    return c


def _mount(source: str, target: str, fstype: str, options: str = "") -> None:
    if _c().mount(source.encode(), target.encode(), fstype.encode(), 0,
                   options.encode() or None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount -t {fstype} {source} {target}: {os.strerror(err)}")


def _umount(target: str) -> None:
    if _c().umount2(target.encode(), 0) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):
            raise OSError(err, f"umount {target}: {os.strerror(err)}")


def _functionfs_mounts() -> list[tuple[str, str]]:
    """(instance name, mount point) of every mounted FunctionFS."""
    out = []
    try:
        for line in Path("/proc/self/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[2] == "functionfs":
                out.append((parts[0], parts[1].replace("\\040", " ")))
    except OSError:
        pass
    return out


@dataclass
class ExtraFunction:
    """A kernel function added to our gadget (acm serial, ncm/ecm/rndis network)."""

    kind: str
    name: str = "0"
    attributes: dict[str, str] = field(default_factory=dict)


class ConfigfsGadget:
    """Our gadget in configfs.  Not re-entrant; one per daemon."""

    def __init__(self, *, name: str = "ccidgadget", identity: Identity, udc: str | None = None,
                 runtime_dir: Path = Path("/run/ccidgadget"), extra_functions: list[ExtraFunction] = (),
                 configfs: Path = CONFIGFS, udc_class: Path = UDC_CLASS, max_power_ma: int = 100) -> None:
        self.name = name
        self.identity = identity
        self.requested_udc = udc
        self.udc: str | None = None
        self.runtime_dir = Path(runtime_dir)
        self.extra_functions = list(extra_functions)
        self.configfs = Path(configfs)
        self.udc_class = Path(udc_class)
        self.max_power_ma = max_power_ma
        self.root = self.configfs / "usb_gadget" / name
        self.ffs_instance = name                   # functions/ffs.<name>, the mount "device"
        self.ffs_mount = self.runtime_dir / "ffs"

    # -- checks, each failure with its fix ------------------------------------
    def preflight(self) -> str:
        """Check everything we need before touching configfs; return the UDC to use."""
        if os.geteuid() != 0:
            raise GadgetError("ccidgadget must run as root: configfs and FunctionFS need CAP_SYS_ADMIN "
                              "(run it with sudo, or as the systemd service)")
        gadget_dir = self.configfs / "usb_gadget"
        if not gadget_dir.is_dir():
            # Both are harmless when already done; the message below says what failed.
            self._try(["modprobe", "libcomposite"])
            self._try(["mount", "-t", "configfs", "none", str(self.configfs)])
        if not gadget_dir.is_dir():
            raise GadgetError(f"{gadget_dir} does not exist: configfs is not mounted or libcomposite is not "
                              "loaded. Fix: 'modprobe libcomposite' and 'mount -t configfs none /sys/kernel/config'")
        self._try(["modprobe", "usb_f_fs"])
        udcs = sorted(p.name for p in self.udc_class.iterdir()) if self.udc_class.is_dir() else []
        if not udcs:
            raise GadgetError("no USB device controller in /sys/class/udc. On a PC: 'modprobe dummy_hcd' "
                              "(a virtual host+device pair); on a Raspberry Pi: add 'dtoverlay=dwc2' to "
                              "/boot/firmware/config.txt, reboot, and 'modprobe dwc2'")
        if self.requested_udc:
            if self.requested_udc not in udcs:
                raise GadgetError(f"no UDC named {self.requested_udc!r}; available: {', '.join(udcs)}")
            udc = self.requested_udc
        elif len(udcs) == 1:
            udc = udcs[0]
        else:
            raise GadgetError(f"several UDCs exist ({', '.join(udcs)}): choose one with --udc")
        owner = self.udc_owner(udc)
        if owner is not None and owner != self.root:
            raise GadgetError(f"UDC {udc} is in use by the gadget {owner}; ccidgadget will not take it over. "
                              f"Stop that gadget (echo '' > {owner}/UDC) or add our functions to it, "
                              f"or choose another UDC with --udc")
        return udc

    @staticmethod
    def _try(argv: list[str]) -> None:
        try:
            subprocess.run(argv, check=False, capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            pass

    def udc_owner(self, udc: str) -> Path | None:
        """The configfs gadget bound to `udc`, if any."""
        for gadget in (self.configfs / "usb_gadget").iterdir():
            try:
                if (gadget / "UDC").read_text().strip() == udc:
                    return gadget
            except OSError:
                continue
        return None

    # -- build and tear down ----------------------------------------------------
    def cleanup_stale(self) -> bool:
        """Remove a gadget of our name that a crashed run left behind."""
        stale_mounts = [m for dev, m in _functionfs_mounts() if dev == self.ffs_instance]
        if not self.root.exists() and not stale_mounts:
            return False
        log.warning("removing the gadget a previous run left behind (%s)", self.root,
                    extra={"event": "cleanup"})
        self._teardown(stale_mounts)
        return True

    def create(self) -> Path:
        """Create the gadget and mount its FunctionFS; return the mount point."""
        self.udc = self.preflight()
        self.cleanup_stale()
        ident = self.identity
        try:
            self.root.mkdir()
            self._write("idVendor", f"0x{ident.vid:04x}")
            self._write("idProduct", f"0x{ident.pid:04x}")
            self._write("bcdDevice", f"0x{ident.bcd_device:04x}")
            self._write("bcdUSB", "0x0200")
            # Class defined per interface: Windows then binds usbccid.sys by
            # the interface's compatible ID USB\Class_0B.
            self._write("bDeviceClass", "0x00")
            strings = self.root / "strings" / LANG
            strings.mkdir(parents=True, exist_ok=True)
            (strings / "manufacturer").write_text(ident.manufacturer)
            (strings / "product").write_text(ident.product)
            (strings / "serialnumber").write_text(ident.serial or board_serial())
            config = self.root / "configs" / "c.1"
            config.mkdir(parents=True)
            (config / "MaxPower").write_text(str(self.max_power_ma))
            (config / "bmAttributes").write_text("0x80")         # bus powered, no remote wake-up
            (config / "strings" / LANG).mkdir(parents=True)
            (config / "strings" / LANG / "configuration").write_text("CCID")
            ffs = self.root / "functions" / f"ffs.{self.ffs_instance}"
            ffs.mkdir()
            for extra in self.extra_functions:
                fdir = self.root / "functions" / f"{extra.kind}.{extra.name}"
                try:
                    fdir.mkdir()
                except OSError as e:
                    raise GadgetError(f"cannot create the kernel function {extra.kind}: {e.strerror}; "
                                      f"is usb_f_{extra.kind} available? ('modprobe usb_f_{extra.kind}')") from e
                for key, value in extra.attributes.items():
                    (fdir / key).write_text(value)
            os.symlink(ffs, config / f"ffs.{self.ffs_instance}")
            for extra in self.extra_functions:
                os.symlink(self.root / "functions" / f"{extra.kind}.{extra.name}",
                           config / f"{extra.kind}.{extra.name}")
            self.runtime_dir.mkdir(parents=True, exist_ok=True)
            self.ffs_mount.mkdir(mode=0o700, exist_ok=True)
            _mount(self.ffs_instance, str(self.ffs_mount), "functionfs")
        except GadgetError:
            self.destroy()
            raise
        except OSError as e:
            self.destroy()
            raise GadgetError(f"could not build the gadget in {self.root}: {e}") from e
        log.info("gadget %s created (%04x:%04x)", self.root, ident.vid, ident.pid, extra={"event": "create"})
        return self.ffs_mount

    def _write(self, attr: str, value: str) -> None:
        (self.root / attr).write_text(value)

    @property
    def bound(self) -> bool:
        try:
            return bool((self.root / "UDC").read_text().strip())
        except OSError:
            return False

    def bind(self) -> None:
        """Attach to the UDC: the host sees the device appear."""
        if self.bound:
            return
        assert self.udc is not None
        owner = self.udc_owner(self.udc)
        if owner is not None and owner != self.root:
            raise GadgetError(f"UDC {self.udc} was taken by the gadget {owner} meanwhile")
        try:
            (self.root / "UDC").write_text(self.udc)
        except OSError as e:
            hint = " (the UDC has too few endpoints for these functions)" if e.errno == 524 else ""
            raise GadgetError(f"cannot bind to UDC {self.udc}: {e.strerror}{hint}") from e
        log.info("bound to UDC %s", self.udc, extra={"event": "bind"})

    def unbind(self) -> None:
        """Detach from the UDC: the host sees the device disappear."""
        if not self.bound:
            return
        try:
            (self.root / "UDC").write_text("\n")
        except OSError as e:
            if e.errno != errno.ENODEV:
                raise
        log.info("unbound from UDC %s", self.udc, extra={"event": "unbind"})

    def destroy(self) -> None:
        """Tear everything down in reverse order; safe to call more than once."""
        self._teardown([m for dev, m in _functionfs_mounts() if dev == self.ffs_instance])

    def _teardown(self, mounts: list[str]) -> None:
        root = self.root
        if root.exists():
            try:
                if (root / "UDC").read_text().strip():
                    (root / "UDC").write_text("\n")
            except OSError as e:
                log.warning("unbinding %s: %s", root, e)
        # FunctionFS must be unmounted before its function directory can go.
        for mount in mounts:
            try:
                _umount(mount)
            except OSError as e:
                log.warning("%s", e)
        if not root.exists():
            return
        try:
            for config in (root / "configs").glob("*"):
                for link in config.iterdir():
                    if link.is_symlink():
                        link.unlink()
                for strings in (config / "strings").glob("*"):
                    strings.rmdir()
                config.rmdir()
            for function in (root / "functions").glob("*"):
                function.rmdir()
            for strings in (root / "strings").glob("*"):
                strings.rmdir()
            root.rmdir()
        except OSError as e:
            # EBUSY usually means a FunctionFS instance is still mounted or open elsewhere.
            raise GadgetError(f"could not remove {root}: {e} (is its FunctionFS still mounted? "
                              f"see 'grep functionfs /proc/mounts'; configfs/README.md shows the "
                              f"teardown by hand)") from e
        log.info("gadget %s removed", root, extra={"event": "destroy"})
