# SPDX-License-Identifier: GPL-3.0-or-later
"""Debian roots of a foreign architecture, built on this machine: the arm64 guest's root image
and the 32-bit ARM chroot that runs the unit suites under qemu-user.

How a root is made (every step cached under the VM cache dir, redone only when its inputs change):

1. ``debootstrap --arch=ARCH --variant=minbase`` runs both of its stages here: the second stage
   executes the foreign binaries through binfmt_misc and qemu-user-static's handler, which is
   registered with the F flag (the interpreter is opened at registration), so no copy of QEMU goes
   into the root. ``python3-cffi-backend`` must be named in ``--include``: debootstrap does not
   resolve virtual dependencies and python3-cryptography fails to configure without it.
2. apt inside the root (sources taken from this machine's apt configuration) installs the test tools.
3. A venv made from the root's Debian python3 with ``--system-site-packages`` gets the project's
   Python requirements from pyproject.toml, installed into its site-packages by *this* machine's pip
   (``--target --platform <the root's manylinux tag>``: wheels of the root's architecture, pure
   Python ones built here), because pip itself under qemu-user took 4 minutes for what takes
   seconds natively. The checkout itself is not installed: the guest imports it from its 9p share
   (``python -m`` runs from the checkout; PYTHONPATH elsewhere).
4. (arm64) ``mke2fs -d`` turns the root into a read-only ext4 image that the guest mounts over
   virtio-blk with a tmpfs overlay: much faster than a 9p root.

Without binfmt_misc (a container that may not mount it) there is no cheap way: debootstrap's second
stage would have to run inside a booted guest (about 15 minutes under TCG). This module does not
do that; it fails with a message that says what is missing.

Only the standard library is used.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Iterable, Sequence

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("CCIDGADGET_VM_CACHE") or REPO / ".cache" / "vm").resolve()

SUITE = "bookworm"
#: where the test venv lives inside a root
VENV = "/opt/ccidgadget-test/venv"
#: binfmt_misc entry of qemu-user-static per Debian architecture
BINFMT = {"arm64": "qemu-aarch64", "armhf": "qemu-arm", "armel": "qemu-arm"}
BINFMT_MISC = Path("/proc/sys/fs/binfmt_misc")
#: a clean environment for commands in a root (the host's PATH, venv, pip settings mean nothing there)
CHROOT_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
              "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
              "PIP_DEFAULT_TIMEOUT": "180", "PYTHONDONTWRITEBYTECODE": "1"}


class RootUnavailable(RuntimeError):
    """A foreign root cannot be built or used here (no binfmt_misc, no debootstrap, no network...)."""


def _log(msg: str) -> None:
    print(f"[rootfs] {msg}", file=sys.stderr, flush=True)


def _run(cmd: Sequence[str], *, what: str, log: Path | None = None, env: dict | None = None,
         timeout: float | None = None) -> str:
    """Run ``cmd``; its output goes to ``log`` (appended) and, on failure, into the exception."""
    t0 = time.monotonic()
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, errors="replace", env=env, timeout=timeout)
    if log is not None:
        with open(log, "a") as fh:
            fh.write(f"$ {shlex.join(cmd)}\n{p.stdout}[exit {p.returncode}, {time.monotonic() - t0:.0f} s]\n")
    if p.returncode != 0:
        tail = "\n".join(p.stdout.splitlines()[-40:])
        raise RootUnavailable(f"{what} failed (exit {p.returncode}): {shlex.join(cmd)}\n{tail}")
    return p.stdout


def _which(exe: str) -> str | None:
    for cand in (shutil.which(exe), f"/usr/sbin/{exe}", f"/sbin/{exe}"):
        if cand and Path(cand).exists():
            return cand
    return None


# --------------------------------------------------------------------------- binfmt_misc


def ensure_binfmt(arch: str) -> None:
    """Make foreign ``arch`` binaries run here through qemu-user-static (binfmt_misc, F flag)."""
    name = BINFMT[arch]
    if not (BINFMT_MISC / "status").exists():
        p = subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_MISC)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        # (the arm64 and armhf preparations run side by side: the other one may have mounted it meanwhile)
        if not (BINFMT_MISC / "status").exists():
            raise RootUnavailable(
                f"binfmt_misc is not available on this machine (mount -t binfmt_misc: {p.stdout.strip()}); "
                f"building the {arch} Debian root runs its binaries through qemu-user-static's binfmt "
                "handler. Without it, debootstrap's second stage would have to run inside a booted guest "
                "(about 15 min under TCG), which this test bed does not do")
    entry = BINFMT_MISC / name
    if not entry.exists() or not entry.read_text().startswith("enabled"):
        tool = _which("update-binfmts")
        if tool is None or not Path(f"/usr/share/binfmts/{name}").exists():
            raise RootUnavailable(f"binfmt handler {name} not registered and qemu-user-static/binfmt-support "
                                  "are not installed (apt-get install qemu-user-static binfmt-support)")
        _run([tool, "--enable", name], what=f"update-binfmts --enable {name}")
    text = entry.read_text() if entry.exists() else ""
    flags = re.search(r"^flags: *(\S*)", text, re.M)
    if not text.startswith("enabled") or not flags or "F" not in flags.group(1):
        raise RootUnavailable(f"binfmt handler {name} is not enabled with the F flag "
                              f"(a chroot cannot see the interpreter otherwise):\n{text}")


# --------------------------------------------------------------------------- apt sources


def debian_sources() -> list[tuple[str, str]]:
    """(URI, suite) of this machine's Debian sources for SUITE, -updates and -security, main component."""
    found: list[tuple[str, str]] = []
    wanted = {SUITE, f"{SUITE}-updates", f"{SUITE}-security"}
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for f in files:
        try:
            text = f.read_text()
        except OSError:
            continue
        if f.suffix == ".sources":                        # deb822 stanzas
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, re.M))
                if "deb" not in fields.get("Types", "").split() or "main" not in fields.get("Components", "").split():
                    continue
                for uri in fields.get("URIs", "").split():
                    found += [(uri, s) for s in fields.get("Suites", "").split() if s in wanted]
        else:
            for line in text.splitlines():
                parts = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
                if len(parts) >= 4 and parts[0] == "deb" and parts[2] in wanted and "main" in parts[3:]:
                    found.append((parts[1], parts[2]))
    found = list(dict.fromkeys(found))
    if not any(s == SUITE for _, s in found):
        raise RootUnavailable(f"no Debian '{SUITE}' main source in this machine's apt configuration")
    return found


# --------------------------------------------------------------------------- commands in a root


def chroot_argv(root: Path, argv: Sequence[str], *, binds: Iterable[Path] = (), tmpfs_tmp: bool = True,
                cwd: str = "/", private_net: bool = False, tmpfs_copies: Iterable[str] = ()) -> list[str]:
    """``argv`` run inside ``root`` in a private mount namespace (proc, sys, dev, a fresh /tmp and
    /run, and ``binds`` at their own paths); the mounts vanish with the namespace. ``private_net``:
    in a network namespace of its own too, with only a loopback (fixed ports of the tests' pcscd,
    vpcd... meet nobody else's). ``tmpfs_copies``: directories of the root put on a tmpfs (a copy), for
    32-bit programs built without large-file support under qemu-user: their readdir() fails with
    EOVERFLOW on this machine's ext4, whose directory offsets are 64-bit hashes (a 32-bit kernel
    would give them 32-bit ones), and pcscd then silently finds no drivers and no reader.conf.d."""
    r = shlex.quote(str(root))
    setup = [f"mount -t proc proc {r}/proc", f"mount --rbind /sys {r}/sys", f"mount --rbind /dev {r}/dev"]
    if private_net:
        setup.insert(0, "ip link set lo up")
    if tmpfs_tmp:
        setup.append(f"mount -t tmpfs -o mode=1777 tmpfs {r}/tmp")
        setup.append(f"mount -t tmpfs -o mode=0755 tmpfs {r}/run && mkdir -p {r}/run/lock")
    for i, d in enumerate(tmpfs_copies):
        src, copy = f"{r}{shlex.quote(d)}", f"{r}/tmp/.tmpfs-copy{i}"
        setup.append(f"mkdir -p {copy} && cp -a {src}/. {copy}/ && mount -t tmpfs tmpfs {src} && cp -a {copy}/. {src}/"
                     f" && rm -rf {copy}")
    for b in binds:
        q = shlex.quote(str(b))
        setup.append(f"mkdir -p {r}{q} && mount --rbind {q} {r}{q}")
    script = " && ".join(setup) + f" && exec chroot {r} /bin/sh -c {shlex.quote(f'cd {shlex.quote(cwd)} && exec ' + shlex.join(argv))}"
    return ["unshare", "--mount", *(["--net"] if private_net else []), "--propagation", "private",
            "/bin/sh", "-c", script]


def chroot_run(root: Path, argv: Sequence[str], *, what: str, log: Path | None = None,
               env: dict | None = None, binds: Iterable[Path] = (), timeout: float | None = None) -> str:
    return _run(chroot_argv(root, ["env", "-i", *(f"{k}={v}" for k, v in {**CHROOT_ENV, **(env or {})}.items()),
                                   *argv], binds=binds), what=what, log=log, timeout=timeout)


# --------------------------------------------------------------------------- requirements


def python_requirements(extras: Sequence[str] = ("test", "pcsc", "systemd"), *,
                        drop: Sequence[str] = ()) -> list[str]:
    """The project's requirement strings from pyproject.toml (dependencies and ``extras``), without
    the distributions named in ``drop`` (those come from Debian's packages instead)."""
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(meta.get("dependencies", []))
    for extra in extras:
        reqs += meta.get("optional-dependencies", {}).get(extra, [])

    def name(req: str) -> str:
        return re.split(r"[\s<>=!~;\[]", req, 1)[0].lower().replace("_", "-")

    dropped = {d.lower() for d in drop}
    return list(dict.fromkeys(r for r in reqs if name(r) not in dropped))


# --------------------------------------------------------------------------- the root


class Spec:
    """What goes into one root: architecture, Debian packages, Python requirements."""

    def __init__(self, arch: str, *, include: Sequence[str], packages: Sequence[str],
                 debian_provided: Sequence[str]):
        self.arch = arch
        self.include = tuple(include)            # debootstrap --include (Priority-required closure + these)
        self.packages = tuple(packages)          # apt-get install in the root afterwards
        # the project's requirements less what Debian's packages provide, pip-installed into VENV
        self.debian_provided = tuple(debian_provided)
        self.requirements = tuple(python_requirements(drop=self.debian_provided))

    def base_key(self) -> str:
        src = json.dumps([self.arch, SUITE, self.include, self.packages, debian_sources(), _BUILD_VERSION])
        return hashlib.sha256(src.encode()).hexdigest()[:12]

    def venv_key(self) -> str:
        return hashlib.sha256(json.dumps([self.requirements, PIP_PLATFORMS[self.arch], 4]).encode()).hexdigest()[:12]


#: bump when the recipe below changes in a way the inputs do not show
_BUILD_VERSION = 1


def _stamp(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def ensure_root(spec: Spec, name: str) -> Path:
    """The root ``CACHE/<name>/root`` for ``spec``, built or brought up to date (caller holds the lock)."""
    ensure_binfmt(spec.arch)
    for tool in ("debootstrap", "unshare", "chroot"):
        if _which(tool) is None:
            raise RootUnavailable(f"{tool} is not installed (apt-get install debootstrap util-linux coreutils)")
    base = CACHE / name
    root = base / "root"
    log = base / "build.log"
    base.mkdir(parents=True, exist_ok=True)
    base_key, venv_key = spec.base_key(), spec.venv_key()
    if _stamp(base / "base.stamp") != base_key:
        t0 = time.monotonic()
        (base / "base.stamp").unlink(missing_ok=True)
        (base / "venv.stamp").unlink(missing_ok=True)
        shutil.rmtree(root, ignore_errors=True)
        log.write_text("")
        sources = debian_sources()
        mirror = next(u for u, s in sources if s == SUITE)
        _log(f"debootstrap --arch={spec.arch} {SUITE} into {root} (several minutes; log {log})")
        _run(["debootstrap", f"--arch={spec.arch}", "--variant=minbase", f"--include={','.join(spec.include)}",
              SUITE, str(root), mirror], what=f"debootstrap --arch={spec.arch}", log=log)
        (root / "etc/apt/sources.list").write_text(
            "".join(f"deb {u} {s} main\n" for u, s in sources))
        shutil.copyfile("/etc/resolv.conf", root / "etc/resolv.conf")
        # no service starts from a package's maintainer script in the root
        policy = root / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        if spec.packages:
            _log(f"apt-get install in the {spec.arch} root: {' '.join(spec.packages)}")
            chroot_run(root, ["apt-get", "update", "-q"], what="apt-get update in the root", log=log)
            chroot_run(root, ["apt-get", "install", "-y", "-q", "--no-install-recommends", *spec.packages],
                       what="apt-get install in the root", log=log)
        chroot_run(root, ["apt-get", "clean"], what="apt-get clean", log=log)
        # (apt's lists stay: the test bed asks the root's apt for its kernel package)
        for junk in ("usr/share/doc", "usr/share/man", "usr/share/locale", "var/cache/apt"):
            shutil.rmtree(root / junk, ignore_errors=True)
        (base / "base.stamp").write_text(base_key + "\n")
        _log(f"{spec.arch} base root ready in {time.monotonic() - t0:.0f} s")
    if _stamp(base / "venv.stamp") != venv_key:
        t0 = time.monotonic()
        venv = root / VENV.lstrip("/")
        shutil.rmtree(venv, ignore_errors=True)
        _log(f"venv {VENV} in the {spec.arch} root: {' '.join(spec.requirements)}")
        chroot_run(root, ["/usr/bin/python3", "-m", "venv", "--system-site-packages", "--without-pip", VENV],
                   what="python3 -m venv in the root", log=log)
        version = chroot_run(root, [f"{VENV}/bin/python", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             what="the root's Python version").strip()
        install_requirements(spec, version, venv / f"lib/python{version}/site-packages", log)
        (base / "venv.stamp").write_text(venv_key + "\n")
        _log(f"{spec.arch} venv ready in {time.monotonic() - t0:.0f} s")
    return root


#: wheel platform tags each root accepts: manylinux up to Debian 12's glibc 2.36 (pip does not expand
#: a --platform to the older manylinux versions by itself)
PIP_PLATFORMS = {arch: (*(f"manylinux_2_{minor}_{machine}" for minor in range(36, 16, -1)),
                        f"manylinux2014_{machine}", f"linux_{machine}")
                 for arch, machine in (("arm64", "aarch64"), ("armhf", "armv7l"))}
#: markers of the requirements evaluated for the root, not for this machine
MARKER_ENV = {"arm64": {"platform_machine": "aarch64"}, "armhf": {"platform_machine": "armv7l"}}
_FILTER_REQUIREMENTS = """
import json, sys
from pip._vendor.packaging.requirements import Requirement
env = json.loads(sys.argv[1])
for r in sys.argv[2:]:
    req = Requirement(r)
    if req.marker is None or req.marker.evaluate(env):
        req.marker = None
        print(req)
"""


#: name==version of every distribution the root needs: the wheels' Requires-Dist walked from the
#: wanted requirements (markers for the root, extras followed), not into what Debian provides
_CLOSURE = """
import json, sys, zipfile
from email.parser import Parser
try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name as canon
except ImportError:             # a bare venv with only pip
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name as canon
args = json.loads(sys.argv[1])
meta = {}
for path in sys.argv[2:]:
    with zipfile.ZipFile(path) as whl:
        name = next(n for n in whl.namelist() if n.endswith(".dist-info/METADATA"))
        msg = Parser().parsestr(whl.read(name).decode())
    meta[canon(msg["Name"])] = (msg["Version"], msg.get_all("Requires-Dist") or [])
skip = {canon(n) for n in args["skip"]}
todo = [Requirement(r) for r in args["wanted"]]
seen = {}
while todo:
    req = todo.pop()
    name = canon(req.name)
    extras = {""} | set(req.extras)
    if name in skip or extras <= seen.get(name, set()):
        continue
    if name not in meta:
        sys.exit(f"{req} is needed in the root but no wheel of it was built on this machine")
    seen[name] = seen.get(name, set()) | extras
    for dep in map(Requirement, meta[name][1]):
        if dep.marker is None or any(dep.marker.evaluate({**args["env"], "extra": e}) for e in seen[name]):
            todo.append(dep)
for name in sorted(seen):
    print(f"{name}=={meta[name][0]}")
"""


def host_pip() -> list[str]:
    """argv of a pip on this machine: this interpreter's, or a small venv's in the cache."""
    if subprocess.run([sys.executable, "-m", "pip", "--version"], stdout=subprocess.DEVNULL,
                      stderr=subprocess.DEVNULL).returncode == 0:
        return [sys.executable, "-m", "pip"]
    venv = CACHE / "host-pip"
    if not (venv / "bin/python").exists():
        _run([sys.executable, "-m", "venv", str(venv)], what="python3 -m venv (a pip for building the roots)")
    return [str(venv / "bin/python"), "-m", "pip"]


def install_requirements(spec: Spec, version: str, site: Path, log: Path) -> None:
    """The requirements, as wheels for the root's platform, into its venv's ``site`` by this machine's pip."""
    pip = host_pip()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_TARGET")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1")
    wanted = _run([pip[0], "-c", _FILTER_REQUIREMENTS, json.dumps(MARKER_ENV[spec.arch]), *spec.requirements],
                  what="evaluating the requirements' markers for the root", env=env).split()
    work = CACHE / f"{spec.arch}-wheels"
    shutil.rmtree(work, ignore_errors=True)
    (work / "pure").mkdir(parents=True)
    # sdist-only pure-Python projects (functionfs, libaio, ioctl-opt) become wheels here
    _run([*pip, "wheel", "-q", "-w", str(work / "native"), *wanted], what="pip wheel (this machine)", log=log,
         env=env)
    for wheel in (work / "native").glob("*-none-any.whl"):
        os.replace(wheel, work / "pure" / wheel.name)
    # The closure is resolved here, where every wheel exists, and installed pinned with --no-deps: a
    # dependency that the root takes from Debian (pyscard under yubikey-manager, cryptography on armhf)
    # has no wheel for the root's platform, so pip's own resolution for that platform is impossible.
    pinned = _run([pip[0], "-c", _CLOSURE, json.dumps({"env": MARKER_ENV[spec.arch], "wanted": wanted,
                                                         "skip": sorted(spec.debian_provided)}),
                   *map(str, [*(work / "pure").glob("*.whl"), *(work / "native").glob("*.whl")])],
                  what="the requirements' closure for the root", env=env).split()
    platforms = [a for plat in PIP_PLATFORMS[spec.arch] for a in ("--platform", plat)]
    _run([*pip, "install", "-q", "--target", str(site), *platforms, "--python-version", version,
          "--implementation", "cp", "--only-binary=:all:", "--no-deps", "--find-links", str(work / "pure"),
          *pinned], what=f"pip install --target for {spec.arch}", log=log, env=env)
    shutil.rmtree(site / "bin", ignore_errors=True)      # scripts for this machine's interpreter
    console_scripts(site, site.parents[2] / "bin")
    shutil.rmtree(work, ignore_errors=True)


def console_scripts(site: Path, bin_dir: Path) -> list[str]:
    """The console scripts of the distributions in ``site`` (``ykman``...), written into the root's venv
    ``bin_dir`` for the root's interpreter (pip --target wrote them for this machine's, if at all)."""
    import configparser
    written = []
    for entry_points in sorted(site.glob("*.dist-info/entry_points.txt")):
        parser = configparser.ConfigParser(delimiters=("=",), interpolation=None)
        parser.optionxform = str                        # script names keep their case
        parser.read(entry_points)
        if not parser.has_section("console_scripts"):
            continue
        for name, target in parser.items("console_scripts"):
            module, _, attr = target.partition(":")
            attr = attr.split("[")[0].strip()           # "main [extra]": extras mean nothing here
            script = bin_dir / name
            script.write_text(f"#!{VENV}/bin/python\nimport sys\nfrom {module.strip()} import "
                              f"{attr.split('.')[0]} as _entry\n"
                              f"sys.exit(_entry{''.join('.' + a for a in attr.split('.')[1:])}())\n")
            script.chmod(0o755)
            written.append(name)
    return written


def root_key(name: str) -> str:
    """Identifies the root's current content (both stages)."""
    base = CACHE / name
    return hashlib.sha256(f"{_stamp(base / 'base.stamp')} {_stamp(base / 'venv.stamp')}".encode()).hexdigest()[:12]


def ext4_image(root: Path, dest: Path) -> Path:
    """A read-only ext4 image of ``root`` (no journal: it is never written)."""
    if dest.exists():
        return dest
    du = int(_run(["du", "-s", "-B1", "--apparent-size", str(root)], what="du").split()[0])
    size_mib = int(du * 1.25 / 2**20) + 64
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.unlink(missing_ok=True)
    _log(f"mke2fs -d {root} -> {dest.name} ({size_mib} MiB)")
    _run([_which("mke2fs") or "mke2fs", "-q", "-F", "-t", "ext4", "-O", "^has_journal", "-L", "ccidgadget-root",
          "-E", "root_owner=0:0", "-d", str(root), str(tmp), f"{size_mib}M"], what="mke2fs -d")
    for old in dest.parent.glob("root-*.ext4"):
        old.unlink()
    os.replace(tmp, dest)
    return dest


# --------------------------------------------------------------------------- the roots this project uses

#: Debian packages of the arm64 guest (the e2e tests' host side and the daemon's runtime). Named in
#: debootstrap's --include: what debootstrap resolves alone; the rest through apt in the root.
ARM64_INCLUDE = ("python3", "python3-venv", "python3-cffi-backend", "python3-cryptography", "python3-pyscard",
                 "busybox-static", "kmod", "iproute2", "ca-certificates")
ARM64_PACKAGES = ("pcscd", "libccid", "opensc", "pcsc-tools", "yubico-piv-tool", "openssl", "openssh-client",
                  "libnss3-tools", "usbutils", "libaio1", "python3-systemd", "python3-evdev", "procps")
#: the 32-bit ARM chroot for the unit suites: Debian's python3-cryptography (38.0.4, what Raspberry Pi
#: OS has on 32-bit ARM, where PyPI has no wheel), pyscard and systemd from Debian too; busybox, kmod,
#: iproute2 and usbutils make it bootable as the armhf guest's root as well (testbed flavour armhf)
ARMHF_INCLUDE = ("python3", "python3-venv", "python3-cffi-backend", "python3-cryptography", "python3-pyscard",
                 "ca-certificates", "busybox-static", "kmod", "iproute2")
ARMHF_PACKAGES = ("python3-systemd", "python3-evdev", "libaio1", "pcscd", "libccid", "opensc", "pcsc-tools", "vsmartcard-vpcd",
                  "yubico-piv-tool", "libnss3-tools", "openssl", "openssh-client", "systemd", "procps", "usbutils")

ROOT_SPECS = {
    "arm64": Spec("arm64", include=ARM64_INCLUDE, packages=ARM64_PACKAGES,
                  # Debian's python3-systemd and python3-pyscard (the guest's host side uses them too)
                  # and python3-evdev (PyPI has no evdev wheels, only a C source that needs a compiler);
                  # cryptography from PyPI, as `make install` gets it on a 64-bit Pi
                  debian_provided=("systemd-python", "pyscard", "evdev")),
    "armhf": Spec("armhf", include=ARMHF_INCLUDE, packages=ARMHF_PACKAGES,
                  debian_provided=("systemd-python", "cryptography", "pyscard", "evdev")),
}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m tests.vm.rootfs", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p_prep = sub.add_parser("prepare", help="build (or reuse) a root")
    p_prep.add_argument("name", choices=sorted(ROOT_SPECS))
    p_run = sub.add_parser("run", help="run a command in a root (the checkout bound at its path)")
    p_run.add_argument("name", choices=sorted(ROOT_SPECS))
    p_run.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    try:
        root = ensure_root(ROOT_SPECS[args.name], args.name)
    except RootUnavailable as e:
        print(f"rootfs unavailable: {e}", file=sys.stderr)
        return 2
    if args.cmd == "prepare":
        print(root)
        return 0
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    return subprocess.call(chroot_argv(root, ["env", "-i", *(f"{k}={v}" for k, v in CHROOT_ENV.items()),
                                              f"PYTHONPATH={REPO}", *command], binds=[REPO], cwd=str(REPO)))


if __name__ == "__main__":
    sys.exit(main())
