# SPDX-License-Identifier: GPL-3.0-or-later
"""`ccidgadget doctor`: check what a board needs before it can be a USB smart-card reader, with the fix for each.

Every check reads files only (sysfs, configfs, /proc, /boot, /etc, the state directory) through
`System`, whose paths all hang off one root, so the unit tests run the same checks against fake
trees (tests/daemon/test_doctor.py). Nothing is changed on the system.

Exit status: 0 when nothing FAILed (warnings and notes do not change it), 1 otherwise, 2 usage.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import os
import re
import stat
import sys
from pathlib import Path

from .daemon import config as config_mod
from .usb.gadget import PRESETS

#: presets whose VID:PID Debian 12's libccid 1.5.2 lists in its Info.plist (README, "USB identity")
LISTED_PRESETS = ("usbarmory", "vmware", "gemalto")

#: legacy (non-configfs) gadget drivers: each takes the UDC as soon as it is loaded
LEGACY_GADGETS = ("g_ether", "g_serial", "g_mass_storage", "g_multi", "g_cdc", "g_hid", "g_zero", "g_ffs",
                  "g_acm_ms", "g_audio", "g_midi", "g_printer", "g_webcam", "g_ncm", "g_nokia", "g_dbgp",
                  "gadgetfs")

#: Raspberry Pi models whose USB ports sit behind a USB hub/Ethernet chip (LAN951x/LAN7515):
#: no port can be a USB device. Pi 1 A/A+, Zero, Zero 2 W, 3 A+, 4 B (USB-C) and 5 (USB-C) can.
PI_WITHOUT_DEVICE_PORT = re.compile(r"Raspberry Pi (Model B|[23] Model B)\b")


class Status(enum.Enum):
    OK = "ok"
    NOTE = "note"        # something to know; nothing is wrong
    WARN = "warn"        # works now, but something is likely to bite (after a reboot, on the host)
    FAIL = "FAIL"        # the reader cannot work until this is fixed


@dataclasses.dataclass(frozen=True)
class Finding:
    check: str
    status: Status
    summary: str
    fix: str = ""


class System:
    """The files the checks read, under `root` (``/`` on a board; a fake tree in the tests)."""

    def __init__(self, root: Path | str = "/", *, kernel_release: str | None = None, euid: int | None = None,
                 service_uid: int = 0) -> None:
        self.root = Path(root)
        self.kernel_release = kernel_release or os.uname().release
        self.euid = os.geteuid() if euid is None else euid
        #: the uid the daemon runs as (the unit: root), which must own the cards' state
        self.service_uid = service_uid

    def path(self, p: str | Path) -> Path:
        return self.root / str(p).lstrip("/")

    def read(self, p: str | Path) -> str | None:
        try:
            return self.path(p).read_text(errors="replace")
        except OSError:
            return None

    def module_loaded(self, name: str) -> bool:
        return self.path(f"/sys/module/{name}").is_dir()

    def module_available(self, name: str) -> bool | None:
        """True/False from the kernel's module lists; None when they are not there to read."""
        base = self.path(f"/lib/modules/{self.kernel_release}")
        dep, builtin = base / "modules.dep", base / "modules.builtin"
        if not dep.exists() and not builtin.exists():
            return None
        pattern = re.compile(rf"(^|/){re.escape(name)}\.ko(\.\w+)?:?", re.M)
        return any(f.exists() and pattern.search(f.read_text(errors="replace")) for f in (dep, builtin))

    def mounts(self) -> list[list[str]]:
        return [line.split() for line in (self.read("/proc/mounts") or "").splitlines() if line.strip()]

    def pi_model(self) -> str | None:
        model = (self.read("/proc/device-tree/model") or "").strip("\0\n ")
        return model if model.startswith("Raspberry Pi") else None

    def boot_config(self) -> Path | None:
        """config.txt: /boot/firmware (bookworm) or /boot (older images)."""
        for p in ("/boot/firmware/config.txt", "/boot/config.txt"):
            if self.path(p).is_file():
                return self.path(p)
        return None

    def modules_at_boot(self) -> set[str]:
        """Modules named in modules-load.d, /etc/modules and modules-load= on the kernel command line."""
        names: set[str] = set()
        files = [self.path("/etc/modules")]
        for d in ("/etc/modules-load.d", "/run/modules-load.d", "/usr/lib/modules-load.d", "/lib/modules-load.d"):
            if self.path(d).is_dir():
                files += sorted(self.path(d).glob("*.conf"))
        for f in files:
            try:
                text = f.read_text(errors="replace")
            except OSError:
                continue
            names |= {line.split("#")[0].strip().replace("-", "_") for line in text.splitlines()} - {""}
        cmdline = (self.read("/proc/cmdline") or "") + " " + self._pi_cmdline()
        for m in re.finditer(r"(?:^|\s)modules[-_]load=(\S+)", cmdline):
            names |= {n.replace("-", "_") for n in m.group(1).split(",") if n}
        return names

    def _pi_cmdline(self) -> str:
        for p in ("/boot/firmware/cmdline.txt", "/boot/cmdline.txt"):
            text = self.read(p)
            if text is not None:
                return text
        return ""


#: config.txt model filters (Raspberry Pi documentation, "Conditional filters") and the model
#: names they select; filters not listed here are taken as not matching this board
_MODEL_FILTERS = {
    "pi0": ("Zero",), "pi0w": ("Zero W",), "pi02": ("Zero 2",), "pi1": ("Model A", "Model B"),
    "pi2": ("Pi 2",), "pi3": ("Pi 3",), "pi3+": ("Pi 3 Model B Plus", "Pi 3 Model A Plus"),
    "pi4": ("Pi 4", "Pi 400", "Compute Module 4"), "pi400": ("Pi 400",), "cm4": ("Compute Module 4",),
    "pi5": ("Pi 5", "Pi 500", "Compute Module 5"), "pi500": ("Pi 500",), "cm5": ("Compute Module 5",),
}


def _active_config_lines(text: str, model: str) -> list[str]:
    """config.txt lines that apply to this board: before any filter, under [all], or under a model
    filter that names it. (Raspberry Pi OS bookworm's own file ends with [cm5] dtoverlay=dwc2,dr_mode=host,
    then [all]: that line is not for a Zero.)"""
    lines, applies = [], True
    for raw in text.splitlines():
        line = raw.split("#")[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            name = line[1:-1].strip().lower()
            applies = name == "all" or any(m in model for m in _MODEL_FILTERS.get(name, ()))
            continue
        if applies:
            lines.append(line)
    return lines


class Doctor:
    def __init__(self, system: System, config_path: Path | None = None) -> None:
        self.sys = system
        self.config_path = config_path
        self.cfg: config_mod.DaemonOptions | None = None
        self.findings: list[Finding] = []

    def add(self, check: str, status: Status, summary: str, fix: str = "") -> None:
        self.findings.append(Finding(check, status, summary, fix))

    def run(self) -> list[Finding]:
        for step in (self.check_privileges, self.check_configuration, self.check_python_modules,
                     self.check_configfs, self.check_libcomposite, self.check_functionfs, self.check_udc,
                     self.check_gadgets, self.check_state_dir, self.check_host_identity, self.check_pcsc):
            step()
        return self.findings

    # -- the checks, in the order a user meets the problems --------------------------------
    def check_privileges(self) -> None:
        if self.sys.euid != 0:
            self.add("privileges", Status.NOTE, "not running as root: the state directory cannot be read "
                     "and the daemon itself must run as root", "sudo ccidgadget doctor")

    def check_configuration(self) -> None:
        explicit = self.config_path is not None
        path = self.config_path if explicit else self.sys.path(config_mod.DEFAULT_CONFIG_PATH)
        try:
            self.cfg = config_mod.load(path) if explicit or path.exists() else config_mod.DaemonOptions()
        except config_mod.ConfigError as e:
            self.cfg = config_mod.DaemonOptions()
            self.add("configuration", Status.FAIL, f"not usable, the daemon will exit with status 2:\n{e}",
                     f"edit {path} (every key is explained in {path}.example), then: ccidgadget check-config")
            return
        if self.cfg.source == "built-in defaults":
            self.add("configuration", Status.OK, f"no {path}: the built-in defaults (one emulated PIV slot)")
            return
        slots = ", ".join(s.engine + (f" {s.type}" if s.engine == "emulated" else "") for s in self.cfg.slots)
        self.add("configuration", Status.OK, f"{self.cfg.source}: {len(self.cfg.slots)} slot(s): {slots}")

    def check_python_modules(self) -> None:
        missing = []
        for module, fix in (("functionfs", "reinstall ccidgadget (it ships python-functionfs)"),
                            ("libaio", "apt install libaio1 (libaio1t64 on Debian 13)")):
            try:
                __import__(module)
            except (ImportError, OSError) as e:   # OSError: libaio.so.1 itself is missing
                missing.append((module, str(e), fix))
        for module, error, fix in missing:
            self.add("python", Status.FAIL, f"cannot import {module}: {error}", fix)
        if not missing:
            self.add("python", Status.OK, "functionfs and libaio import")

    def check_configfs(self) -> None:
        if any(len(m) >= 3 and m[2] == "configfs" for m in self.sys.mounts()):
            self.add("configfs", Status.OK, "mounted on /sys/kernel/config")
        else:
            self.add("configfs", Status.FAIL, "configfs is not mounted on /sys/kernel/config",
                     "mount -t configfs none /sys/kernel/config (systemd's sys-kernel-config.mount does it "
                     "at boot; the daemon also tries)")

    def check_libcomposite(self) -> None:
        at_boot = "libcomposite" in self.sys.modules_at_boot()
        loaded = self.sys.module_loaded("libcomposite") or self.sys.path("/sys/kernel/config/usb_gadget").is_dir()
        if not loaded:
            self.add("libcomposite", Status.FAIL, "the USB gadget framework (libcomposite) is not loaded: "
                     "/sys/kernel/config/usb_gadget is missing",
                     "modprobe libcomposite; and at boot: echo libcomposite > /etc/modules-load.d/ccidgadget.conf"
                     + ("" if not at_boot else " (it is listed there: see journalctl -u systemd-modules-load)"))
        elif not at_boot and self.sys.module_loaded("libcomposite"):
            self.add("libcomposite", Status.WARN, "loaded now, but not listed to load at boot",
                     "echo libcomposite >> /etc/modules-load.d/ccidgadget.conf")
        else:
            self.add("libcomposite", Status.OK, "loaded")

    def check_functionfs(self) -> None:
        if self.sys.module_loaded("usb_f_fs"):
            self.add("functionfs", Status.OK, "usb_f_fs loaded")
            return
        available = self.sys.module_available("usb_f_fs")
        if available is False:
            self.add("functionfs", Status.FAIL, f"kernel {self.sys.kernel_release} has no FunctionFS "
                     "(usb_f_fs, CONFIG_USB_CONFIGFS_F_FS)", "use a kernel built with it (Debian's and "
                     "Raspberry Pi OS's are)")
        elif available:
            self.add("functionfs", Status.OK, "usb_f_fs available (the kernel loads it when the gadget is built)")
        else:
            self.add("functionfs", Status.NOTE, f"cannot tell whether kernel {self.sys.kernel_release} has "
                     "usb_f_fs (no /lib/modules lists); it is loaded when the gadget is built")

    def _udcs(self) -> list[str]:
        d = self.sys.path("/sys/class/udc")
        return sorted(p.name for p in d.iterdir()) if d.is_dir() else []

    def check_udc(self) -> None:
        udcs = self._udcs()
        model = self.sys.pi_model()
        pi_ready = self._check_pi(model, bool(udcs)) if model else False
        wanted = self.cfg.udc if self.cfg else None
        if not udcs:
            if model:
                fix = ("dtoverlay=dwc2 is set and dwc2 is loaded: reboot if config.txt changed since boot, "
                       "and look at: dmesg | grep -i dwc2" if pi_ready else "fix the lines above, then reboot")
            else:
                fix = ("this machine has no USB device controller; a board needs a port that can be a device "
                       "(OTG) and its driver. To test on a PC: modprobe dummy_hcd")
            self.add("udc", Status.FAIL, "no USB device controller in /sys/class/udc", fix)
        elif wanted and wanted not in udcs:
            self.add("udc", Status.FAIL, f"gadget.udc = {wanted!r} does not exist; there are: {', '.join(udcs)}",
                     "set gadget.udc to one of them, or remove the key when there is only one")
        elif not wanted and len(udcs) > 1:
            self.add("udc", Status.FAIL, f"several UDCs ({', '.join(udcs)}) and no gadget.udc",
                     "name the one to use: [gadget] udc = \"...\" in the configuration (or --udc)")
        else:
            self.add("udc", Status.OK, wanted or udcs[0])

    def _check_pi(self, model: str, have_udc: bool) -> bool:
        """The dwc2 set-up of a Raspberry Pi; True when nothing is missing."""
        if PI_WITHOUT_DEVICE_PORT.search(model):
            self.add("raspberry-pi", Status.FAIL, f"{model}: its USB ports are behind a hub chip, none can be "
                     "a USB device", "use a Pi Zero / Zero 2 W, 4 or 5 (USB-C port), 3 A+ or 1 A+")
            return False
        cfg_txt = self.sys.boot_config()
        overlay = None
        if cfg_txt is not None:
            lines = _active_config_lines(cfg_txt.read_text(errors="replace"), model)
            overlays = [line for line in lines if re.match(r"dtoverlay\s*=\s*dwc2\b", line)]
            overlay = overlays[-1] if overlays else None      # the last one wins
        where = str(cfg_txt.relative_to(self.sys.root)) if cfg_txt else "config.txt"
        where = "/" + where.lstrip("/")
        if overlay and "dr_mode=host" in overlay.replace(" ", ""):
            self.add("dwc2", Status.FAIL, f"{where}: '{overlay}' makes the port a host",
                     "change it to dtoverlay=dwc2 (or dtoverlay=dwc2,dr_mode=peripheral) and reboot")
            return False
        if not overlay and not have_udc:
            self.add("dwc2", Status.FAIL, f"{model}: no 'dtoverlay=dwc2' in {where}",
                     f"add the line dtoverlay=dwc2 under [all] at the end of {where}, then reboot")
            return False
        if not self.sys.module_loaded("dwc2") and not have_udc:
            self.add("dwc2", Status.FAIL, "the dwc2 driver is not loaded",
                     "modprobe dwc2; and at boot: echo dwc2 >> /etc/modules-load.d/ccidgadget.conf")
            return False
        # No modules-load.d entry is needed for dwc2: udev loads it for the overlay's device-tree node.
        self.add("dwc2", Status.OK, f"{model}: {'dtoverlay=dwc2' if overlay else 'a UDC exists'}, dwc2 loaded")
        return True

    def check_gadgets(self) -> None:
        ours = self.cfg.gadget_name if self.cfg else "ccidgadget"
        legacy = [m for m in LEGACY_GADGETS if self.sys.module_loaded(m)]
        for m in legacy:
            self.add("other-gadget", Status.FAIL, f"the legacy gadget driver {m} is loaded and holds the UDC",
                     f"rmmod {m}; and remove {m} from modules-load= in cmdline.txt, /etc/modules and "
                     f"/etc/modules-load.d (ccidgadget can add a serial or network function itself: "
                     f"[[function]] kind = \"acm\" / \"ncm\")")
        gadgets = self.sys.path("/sys/kernel/config/usb_gadget")
        others = []
        bound_ours = None
        if gadgets.is_dir():
            for g in sorted(gadgets.iterdir()):
                try:
                    udc = (g / "UDC").read_text().strip()
                except OSError:
                    continue
                if not udc:
                    continue
                if g.name == ours:
                    bound_ours = udc
                else:
                    others.append((g.name, udc))
        wanted = (self.cfg.udc if self.cfg else None) or (self._udcs() or [None])[0]
        for name, udc in others:
            status = Status.FAIL if udc == wanted else Status.NOTE
            self.add("other-gadget", status, f"the configfs gadget {name!r} is bound to {udc}",
                     f"echo '' > /sys/kernel/config/usb_gadget/{name}/UDC and disable what creates it "
                     "(or give ccidgadget another UDC)" if status is Status.FAIL else "")
        if bound_ours:
            state = (self.sys.read(f"/sys/class/udc/{bound_ours}/state") or "").strip()
            if state in ("not attached", "powered", "default"):
                self.add("host", Status.WARN, f"ccidgadget is bound to {bound_ours} but the USB state is "
                         f"{state!r}: no host has configured it",
                         "use the Pi's data port (marked USB on a Zero, not PWR; the USB-C port on a Pi 4/5) "
                         "and a data cable, not a charge-only one")
            else:
                self.add("host", Status.OK, f"ccidgadget is bound to {bound_ours}" + (f", USB state {state}"
                                                                                      if state else ""))
        elif not others and not legacy:
            self.add("other-gadget", Status.OK, "no other gadget holds a UDC")

    def check_state_dir(self) -> None:
        state = Path(self.cfg.state_dir if self.cfg else config_mod.DaemonOptions.state_dir)
        d = self.sys.path(state)
        if not d.exists():
            self.add("state", Status.OK, f"{state} does not exist yet: the service creates it (0700 root)")
            return
        uid = self.sys.service_uid
        problems = []
        try:
            entries = [d] + sorted(d.rglob("*"))
        except PermissionError:
            self.add("state", Status.WARN, f"cannot read {state} (run as root to check it)", "sudo ccidgadget doctor")
            return
        for p in entries:
            try:
                st = p.lstat()
            except OSError:
                continue
            mode = stat.S_IMODE(st.st_mode)
            rel = state / p.relative_to(d) if p != d else state
            if st.st_uid != uid:
                problems.append(f"{rel} belongs to uid {st.st_uid} (the service runs as uid {uid} and refuses "
                                "card secrets someone else controls)")
            if mode & 0o077:
                problems.append(f"{rel} has mode {mode:04o}: group/others can reach card secrets")
        if problems:
            self.add("state", Status.FAIL, "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more"
                                                                       if len(problems) > 5 else ""),
                     f"chown -R root:root {state} && chmod -R go= {state}  (provision cards as root: "
                     "sudo ccidgadget card ...)")
        else:
            self.add("state", Status.OK, f"{state}: uid {uid}, no group/other access")

    def check_host_identity(self) -> None:
        cfg = self.cfg or config_mod.DaemonOptions()
        ident = cfg.usb_identity
        pair = f"{ident.vid:04x}:{ident.pid:04x}"
        preset_pair = PRESETS[cfg.identity][:2]
        if cfg.identity in LISTED_PRESETS and (ident.vid, ident.pid) == preset_pair:
            self.add("host-identity", Status.NOTE, f"{pair} ({cfg.identity}) is listed in libccid (Debian 12's "
                     "1.5.2): Linux hosts bind it with their stock driver; Windows and macOS bind any CCID",
                     f"on an older Linux host check: grep -ci '0x{ident.pid:04x}' "
                     "/usr/lib/pcsc/drivers/ifd-ccid.bundle/Contents/Info.plist")
        else:
            self.add("host-identity", Status.WARN, f"{pair} is not a VID:PID libccid lists: Linux hosts' pcscd "
                     "will not bind the reader (Windows and macOS bind it by class)",
                     "add the pair to ifdVendorID/ifdProductID/ifdFriendlyName in the host's "
                     "/usr/lib/pcsc/drivers/ifd-ccid.bundle/Contents/Info.plist and restart pcscd, or use "
                     "gadget.identity = \"usbarmory\"")

    def check_pcsc(self) -> None:
        slots = [i for i, s in enumerate(self.cfg.slots if self.cfg else []) if s.engine == "pcsc"]
        if not slots:
            return
        try:
            __import__("smartcard.scard")
        except ImportError as e:
            self.add("pcsc", Status.FAIL, f"slot(s) {slots} relay a PC/SC reader but pyscard is missing ({e})",
                     "apt install python3-pyscard")
            return
        if not self.sys.path("/run/pcscd/pcscd.comm").exists():
            self.add("pcsc", Status.FAIL, f"slot(s) {slots} relay a PC/SC reader but pcscd is not running",
                     "systemctl enable --now pcscd.socket")
        else:
            self.add("pcsc", Status.OK, "pcscd is running")


def format_findings(findings: list[Finding]) -> str:
    out = []
    for f in findings:
        first, *rest = f.summary.splitlines()
        out.append(f"{f.status.value:<5} {f.check:<14} {first}")
        out += [f"{'':21}{line}" for line in rest]
        if f.fix and f.status is not Status.OK:
            out.append(f"{'':21}{'hint' if f.status is Status.NOTE else 'fix'}: {f.fix}")
    failed = sum(f.status is Status.FAIL for f in findings)
    warned = sum(f.status is Status.WARN for f in findings)
    out.append(f"{failed} problem(s), {warned} warning(s)" if failed or warned else "everything looks right")
    return "\n".join(out)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ccidgadget doctor",
                                description="Check this board's USB gadget set-up (device controller, dwc2 on a "
                                            "Raspberry Pi, configfs, libcomposite, other gadgets, the state "
                                            "directory, the configuration, the host-side VID:PID) and print the "
                                            "fix for each problem. Exit status 1 if anything FAILed.")
    p.add_argument("--config", type=Path, metavar="FILE", help="default /etc/ccidgadget/ccidgadget.toml")
    return p


def main_doctor(argv: list[str], system: System | None = None) -> int:
    args = parser().parse_args(argv)
    findings = Doctor(system or System(), args.config).run()
    print(format_findings(findings))
    return 1 if any(f.status is Status.FAIL for f in findings) else 0
