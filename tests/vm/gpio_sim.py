# SPDX-License-Identifier: GPL-3.0-or-later
"""gpio-sim.ko for the guest kernel, built from Debian's own packages (cached).

Debian's 6.12 kernel has neither CONFIG_GPIO_SIM nor CONFIG_GPIO_MOCKUP, so a
simulated GPIO line (tests/e2e/test_presence.py) needs the module built out of
tree, from the same release's packages:

- linux-headers-<release>, linux-headers-<base>-common, linux-kbuild-<base>:
  the build tree (Module.symvers with the MODVERSIONS CRCs, the kernel's gcc-12
  settings);
- linux-source-6.12 at the kernel's exact version: drivers/gpio/gpio-sim.c and
  kernel/irq/irq_sim.c, the only two files taken out of its tarball.

gpio-sim selects IRQ_SIM, which Debian leaves out of the kernel image, so
irq_sim.c is compiled into the same module.  One line of it changes:
`handle_simple_irq(irq_to_desc(irq))` becomes `generic_handle_irq(irq)`, which
does the same (the simulated interrupts use handle_simple_irq) through an
exported function: irq_to_desc has not been exported to modules since 5.11.
The module is unsigned; Debian's kernel loads it (no MODULE_SIG_FORCE) and
marks itself tainted.  BTF is not generated (that needs pahole).

About 170 MB of packages, ~15 s to pull the two files out of the source
tarball, ~5 s to compile; then `<cache>/modules/<release>/gpio-sim.ko`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCES = ("drivers/gpio/gpio-sim.c", "kernel/irq/irq_sim.c")
IRQ_SIM_PATCH = ("handle_simple_irq(irq_to_desc(irqnum));", "generic_handle_irq(irqnum);")
FAILURE_FILE = "gpio-sim.failed"


def module_path(cache: Path, release: str) -> Path:
    return cache / "modules" / release / "gpio-sim.ko"


def failure(cache: Path, release: str) -> str | None:
    """Why the last build failed, if it did."""
    try:
        return (cache / "modules" / release / FAILURE_FILE).read_text()
    except OSError:
        return None


def _run(cmd, **kw) -> str:
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)
    if p.returncode:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({p.returncode}):\n{p.stdout[-3000:]}")
    return p.stdout


def _download(debs: Path, package: str, version: str) -> Path:
    have = list(debs.glob(f"{package}_{version.replace(':', '%3a')}_*.deb"))
    if have:
        return have[0]
    with tempfile.TemporaryDirectory(dir=debs) as tmp:
        _run(["apt-get", "download", "-q", f"{package}={version}"], cwd=tmp)
        (got,) = Path(tmp).glob("*.deb")
        dest = debs / got.name
        os.replace(got, dest)
    return dest


def build(cache: Path, release: str, kernel_deb: Path, log=print) -> Path:
    """Build (or reuse) gpio-sim.ko for `release`; RuntimeError with the reason if it cannot."""
    target = module_path(cache, release)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    (target.parent / FAILURE_FILE).unlink(missing_ok=True)
    try:
        return _build(cache, release, kernel_deb, target, log)
    except (RuntimeError, OSError, ValueError) as e:
        (target.parent / FAILURE_FILE).write_text(str(e))
        raise RuntimeError(str(e)) from None


def _build(cache: Path, release: str, kernel_deb: Path, target: Path, log) -> Path:
    match = re.match(r"linux-image-[^_]+_([^_]+)_", kernel_deb.name)
    if not match:
        raise ValueError(f"cannot read the kernel version from {kernel_deb.name}")
    version = match.group(1).replace("%3a", ":")
    base = release.rsplit("-", 1)[0]                     # 6.12.117+deb12-amd64 -> 6.12.117+deb12
    series = ".".join(release.split(".")[:2])            # 6.12
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    log(f"gpio-sim: downloading the headers and source of {release} ({version})")
    packages = [_download(debs, p, version) for p in (f"linux-headers-{release}", f"linux-headers-{base}-common",
                                                      f"linux-kbuild-{base}", f"linux-source-{series}")]
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        tree = Path(tmp) / "tree"
        for deb in packages[:3]:
            _run(["dpkg-deb", "-x", str(deb), str(tree)])
        headers = tree / "usr/src" / f"linux-headers-{release}"
        makefile = headers / "Makefile"
        makefile.write_text(makefile.read_text().replace("include /usr/src/", f"include {tree}/usr/src/"))
        log("gpio-sim: taking gpio-sim.c and irq_sim.c out of the source tarball")
        src = Path(tmp) / "src"
        src.mkdir()
        inner = f"./usr/src/linux-source-{series}.tar.xz"
        pipeline = (f"dpkg-deb --fsys-tarfile {packages[3]} | tar -xO {inner} | xz -dc | "
                    f"tar -x -C {src} --strip-components=1 "
                    + " ".join(f"linux-source-{series}/{s}" for s in SOURCES))
        _run(["bash", "-o", "pipefail", "-c", pipeline])
        build_dir = Path(tmp) / "build"
        build_dir.mkdir()
        shutil.copy(src / SOURCES[0], build_dir / "gpio-sim-main.c")
        irq_sim = (src / SOURCES[1]).read_text()
        if IRQ_SIM_PATCH[0] not in irq_sim:
            raise RuntimeError("kernel/irq/irq_sim.c changed: the irq_to_desc call to replace is not there")
        (build_dir / "irq_sim.c").write_text(irq_sim.replace(*IRQ_SIM_PATCH))
        (build_dir / "Kbuild").write_text("obj-m := gpio-sim.o\ngpio-sim-y := gpio-sim-main.o irq_sim.o\n")
        log("gpio-sim: compiling")
        _run(["make", "-s", "-C", str(headers), f"M={build_dir}", "CONFIG_DEBUG_INFO_BTF_MODULES=", "modules"])
        built = build_dir / "gpio-sim.ko"
        info = _run(["modinfo", "-F", "vermagic", str(built)]) if shutil.which("modinfo") else release
        if not info.startswith(release):
            raise RuntimeError(f"gpio-sim.ko was built for {info.strip()!r}, not {release}")
        tmp_target = target.with_suffix(".tmp")
        shutil.copy(built, tmp_target)
        os.replace(tmp_target, target)
    log(f"gpio-sim: {target}")
    return target
