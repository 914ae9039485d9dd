# SPDX-License-Identifier: GPL-3.0-or-later
"""QEMU test bed: boot a throw-away Linux guest that has configfs + dummy_hcd.

The host kernel of a CI runner usually has neither configfs nor dummy_hcd and
cannot load modules, so the end-to-end tests run inside a QEMU (TCG) guest:

* kernel: Debian's ``linux-image-6.12.*+deb12-amd64-unsigned`` (newest one apt
  knows), unpacked into ``<repo>/.cache/vm/`` together with its modules;
* root file system: the host's ``/`` shared read-only over virtio-9p with a
  tmpfs overlay on top, so the guest sees the same Python, venv, repository
  and system packages (pcscd, libccid, ...) as the host, at the same paths;
* results: a second, writable 9p share mounted at ``/mnt/out`` in the guest
  (``$CCIDGADGET_VM_OUT``); the command's exit status and output land there.

That is the default flavour, ``amd64``. The ``arm64`` flavour boots Debian's
``linux-image-6.12.*+deb12-arm64-unsigned`` under ``qemu-system-aarch64 -M virt
-cpu cortex-a72`` (the Pi 4's core) with an arm64 Debian root built here
(tests/vm/rootfs.py: debootstrap through binfmt_misc + qemu-user-static, the
test tools, a venv with the project's requirements at ``rootfs.VENV``) as a
read-only ext4 image over virtio-blk with a tmpfs overlay; the checkout and the
kernel's modules come over 9p at their host paths, so the guest runs the same
tests from the same checkout with its own arm64 Python (``Prepared.python``).

Only the standard library is used, so this works before any venv exists.

Python API::

    from tests.vm import testbed
    testbed.prepare()                          # idempotent, cached
    r = testbed.run("python3 -c 'print(1)'", timeout=120)
    r.returncode, r.output, r.console, r.out_dir, r.duration, r.timed_out

CLI::

    python3 -m tests.vm.testbed prepare [--refresh] [--flavour arm64]
    python3 -m tests.vm.testbed run [--flavour arm64] [--timeout S] [--cwd DIR] [--env K=V]
                                    [--qemu-arg ARG]... [--host-command CMD] -- CMD...
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Iterable, Mapping, Sequence

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("CCIDGADGET_VM_CACHE") or REPO / ".cache" / "vm").resolve()

QEMU = "qemu-system-x86_64"
BUSYBOX = "/bin/busybox"

#: where the writable results share is mounted inside the guest
GUEST_OUT = "/mnt/out"
#: modules the initramfs itself loads (with busybox insmod: decompressed)
INITRAMFS_MODULES = ("9pnet_virtio", "9p", "overlay")
#: and for a root image over virtio-blk (crc32c for ext4's checksums: insmod does not autoload it)
IMAGE_ROOT_MODULES = ("virtio_blk", "crc32c_generic", "ext4")
#: modules the guest loads with kmod's modprobe before running the command
GUEST_MODULES = ("dummy_hcd", "libcomposite", "usb_f_fs")

# files in the out directory
JOB_FILE = "vm-job.sh"
STATUS_FILE = "vm-status"
OUTPUT_FILE = "vm-output.log"
#: present only for run(init="systemd"): the initramfs hands PID 1 to it (tests/vm/systemd_guest.py)
PID1_FILE = "vm-pid1.sh"
CONSOLE_FILE = "console.log"
QEMU_LOG_FILE = "qemu.log"
#: output of run(host_command=...), the process that runs on this machine beside the guest
HOST_LOG_FILE = "host.log"

#: host environment variables passed into the guest (if set). Not PYTHONDONTWRITEBYTECODE:
#: in the guest .pyc files go to the tmpfs overlay, and compiling is slow under TCG.
PASSTHROUGH_ENV = (
    "PATH",
    "CI",
    "PYTHONPATH",
    "VIRTUAL_ENV",
    "PYENV_ROOT",
    "PYENV_VERSION",
    "LANG",
    "LC_ALL",
    "PYTEST_ADDOPTS",
    "PYTHONHASHSEED",
    "GITHUB_ACTIONS",
    "HYPOTHESIS_PROFILE",
    "CCIDGADGET_FAULT_SEED",       # tests/e2e/test_faults.py: replay or vary the kill -9 moments
)

# 9p message size: the virtio transport caps it just under 512 KiB
MSIZE = 512000


class TestbedUnavailable(RuntimeError):
    """The test bed cannot be set up here (no QEMU, no kernel package, ...)."""


@dataclasses.dataclass(frozen=True)
class Flavour:
    """One kind of guest: the architecture of its kernel and userland and how QEMU boots it."""

    name: str  #: Debian architecture
    qemu: str
    machine: tuple[str, ...]  #: QEMU's machine/CPU options (before -m/-smp)
    cpu_env: str  #: environment variable that overrides the CPU model
    cpu: str
    console: str
    append: tuple[str, ...]  #: kernel command line beyond the common part
    #: None: this machine's / over 9p; else a Debian root of that name built by tests/vm/rootfs.py,
    #: booted as a read-only ext4 image over virtio-blk
    root: str | None = None
    #: the kernel package's flavour and suffix: linux-image-6.12.N+deb12-<kernel><suffix>
    kernel: str = ""
    kernel_suffix: str = "-unsigned"

    @property
    def kernel_package(self) -> str:
        """The kernel packages' name pattern (an anchored regular expression)."""
        return rf"^linux-image-6\.12\.[0-9]+\+deb12-{self.kernel or self.name}{self.kernel_suffix}$"

    @property
    def kernel_package_re(self) -> re.Pattern:
        return re.compile(rf"^linux-image-(6\.12\.(\d+)\+deb12-{self.kernel or self.name}){self.kernel_suffix}$")

    @property
    def state_file(self) -> Path:
        return CACHE / ("current.json" if self.name == "amd64" else f"current-{self.name}.json")


FLAVOURS = {
    "amd64": Flavour("amd64", QEMU, ("-accel", "tcg,thread=multi"), "CCIDGADGET_VM_CPU", "max", "ttyS0,115200",
                     ("i8042.noaux", "i8042.nokbd", "random.trust_cpu=on", "tsc=unstable")),
    # cortex-a72: the Pi 4's core. `-cpu max` boots 2x slower (pointer-authentication emulation).
    "arm64": Flavour("arm64", "qemu-system-aarch64", ("-M", "virt", "-accel", "tcg,thread=multi"),
                     "CCIDGADGET_VM_CPU_ARM64", "cortex-a72", "ttyAMA0", (), root="arm64"),
    # 32-bit ARM: Debian's armmp kernel (it has dummy_hcd, f_fs, configfs, 9p, virtio-pci); cortex-a7 is
    # the Pi 2's core; highmem=off keeps PCI below 4 GiB for a kernel without LPAE. Not in CI: the
    # 32-bit suites run under qemu-user (tests/test_arm32.py); this boots the same root for by-hand runs.
    "armhf": Flavour("armhf", "qemu-system-arm", ("-M", "virt,highmem=off", "-accel", "tcg,thread=multi"),
                     "CCIDGADGET_VM_CPU_ARMHF", "cortex-a7", "ttyAMA0", (), root="armhf", kernel="armmp",
                     kernel_suffix=""),
}
DEFAULT_FLAVOUR = "amd64"


def flavour(name: str | None = None) -> Flavour:
    try:
        return FLAVOURS[name or DEFAULT_FLAVOUR]
    except KeyError:
        raise ValueError(f"unknown test bed flavour {name!r} (known: {', '.join(FLAVOURS)})") from None


@dataclasses.dataclass(frozen=True)
class Prepared:
    version: str  #: kernel release, e.g. ``6.12.115+deb12-amd64``
    tree: Path  #: root of the unpacked package (``modprobe -d`` / ``depmod -b``)
    kernel: Path
    initramfs: Path
    flavour: str = DEFAULT_FLAVOUR
    root_image: Path | None = None  #: the guest's root (image flavours); None: the host's / over 9p
    python: str | None = None  #: the guest's interpreter for the tests; None: this one (sys.executable)

    @property
    def guest_python(self) -> str:
        return self.python or sys.executable


@dataclasses.dataclass
class VMResult:
    returncode: int | None  #: exit status of the guest command; None if unknown
    console: str  #: the guest's serial console (kernel + init + command output)
    out_dir: Path  #: the results share (``$CCIDGADGET_VM_OUT`` in the guest)
    duration: float  #: seconds from QEMU start to QEMU exit
    timed_out: bool = False
    qemu_returncode: int | None = None
    qemu_stderr: str = ""
    host_returncode: int | None = None  #: exit status of ``run(host_command=...)``

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def output(self) -> str:
        """stdout+stderr of the guest command (also part of ``console``)."""
        try:
            return (self.out_dir / OUTPUT_FILE).read_text(errors="replace")
        except OSError:
            return ""

    def describe(self, tail: int = 80) -> str:
        """Human-readable summary for failure messages."""
        if self.timed_out:
            what = f"timed out after {self.duration:.0f} s (QEMU killed)"
        elif self.returncode is None:
            what = f"no exit status (QEMU exit {self.qemu_returncode}; guest crashed or set-up failed)"
        else:
            what = f"exit status {self.returncode}"
        lines = self.console.splitlines()
        parts = [f"guest command: {what}, {self.duration:.1f} s; out dir {self.out_dir}"]
        parts.append(f"--- last {min(tail, len(lines))} console lines ---")
        parts.extend(lines[-tail:])
        if self.qemu_stderr.strip():
            parts.append("--- qemu stderr ---")
            parts.append(self.qemu_stderr.strip())
        return "\n".join(parts)


# --------------------------------------------------------------------------- helpers


def _log(msg: str) -> None:
    print(f"[vm] {msg}", file=sys.stderr, flush=True)


def _check_call(cmd: Sequence[str], **kw) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    if p.returncode != 0:
        raise TestbedUnavailable(
            f"command failed ({p.returncode}): {shlex.join(cmd)}\n{p.stdout}{p.stderr}".strip()
        )
    return p


class _Lock:
    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def missing_tools(fl: Flavour | None = None) -> list[str]:
    """Host tools the test bed (``fl``: the default flavour) needs that are not installed."""
    fl = fl or flavour()
    need = {fl.qemu: fl.qemu, "dpkg-deb": "dpkg-deb", "depmod": "depmod", "apt-get": "apt-get"}
    if fl.root:
        need.update({"debootstrap": "debootstrap", "mke2fs": "mke2fs", "unshare": "unshare"})
    out = [name for name, exe in need.items() if shutil.which(exe) is None
           and not Path("/usr/sbin", exe).exists() and not Path("/sbin", exe).exists()]
    if not fl.root and not Path(BUSYBOX).exists():
        out.append(f"{BUSYBOX} (busybox-static)")
    return out


def _which(exe: str) -> str:
    for cand in (shutil.which(exe), f"/usr/sbin/{exe}", f"/sbin/{exe}"):
        if cand and Path(cand).exists():
            return cand
    raise TestbedUnavailable(f"{exe} not found")


# --------------------------------------------------------------------------- kernel package


def _apt_argv(fl: Flavour, argv: Sequence[str]) -> list[str]:
    """``argv`` (an apt command) for this machine's apt, or the apt of the flavour's foreign root
    (its lists are the foreign architecture's: the host needs no multiarch set-up)."""
    if not fl.root:
        return list(argv)
    return rootfs().chroot_argv(rootfs().CACHE / fl.root / "root", argv)


def _kernel_candidates(fl: Flavour) -> list[tuple[int, str, str]]:
    """(patch level, package, kernel release) for installable 6.12 kernels of the flavour."""
    p = subprocess.run(
        _apt_argv(fl, ["apt-cache", "search", "--names-only", fl.kernel_package]),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    found = []
    for line in p.stdout.splitlines():
        name = line.split(" - ", 1)[0].strip()
        m = fl.kernel_package_re.match(name)
        if m:
            found.append((int(m.group(2)), name, m.group(1)))
    if not found:
        return []
    # keep only packages that have a download candidate (stale names show "(none)")
    pol = subprocess.run(_apt_argv(fl, ["apt-cache", "policy", *[n for _, n, _ in found]]),
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout
    ok, current = set(), None
    for line in pol.splitlines():
        if not line.startswith(" "):
            current = line.rstrip(":").strip()
        elif line.strip().startswith("Candidate:") and "(none)" not in line:
            ok.add(current)
    return sorted((c for c in found if c[1] in ok), reverse=True)


def resolve_kernel_package(fl: Flavour | None = None) -> tuple[str, str]:
    """Return (package, kernel release) of the newest 6.12 kernel apt can download."""
    fl = fl or flavour()
    cands = _kernel_candidates(fl)
    if not cands:
        _log(f"no {fl.kernel_package} in the apt lists; running apt-get update")
        subprocess.run(_apt_argv(fl, ["apt-get", "update", "-q"]), stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
        cands = _kernel_candidates(fl)
    if not cands:
        raise TestbedUnavailable(
            f"apt knows no {fl.kernel_package} package "
            "(needs bookworm-backports or bookworm-security in sources.list)")
    _, pkg, release = cands[0]
    return pkg, release


def _download(pkg: str, fl: Flavour | None = None) -> Path:
    fl = fl or flavour()
    debs = CACHE / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    have = sorted(debs.glob(f"{pkg}_*.deb"))
    if have:
        return have[-1]
    _log(f"downloading {pkg}")
    if fl.root:          # into the foreign root's /tmp (a bind of this directory), by its apt
        tmp = Path(tempfile.mkdtemp(dir=debs))
        try:
            _check_call(rootfs().chroot_argv(rootfs().CACHE / fl.root / "root", ["apt-get", "download", "-q", pkg],
                                              binds=[tmp], cwd=str(tmp)))
            return _keep_download(tmp, pkg, debs)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    with tempfile.TemporaryDirectory(dir=debs) as tmp:
        # apt's _apt sandbox user may not be able to write here: that is only a warning
        _check_call([_which("apt-get"), "download", "-q", pkg], cwd=tmp)
        return _keep_download(Path(tmp), pkg, debs)


def _keep_download(tmp: Path, pkg: str, debs: Path) -> Path:
    got = list(tmp.glob("*.deb"))
    if len(got) != 1:
        raise TestbedUnavailable(f"apt-get download {pkg} produced {got}")
    dest = debs / got[0].name
    os.replace(got[0], dest)
    return dest


def _unpack(deb: Path, release: str) -> Path:
    tree = CACHE / "kernel" / release
    stamp = tree / ".complete"
    if stamp.exists():
        return tree
    _log(f"unpacking {deb.name}")
    tmp = tree.with_name(tree.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _check_call(["dpkg-deb", "-x", str(deb), str(tmp)])
    if (tmp / "usr/lib/modules" / release).is_dir() and not (tmp / "lib/modules" / release).exists():
        (tmp / "lib").mkdir(exist_ok=True)
        (tmp / "lib/modules").symlink_to("../usr/lib/modules")
    # drop what the guest never needs (debs carry docs; saves nothing at boot but space)
    shutil.rmtree(tmp / "usr/share", ignore_errors=True)
    shutil.rmtree(tree, ignore_errors=True)
    os.replace(tmp, tree)
    _log(f"depmod {release}")
    _check_call([_which("depmod"), "-b", str(tree), release])
    stamp.write_text(deb.name + "\n")
    return tree


# --------------------------------------------------------------------------- initramfs


def _modules_dep(tree: Path, release: str) -> dict[str, tuple[str, list[str]]]:
    """module name -> (relative path, [relative paths of dependencies])."""
    out = {}
    for line in (tree / "lib/modules" / release / "modules.dep").read_text().splitlines():
        path, _, deps = line.partition(":")
        name = re.sub(r"\.ko(\.[a-z]+)?$", "", os.path.basename(path)).replace("-", "_")
        out[name] = (path, deps.split())
    return out


def module_load_order(tree: Path, release: str, names: Iterable[str]) -> list[str]:
    """Relative paths of ``names`` and their dependencies, dependencies first."""
    dep = _modules_dep(tree, release)
    by_path = {p: n for n, (p, _) in dep.items()}
    order: list[str] = []

    def visit(name: str, stack: tuple[str, ...] = ()) -> None:
        key = name.replace("-", "_")
        if key not in dep:
            builtin = (tree / "lib/modules" / release / "modules.builtin").read_text()
            if re.search(rf"/{re.escape(name)}\.ko$", builtin, re.M):
                return
            raise TestbedUnavailable(f"module {name} not in {release}")
        path, deps = dep[key]
        if path in order or key in stack:
            return
        # modules.dep lists the full closure; visit each so the order is topological
        for d in deps:
            visit(by_path[d], stack + (key,))
        order.append(path)

    for n in names:
        visit(n)
    return order


INIT_TEMPLATE = r"""#!/bin/busybox sh
# ccidgadget VM test bed: PID 1 of the guest (generated by tests/vm/testbed.py)
/bin/busybox --install -s /bin
export PATH=/bin
say() { echo "vm-init: $*"; }
poweroff_now() {
    sync
    for p in /newroot/proc /proc; do
        if [ -e $p/sysrq-trigger ]; then echo 1 > $p/sys/kernel/sysrq; echo o > $p/sysrq-trigger; fi
    done
    sleep 30
}
die() { say "FATAL: $*"; poweroff_now; }

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in @MODULES@; do
    insmod /modules/$m || die "insmod $m failed"
done
@ROOT_MOUNT@
mount -t tmpfs -o mode=0755 tmpfs /mnt/rw
mkdir -p /mnt/rw/upper /mnt/rw/work
mount -t overlay -o lowerdir=/mnt/lower,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work overlay /newroot \
    || die "cannot mount the overlay root"
mkdir -p /newroot@OUT@
mount -t 9p -o trans=virtio,version=9p2000.L,msize=@MSIZE@ out /newroot@OUT@ \
    || die "cannot mount the results share (9p tag out)"
for d in proc sys dev; do mount --move /$d /newroot/$d || die "mount --move /$d"; done
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /newroot/dev/pts
mount -t tmpfs -o mode=1777 tmpfs /newroot/dev/shm
mount -t tmpfs -o mode=0755 tmpfs /newroot/run
mount -t tmpfs -o mode=1777 tmpfs /newroot/tmp
[ -e /newroot/dev/fd ] || ln -s /proc/self/fd /newroot/dev/fd
# Host folders that the fresh /tmp and /run above hide (a checkout under /tmp, as a CI may make), or
# (image root) that the image does not have: the checkout, the kernel's modules. Each comes as its
# own read-only 9p share, overlaid with a tmpfs like the root.
for arg in $(cat /newroot/proc/cmdline); do
    case "$arg" in
    ccidgadget.share*=*)
        tag=${arg%%=*}; tag=${tag#ccidgadget.}; path=${arg#*=}
        mkdir -p /mnt/$tag/lower /mnt/$tag/rw && mount -t tmpfs tmpfs /mnt/$tag/rw
        mkdir -p /mnt/$tag/rw/upper /mnt/$tag/rw/work /newroot$path
        mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=@MSIZE@ $tag /mnt/$tag/lower \
            || die "cannot mount the share $tag ($path)"
        mount -t overlay -o lowerdir=/mnt/$tag/lower,upperdir=/mnt/$tag/rw/upper,workdir=/mnt/$tag/rw/work \
            overlay /newroot$path || die "cannot overlay $path"
        ;;
    esac
done
hostname ccidgadget-vm
if [ -f /newroot@OUT@/@PID1@ ]; then
    # run(init="systemd"): PID 1 goes to that script in the new root (it execs systemd)
    say "root ready after $(cut -d' ' -f1 /newroot/proc/uptime) s, PID 1 -> @OUT@/@PID1@"
    exec switch_root /newroot /bin/sh @OUT@/@PID1@ </dev/console >/dev/console 2>&1
    die "switch_root failed"
fi
if [ -f /newroot@OUT@/@JOB@ ]; then
    say "root ready after $(cut -d' ' -f1 /newroot/proc/uptime) s, running @OUT@/@JOB@"
    chroot /newroot /bin/sh @OUT@/@JOB@ </dev/console >/dev/console 2>&1
    say "job exited with $?"
else
    say "no @OUT@/@JOB@ in the results share"
fi
poweroff_now
"""


#: how /init mounts the lower layer of the root: this machine's / over 9p, or the image on virtio-blk
ROOT_MOUNTS = {
    False: 'mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=@MSIZE@ hostroot /mnt/lower \\\n'
           '    || die "cannot mount the host root (9p tag hostroot)"',
    True: 'mount -t ext4 -o ro /dev/vda /mnt/lower || die "cannot mount the root image (virtio-blk /dev/vda)"',
}


def _init_script(module_names: Sequence[str], image_root: bool = False) -> str:
    s = INIT_TEMPLATE.replace("@ROOT_MOUNT@", ROOT_MOUNTS[image_root])
    for k, v in {"@MODULES@": " ".join(module_names), "@MSIZE@": str(MSIZE), "@OUT@": GUEST_OUT,
                 "@JOB@": JOB_FILE, "@PID1@": PID1_FILE}.items():
        s = s.replace(k, v)
    return s


def _cpio_newc(entries: Iterable[tuple[str, int, bytes, int]]) -> bytes:
    """Build a newc cpio archive from (name, mode, data, rdev) entries (no mknod needed)."""
    buf = io.BytesIO()

    def pad(n: int) -> None:
        buf.write(b"\0" * ((4 - n % 4) % 4))

    ino = 1
    for name, mode, data, rdev in [*entries, ("TRAILER!!!", 0, b"", 0)]:
        nb = name.encode() + b"\0"
        hdr = "070701" + "".join(f"{v:08x}" for v in (
            ino, mode, 0, 0, 1, 0, len(data), 0, 0, os.major(rdev), os.minor(rdev), len(nb), 0))
        buf.write(hdr.encode())
        buf.write(nb)
        pad(110 + len(nb))
        buf.write(data)
        pad(len(data))
        ino += 1
    return buf.getvalue()


def _initramfs_modules(fl: Flavour) -> tuple[str, ...]:
    return INITRAMFS_MODULES + (IMAGE_ROOT_MODULES if fl.root else ())


def _busybox(fl: Flavour) -> Path:
    """A static busybox of the guest's architecture: this machine's, or the foreign root's."""
    return rootfs().CACHE / fl.root / "root/bin/busybox" if fl.root else Path(BUSYBOX)


def _build_initramfs(tree: Path, release: str, dest: Path, fl: Flavour | None = None) -> None:
    fl = fl or flavour()
    order = module_load_order(tree, release, _initramfs_modules(fl))
    mods: list[tuple[str, bytes]] = []
    for rel in order:
        raw = (tree / "lib/modules" / release / rel).read_bytes()
        if rel.endswith(".xz"):
            raw = lzma.decompress(raw)
        elif rel.endswith(".zst"):
            raise TestbedUnavailable(f"{rel}: zstd modules are not supported")
        mods.append((re.sub(r"\.(xz|gz)$", "", os.path.basename(rel)), raw))
    d, f, c, lnk = 0o040755, 0o100755, 0o020600, 0o120777
    entries = [(p, d, b"", 0) for p in ("bin", "dev", "proc", "sys", "mnt", "mnt/lower", "mnt/rw",
                                        "newroot", "modules", "tmp")]
    entries += [("dev/console", c, b"", os.makedev(5, 1)), ("dev/null", 0o020666, b"", os.makedev(1, 3))]
    entries += [("bin/busybox", f, _busybox(fl).read_bytes(), 0), ("bin/sh", lnk, b"busybox", 0)]
    entries += [(f"modules/{n}", 0o100644, data, 0) for n, data in mods]
    entries += [("init", f, _init_script([n for n, _ in mods], bool(fl.root)).encode(), 0)]
    tmp = dest.with_name(dest.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(gzip.compress(_cpio_newc(entries), compresslevel=1))
    os.replace(tmp, dest)


def _initramfs_key(release: str, fl: Flavour | None = None) -> str:
    fl = fl or flavour()
    busybox = _busybox(fl)
    h = hashlib.sha256()
    h.update(_init_script(_initramfs_modules(fl), bool(fl.root)).encode())
    h.update(INIT_TEMPLATE.encode())
    h.update(busybox.read_bytes()[:4096])
    h.update(str(busybox.stat().st_size).encode())
    h.update(release.encode())
    return h.hexdigest()[:12]


# --------------------------------------------------------------------------- prepare


def rootfs():
    # loaded by path, like systemd_guest.py: tests/ is not a package and testbed.py itself is loaded by path
    return _load_sibling("ccidgadget_vm_rootfs", "rootfs.py")


def _from_state(fl: Flavour | None = None) -> Prepared | None:
    fl = fl or flavour()
    try:
        st = json.loads(fl.state_file.read_text())
        p = Prepared(st["version"], Path(st["tree"]), Path(st["kernel"]), Path(st["initramfs"]), fl.name,
                     Path(st["root_image"]) if st.get("root_image") else None, st.get("python"))
    except (OSError, ValueError, KeyError):
        return None
    if (p.tree / ".complete").exists() and p.kernel.exists() and p.initramfs.exists() \
            and (p.root_image is None or p.root_image.exists()):
        return p
    return None


def _finish(tree: Path, release: str, fl: Flavour | None = None, root_image: Path | None = None) -> Prepared:
    fl = fl or flavour()
    kernel = tree / "boot" / f"vmlinuz-{release}"
    if not kernel.exists():
        raise TestbedUnavailable(f"{kernel} missing from the kernel package")
    initramfs = CACHE / f"initramfs-{release}-{_initramfs_key(release, fl)}.cpio.gz"
    if not initramfs.exists():
        _log(f"building {initramfs.name}")
        _build_initramfs(tree, release, initramfs, fl)
    python = f"{rootfs().VENV}/bin/python" if fl.root else None
    p = Prepared(release, tree, kernel, initramfs, fl.name, root_image, python)
    state = {k: None if v is None else str(v) for k, v in dataclasses.asdict(p).items()}
    fl.state_file.write_text(json.dumps(state, indent=1) + "\n")
    return p


def _ensure_binfmt(fl: Flavour) -> None:
    rfs = rootfs()
    try:
        rfs.ensure_binfmt(rfs.ROOT_SPECS[fl.root].arch)
    except rfs.RootUnavailable as e:
        raise TestbedUnavailable(str(e)) from None


def _root_image(fl: Flavour) -> Path:
    """Build (or reuse) the flavour's foreign root and its ext4 image."""
    rfs = rootfs()
    try:
        root = rfs.ensure_root(rfs.ROOT_SPECS[fl.root], fl.root)
        return rfs.ext4_image(root, rfs.CACHE / fl.root / f"root-{rfs.root_key(fl.root)}.ext4")
    except rfs.RootUnavailable as e:
        raise TestbedUnavailable(str(e)) from None


def _gpio_sim():
    import importlib.util
    name = "ccidgadget_vm_gpio_sim"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("gpio_sim.py"))
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


def _extra_modules(p: Prepared) -> Prepared:
    """gpio-sim.ko for tests/e2e/test_presence.py (tests/vm/gpio_sim.py); a failure is kept for that test to report."""
    if p.flavour != DEFAULT_FLAVOUR:          # test_presence runs in the amd64 guest only
        return p
    debs = sorted((CACHE / "debs").glob(f"linux-image-{p.version}-unsigned_*.deb"))
    try:
        if not debs:
            raise RuntimeError(f"the kernel package of {p.version} is not in {CACHE / 'debs'}")
        _gpio_sim().build(CACHE, p.version, debs[-1], log=_log)
    except RuntimeError as e:
        _log(f"gpio-sim.ko not built (tests that need a simulated GPIO line will fail): {e}")
    return p


def prepare(refresh: bool = False, flavour_name: str | None = None) -> Prepared:
    """Set up (or reuse) the kernel, its modules and the initramfs (and, for an image flavour, its root).

    Without ``refresh`` a previously prepared kernel is reused without asking
    apt; with it, apt is asked for the newest 6.12 kernel again.
    Raises :class:`TestbedUnavailable` with the reason if this host cannot do it.
    """
    fl = flavour(flavour_name)
    missing = missing_tools(fl)
    if missing:
        raise TestbedUnavailable("missing host tools: " + ", ".join(missing))
    # one lock per flavour: building the arm64 root takes minutes and must not hold up amd64 guests
    with _Lock(CACHE / (".lock" if fl.name == DEFAULT_FLAVOUR else f".lock-{fl.name}")):
        image = _root_image(fl) if fl.root else None
        if not refresh:
            p = _from_state(fl)
            if p is not None and p.root_image == image:
                # the init script may have changed since: rebuild the initramfs if so
                return _extra_modules(_finish(p.tree, p.version, fl, image))
        try:
            if fl.root:
                _ensure_binfmt(fl)
            pkg, release = resolve_kernel_package(fl)
        except TestbedUnavailable:
            p = _from_state(fl)
            if p is not None and p.root_image == image:  # offline, but something usable is cached
                return p
            raise
        deb = _download(pkg, fl)
        tree = _unpack(deb, release)
        return _extra_modules(_finish(tree, release, fl, image))


# --------------------------------------------------------------------------- run


def guest_env(env: Mapping[str, str | None] | None = None, prepared: Prepared | None = None) -> dict[str, str]:
    """The environment the guest command gets."""
    out = {k: os.environ[k] for k in PASSTHROUGH_ENV if k in os.environ}
    own_root = prepared is not None and prepared.root_image is not None
    if own_root:
        # the guest's root is not this machine's: its paths (venvs, pyenv) mean nothing there
        for k in ("PATH", "PYTHONPATH", "VIRTUAL_ENV", "PYENV_ROOT", "PYENV_VERSION"):
            out.pop(k, None)
        out["VIRTUAL_ENV"] = str(Path(prepared.guest_python).parent.parent)
    out.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    path = out["PATH"].split(":")
    # the interpreter that runs the tests (e.g. a venv) first, sbin for modprobe/pcscd
    path.insert(0, str(Path(prepared.guest_python if prepared else sys.executable).parent))
    for extra in ("/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"):
        if extra not in path:
            path.append(extra)
    out["PATH"] = ":".join(dict.fromkeys(path))
    out.setdefault("LANG", "C.UTF-8")
    out.update(HOME="/root", TERM="dumb", CCIDGADGET_VM="1", CCIDGADGET_VM_OUT=GUEST_OUT,
               PYTHONUNBUFFERED="1")
    if prepared is not None:
        out["CCIDGADGET_VM_MODULES"] = str(prepared.tree)
        out["CCIDGADGET_VM_KERNEL"] = prepared.version
        gpio_sim = _gpio_sim()
        out["CCIDGADGET_VM_GPIO_SIM"] = str(gpio_sim.module_path(CACHE, prepared.version))
    for k, v in (env or {}).items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = str(v)
    return out


def _job_script(command: str, cwd: str, env: Mapping[str, str]) -> str:
    q = shlex.quote
    lines = [
        "# generated by tests/vm/testbed.py; runs in the guest chroot",
        "echo 'vm-job: set-up'",
    ]
    lines += [f"export {k}={q(v)}" for k, v in sorted(env.items())]
    lines += [
        'ip link set lo up || echo "vm-job: WARNING: ip link set lo up failed"',
        f'modprobe -d "$CCIDGADGET_VM_MODULES" -a {" ".join(GUEST_MODULES)} '
        '|| echo "vm-job: WARNING: modprobe failed"',
        "grep -q ' /sys/kernel/config ' /proc/mounts || mount -t configfs configfs /sys/kernel/config "
        '|| echo "vm-job: WARNING: cannot mount configfs"',
        "mkdir -p /run/lock",
        f"cd {q(cwd)} || {{ echo 'vm-job: cannot cd to {cwd}'; echo 126 > {GUEST_OUT}/{STATUS_FILE}; exit 126; }}",
        f"echo \"vm-job: running after $(cut -d' ' -f1 /proc/uptime) s: \"{q(command)}",
        f"{{ ( {command}\n) </dev/null; echo $? > {GUEST_OUT}/{STATUS_FILE}; }} 2>&1 | tee {GUEST_OUT}/{OUTPUT_FILE}",
        f"echo \"vm-job: exit status $(cat {GUEST_OUT}/{STATUS_FILE}) after $(cut -d' ' -f1 /proc/uptime) s\"",
        "sync",
    ]
    return "\n".join(lines) + "\n"


#: Guest paths that get fresh file systems (so the host's content there is hidden).
GUEST_SHADOWED = ("/tmp", "/run")


def hidden_host_paths(prepared: Prepared | None = None) -> list[Path]:
    """Folders the guest must see but that lie under a path it mounts afresh (a checkout in /tmp), or,
    with a root image, that the image lacks (the checkout, the kernel's modules): 9p shares."""
    own_root = prepared is not None and prepared.root_image is not None
    if own_root:
        wanted = {REPO, prepared.tree.resolve()}
    else:
        wanted = {REPO, CACHE, Path(sys.executable).parent.parent.resolve()}
    out: list[Path] = []
    for path in sorted(wanted, key=lambda p: len(p.parts)):
        hidden = own_root or any(path.is_relative_to(s) for s in GUEST_SHADOWED)
        if hidden and not any(path.is_relative_to(o) for o in out):
            if " " in str(path):
                raise TestbedUnavailable(f"{path} contains a space; the guest cannot share it")
            out.append(path)
    return out


def qemu_command(prepared: Prepared, out_dir: Path, *, memory: int = 1536, smp: int = 2,
                 extra_args: Sequence[str] = ()) -> list[str]:
    fl = flavour(prepared.flavour)
    shares = hidden_host_paths(prepared)
    append = " ".join([
        f"console={fl.console}", "panic=-1", "loglevel=4", "mitigations=off", "rdinit=/init", *fl.append,
        *(f"ccidgadget.share{i}={p}" for i, p in enumerate(shares)),
    ])
    extra = [a for i, p in enumerate(shares) for a in
             ("-virtfs", f"local,path={p},mount_tag=share{i},security_model=none,readonly=on,multidevs=remap")]
    if prepared.root_image is not None:
        # read-only: several guests share one image; the overlay's upper layer is a tmpfs
        root = ["-drive", f"file={prepared.root_image},if=none,format=raw,readonly=on,id=root",
                "-device", "virtio-blk-pci,drive=root"]
    else:
        root = ["-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"]
    return [
        fl.qemu, *fl.machine, "-cpu", os.environ.get(fl.cpu_env, fl.cpu), "-m", str(memory), "-smp", str(smp),
        "-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none",
        "-serial", f"file:{out_dir / CONSOLE_FILE}", "-no-reboot",
        "-kernel", str(prepared.kernel), "-initrd", str(prepared.initramfs), "-append", append,
        *root,
        "-virtfs", f"local,path={out_dir},mount_tag=out,security_model=none,multidevs=remap",
        *extra,
        *extra_args,
    ]


def run(
    command: str | Sequence[str],
    *,
    timeout: float,
    env: Mapping[str, str | None] | None = None,
    cwd: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    memory: int = 1536,
    smp: int = 2,
    stream: IO[str] | None = None,
    prepared: Prepared | None = None,
    init: str = "busybox",
    flavour_name: str | None = None,
    qemu_args: Sequence[str] = (),
    host_command: Sequence[str] | None = None,
) -> VMResult:
    """Boot the guest, run ``command`` (shell string or argv) in ``cwd`` and power off.

    ``env`` is added to the default guest environment (PATH, CI, ... from the
    host; a value of None removes a variable). ``out_dir`` (default: a new
    temporary directory) is ``$CCIDGADGET_VM_OUT`` in the guest. ``stream``
    receives the console while the guest runs. QEMU is killed after ``timeout``
    seconds (``VMResult.timed_out``). ``init="systemd"`` boots systemd as PID 1 and runs the
    command as a service of it (tests/vm/systemd_guest.py); the default runs it from the
    initramfs' busybox init. ``flavour_name`` (or ``prepared.flavour``) picks the guest's
    architecture (FLAVOURS); there the tests' interpreter is ``prepared.guest_python``.

    ``qemu_args`` are added to QEMU's command line (devices, chardevs). ``host_command`` (argv)
    runs on this machine while the guest runs: it starts once QEMU has (so QEMU's server sockets
    exist), with ``CCIDGADGET_VM_OUT`` set to the results directory and its output in
    ``host.log`` there; it is sent SIGTERM when the guest is done (SIGKILL 10 s later) and its
    exit status is ``VMResult.host_returncode``.
    """
    if init not in ("busybox", "systemd"):
        raise ValueError(f"init must be 'busybox' or 'systemd', not {init!r}")
    prepared = prepared or prepare(flavour_name=flavour_name)
    if not isinstance(command, str):
        command = shlex.join(command)
    cwd = str(Path(cwd or os.getcwd()).resolve())
    if out_dir is None:
        out = Path(tempfile.mkdtemp(prefix="ccidgadget-vm-"))
    else:
        out = Path(out_dir).resolve()
        out.mkdir(parents=True, exist_ok=True)
    for name in (STATUS_FILE, OUTPUT_FILE, CONSOLE_FILE, QEMU_LOG_FILE, PID1_FILE, HOST_LOG_FILE):
        (out / name).unlink(missing_ok=True)
    (out / JOB_FILE).write_text(_job_script(command, cwd, guest_env(env, prepared)))
    if init == "systemd":
        (out / PID1_FILE).write_text(_systemd_guest().pid1_script(out=GUEST_OUT, job=JOB_FILE))
    (out / CONSOLE_FILE).touch()

    cmd = qemu_command(prepared, out, memory=memory, smp=smp, extra_args=qemu_args)
    start = time.monotonic()
    timed_out = False
    host: subprocess.Popen | None = None
    with open(out / QEMU_LOG_FILE, "w+") as qlog, open(out / CONSOLE_FILE, "rb") as con, \
            open(out / HOST_LOG_FILE, "wb") as hlog:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=qlog, stderr=subprocess.STDOUT,
                                start_new_session=True)
        if host_command is not None:
            host = subprocess.Popen(list(host_command), stdin=subprocess.DEVNULL, stdout=hlog,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    env={**os.environ, "CCIDGADGET_VM_OUT": str(out), "PYTHONUNBUFFERED": "1"})
        try:
            while True:
                try:
                    proc.wait(timeout=0.2)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if stream is not None:
                    _pump(con, stream)
                if time.monotonic() - start > timeout:
                    timed_out = True
                    _kill(proc)
                    break
        except BaseException:
            _kill(proc)
            raise
        finally:
            if host is not None:
                _kill(host, grace=10)
        if stream is not None:
            _pump(con, stream)
        qlog.seek(0)
        qemu_stderr = qlog.read()
    duration = time.monotonic() - start
    console = (out / CONSOLE_FILE).read_bytes().decode(errors="replace").replace("\r\n", "\n")
    try:
        rc: int | None = int((out / STATUS_FILE).read_text().strip())
    except (OSError, ValueError):
        rc = None
    return VMResult(rc, console, out, duration, timed_out, proc.returncode, qemu_stderr,
                    host.returncode if host is not None else None)


def rerun_in_guest(script: str | os.PathLike, args: Sequence[str] = (), *, timeout: float, what: str,
                   tail: int = 40, **run_args) -> int:
    """A script (a benchmark, the demo) run again inside the guest with ``--guest`` when this machine has
    no USB device controller: its output printed here, the guest's tail on failure; 0 or 1."""
    print(f"{what}: no USB device controller here; booting the QEMU guest (TCG: expect 10-20x native times)",
          flush=True)
    run_args.setdefault("cwd", Path(script).resolve().parents[1])
    result = run([sys.executable, str(Path(script).resolve()), "--guest", *args], timeout=timeout, **run_args)
    print(result.output, flush=True)
    print(f"{what}: {result.duration:.0f} s of guest wall time (boot included)", flush=True)
    if not result.ok:
        print(result.describe(tail=tail), file=sys.stderr)
        return 1
    return 0



def _systemd_guest():
    return _load_sibling("ccidgadget_vm_systemd_guest", "systemd_guest.py")


def _load_sibling(name: str, filename: str):
    # loaded by path: tests/ is not a package and testbed.py itself is loaded by path
    import importlib.util
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(filename))
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


def _pump(src: IO[bytes], dst: IO[str]) -> None:
    data = src.read()
    if data:
        dst.write(data.decode(errors="replace").replace("\r\n", "\n"))
        dst.flush()


def _kill(proc: subprocess.Popen, grace: float = 5) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m tests.vm.testbed", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p_prep = sub.add_parser("prepare", help="download/unpack the kernel and build the initramfs (cached)")
    p_prep.add_argument("--refresh", action="store_true", help="ask apt for a newer kernel")
    p_prep.add_argument("--flavour", choices=sorted(FLAVOURS), default=DEFAULT_FLAVOUR,
                        help="the guest's architecture (default %(default)s)")
    p_run = sub.add_parser("run", help="boot the guest and run a command in it")
    p_run.add_argument("--flavour", choices=sorted(FLAVOURS), default=DEFAULT_FLAVOUR,
                       help="the guest's architecture (default %(default)s)")
    p_run.add_argument("--timeout", type=float, default=600)
    p_run.add_argument("--cwd", default=None, help="working directory in the guest (default: current)")
    p_run.add_argument("--out", default=None, help="results directory ($CCIDGADGET_VM_OUT in the guest)")
    p_run.add_argument("--env", action="append", default=[], metavar="K=V")
    p_run.add_argument("--memory", type=int, default=1536)
    p_run.add_argument("--smp", type=int, default=2)
    p_run.add_argument("--quiet", action="store_true", help="do not stream the console")
    p_run.add_argument("--init", choices=("busybox", "systemd"), default="busybox",
                       help="PID 1 of the guest: the initramfs' busybox (default) or systemd")
    p_run.add_argument("--qemu-arg", action="append", default=[], metavar="ARG",
                       help="one more QEMU argument (repeat: --qemu-arg=-device --qemu-arg=usb-ccid)")
    p_run.add_argument("--host-command", metavar="CMD",
                       help="shell command to run on this machine while the guest runs (output: host.log)")
    p_run.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    try:
        prepared = prepare(refresh=getattr(args, "refresh", False), flavour_name=args.flavour)
    except TestbedUnavailable as e:
        print(f"VM test bed unavailable: {e}", file=sys.stderr)
        return 2
    if args.cmd == "prepare":
        for k, v in dataclasses.asdict(prepared).items():
            print(f"{k}: {v}")
        return 0
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("run: no command given")
    env = dict(kv.split("=", 1) for kv in args.env)
    res = run(command[0] if len(command) == 1 else command, timeout=args.timeout, env=env, cwd=args.cwd,
              out_dir=args.out, memory=args.memory, smp=args.smp,
              stream=None if args.quiet else sys.stdout, prepared=prepared, init=args.init,
              qemu_args=args.qemu_arg,
              host_command=None if args.host_command is None else ["/bin/sh", "-c", args.host_command])
    if args.quiet:
        sys.stdout.write(res.output)
    print(f"[vm] {res.describe(tail=0).splitlines()[0]}", file=sys.stderr)
    if res.timed_out:
        return 124
    return 125 if res.returncode is None else res.returncode


if __name__ == "__main__":
    sys.exit(main())
