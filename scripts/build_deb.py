#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""`make deb`: build build/deb/ccidgadget_VERSION_all.deb from this checkout, then run lintian on it.

1. The pure-Python libraries of debian/vendor.txt are downloaded once (pip download, hashes
   required) into .cache/deb/vendor-dist; the package build itself is offline.
2. The checkout's files (tracked and new, not ignored) are copied to build/deb/src/ccidgadget-VERSION/
   with the vendor files in debian/vendor-dist/, and `dpkg-buildpackage -b` builds the package.
3. lintian runs on the .changes; the package is rebuilt only when an input file changed.

Python API for the tests: ``build(lint=False) -> Result``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "build" / "deb"
VENDOR_DIST = REPO / ".cache" / "deb" / "vendor-dist"
SPEC = REPO / "debian" / "vendor.txt"


@dataclasses.dataclass
class Result:
    deb: Path
    version: str
    lintian: str | None = None      # lintian's output (None: not run)
    rebuilt: bool = True


def version() -> str:
    first = (REPO / "debian" / "changelog").read_text().splitlines()[0]
    m = re.match(r"^ccidgadget \(([^)]+)\)", first)
    if not m:
        raise SystemExit(f"debian/changelog: cannot read the version from {first!r}")
    return m.group(1)


def vendor_files() -> list[tuple[str, str]]:
    out = []
    for line in SPEC.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, sha256, *_ = line.split()
            out.append((name, sha256))
    return out


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_vendor() -> None:
    """Download the files of debian/vendor.txt that are not in the cache yet (hashes enforced)."""
    VENDOR_DIST.mkdir(parents=True, exist_ok=True)
    missing = [(n, h) for n, h in vendor_files() if not (VENDOR_DIST / n).exists() or _sha256(VENDOR_DIST / n) != h]
    if not missing:
        return
    reqs = []
    for name, sha256 in missing:
        m = re.match(r"^([A-Za-z0-9_.]+?)-(\d[^-]*?)(?:\.tar\.gz|-py3-none-any\.whl)$", name)
        if not m:
            raise SystemExit(f"debian/vendor.txt: cannot tell the project and version of {name}")
        reqs.append(f"{m.group(1).replace('_', '-')}=={m.group(2)} --hash=sha256:{sha256}")
    with tempfile.TemporaryDirectory() as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text("\n".join(reqs) + "\n")
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--require-hashes",
                        "-r", str(req), "-d", tmp], check=True)
        for name, sha256 in missing:
            got = Path(tmp) / name
            if not got.exists() or _sha256(got) != sha256:
                raise SystemExit(f"pip download did not produce {name} with sha256 {sha256}")
            shutil.copy2(got, VENDOR_DIST / name)


def source_files() -> list[str]:
    out = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         capture_output=True, check=True).stdout.decode().split("\0")
    return sorted(f for f in out if f and (REPO / f).is_file())


def _inputs_digest(files: list[str]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.encode() + b"\0" + (REPO / f).read_bytes() + b"\0")
    for name, sha256 in vendor_files():
        h.update(name.encode() + sha256.encode())
    return h.hexdigest()


def build(lint: bool = True, force: bool = False) -> Result:
    fetch_vendor()
    ver = version()
    files = source_files()
    digest = _inputs_digest(files)
    deb = OUT / f"ccidgadget_{ver}_all.deb"
    stamp = OUT / ".inputs"
    rebuilt = False
    if force or not deb.exists() or not stamp.exists() or stamp.read_text() != digest:
        src_parent = OUT / "src"
        shutil.rmtree(src_parent, ignore_errors=True)
        src = src_parent / f"ccidgadget-{ver}"
        for f in files:
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, src / f)
        shutil.copytree(VENDOR_DIST, src / "debian" / "vendor-dist")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"      # Debian's python3, not a venv's or pyenv's
        p = subprocess.run(["dpkg-buildpackage", "-b", "-us", "-uc"], cwd=src, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        (OUT / "build.log").write_text(p.stdout)
        if p.returncode != 0:
            raise SystemExit(f"dpkg-buildpackage failed (exit {p.returncode}); log: {OUT / 'build.log'}\n"
                             + "\n".join(p.stdout.splitlines()[-40:]))
        for f in src_parent.glob(f"ccidgadget_{ver}_*"):
            os.replace(f, OUT / f.name)
        shutil.rmtree(src_parent)
        stamp.write_text(digest)
        rebuilt = True
    result = Result(deb, ver, rebuilt=rebuilt)
    if lint:
        # the .changes (named after the build machine's architecture) covers the .deb and .buildinfo
        [changes] = OUT.glob(f"ccidgadget_{ver}_*.changes")
        p = subprocess.run(["lintian", "--display-info", "--pedantic", "--show-overrides", "--tag-display-limit", "0",
                            str(changes)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        result.lintian = "".join(line for line in p.stdout.splitlines(keepends=True)
                                 if line.strip() != "running with root privileges is not recommended!")
        if p.returncode not in (0, 1, 2):
            raise SystemExit(f"lintian failed (exit {p.returncode}):\n{p.stdout}")
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--force", action="store_true", help="rebuild even if no input changed")
    ap.add_argument("--no-lintian", action="store_true")
    args = ap.parse_args()
    r = build(lint=not args.no_lintian, force=args.force)
    print(f"{r.deb.relative_to(REPO)}: {r.deb.stat().st_size} bytes" + ("" if r.rebuilt else " (unchanged)"))
    print(subprocess.run(["dpkg-deb", "--info", str(r.deb)], capture_output=True, text=True).stdout)
    if r.lintian is not None:
        print("lintian --display-info --pedantic --show-overrides:\n" + (r.lintian.strip() or "(no tags)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
