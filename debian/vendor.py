#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unpack the pure-Python libraries of debian/vendor.txt (checked by hash) into the package, offline.

    python3 debian/vendor.py debian/vendor.txt DIST_DIR OUT_DIR

Only the import package's .py files are taken (their own tests are left out); the licences
are stated in debian/copyright.  An sdist holds them under NAME-VERSION/PACKAGE/, a wheel
under PACKAGE/.
"""

import hashlib
import sys
import tarfile
import zipfile
from pathlib import Path, PurePosixPath


def members(archive: Path):
    """(path inside the archive, bytes) of every regular file."""
    if archive.name.endswith(".whl"):
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                if not info.is_dir():
                    yield info.filename, z.read(info)
    else:
        with tarfile.open(archive) as t:
            for info in t.getmembers():
                if info.isfile():
                    yield info.name, t.extractfile(info).read()


def wanted(rel: PurePosixPath) -> bool:
    return rel.suffix == ".py" and "tests" not in rel.parts[1:-1] and rel.name != "test.py"


def unpack(spec: Path, dist: Path, out: Path) -> list[str]:
    done = []
    for line in spec.read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        name, sha256, package, _licence = line.split()
        archive = dist / name
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        if digest != sha256:
            raise SystemExit(f"{archive}: sha256 {digest}, debian/vendor.txt says {sha256}")
        count = 0
        for path, data in members(archive):
            parts = PurePosixPath(path).parts
            # sdist: NAME-VERSION/PACKAGE/...; wheel: PACKAGE/...
            start = 1 if not name.endswith(".whl") else 0
            if len(parts) <= start or parts[start] != package:
                continue
            rel = PurePosixPath(*parts[start:])
            if not wanted(rel) or ".." in rel.parts:
                continue
            dest = out / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
            count += 1
        if not count:
            raise SystemExit(f"{archive}: no {package}/*.py inside")
        done.append(f"{package} ({count} files from {name})")
    return done


if __name__ == "__main__":
    spec, dist, out = map(Path, sys.argv[1:4])
    for what in unpack(spec, dist, out):
        print(f"vendor: {what}")
