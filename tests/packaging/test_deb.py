# SPDX-License-Identifier: GPL-3.0-or-later
"""The Debian package (make deb) as built here: contents, dependencies, conffiles, lintian, imports on Debian's python3.

Installing, upgrading, removing and purging it under systemd is tests/e2e/test_package.py (guest).
"""

from __future__ import annotations

import datetime
import difflib
import gzip
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from ccidgadget import manpage

REPO = Path(__file__).resolve().parents[2]


sys.path.insert(0, str(REPO / "tests" / "e2e"))
from package_helpers import build_deb_module as _build_deb  # noqa: E402  (scripts/build_deb.py, loaded by path)


@pytest.fixture(scope="module")
def built():
    return _build_deb().build(lint=True)


@pytest.fixture(scope="module")
def tree(built, tmp_path_factory):
    root = tmp_path_factory.mktemp("deb")
    subprocess.run(["dpkg-deb", "-R", str(built.deb), str(root)], check=True)
    return root


def field(deb: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True, check=True).stdout.strip()


def test_versions_agree():
    from ccidgadget import __version__
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert _build_deb().version() == __version__ == pyproject


def test_architecture_all_and_debians_own_libraries(built):
    assert field(built.deb, "Architecture") == "all"
    depends = [d.strip() for d in field(built.deb, "Depends").split(",")]
    for wanted in ("python3-cryptography (>= 38)", "python3-pyscard", "python3-systemd", "pcscd",
                   "libaio1 | libaio1t64"):
        assert wanted in depends, depends
    assert any(re.fullmatch(r"python3(:any)? \(>= 3\.11~?\)", d) for d in depends), depends


def test_contents(tree):
    for path in ("usr/bin/ccidgadget", "lib/systemd/system/ccidgadget.service", "etc/ccidgadget/ccidgadget.toml",
                 "usr/lib/modules-load.d/ccidgadget.conf", "usr/share/man/man8/ccidgadget.8.gz",
                 "usr/share/doc/ccidgadget/service.md", "usr/share/doc/ccidgadget/copyright",
                 "usr/share/doc/ccidgadget/examples/ccidgadget.toml.example",
                 "usr/share/ccidgadget/ccidgadget/cli.py", "usr/share/ccidgadget/functionfs/__init__.py",
                 "usr/share/ccidgadget/libaio/libaio.py", "usr/share/ccidgadget/ioctl_opt/__init__.py"):
        assert (tree / path).is_file(), path
    # no compiler at install time and nothing architecture-specific: only Python source and data
    binaries = [p for p in tree.rglob("*") if p.is_file() and p.read_bytes()[:4] == b"\x7fELF"]
    assert not binaries, binaries
    assert not list(tree.rglob("__pycache__")), "byte-code is compiled at install time (py3compile)"
    assert (tree / "DEBIAN/conffiles").read_text().split() == ["/etc/ccidgadget/ccidgadget.toml"]
    assert (tree / "etc/ccidgadget/ccidgadget.toml").read_text() == (REPO / "etc/ccidgadget.toml.example").read_text()
    assert (tree / "usr/lib/modules-load.d/ccidgadget.conf").read_text().split("\n")[-2] == "libcomposite"
    copyright = (tree / "usr/share/doc/ccidgadget/copyright").read_text()
    for lib, licence in (("functionfs", "GPL-3+"), ("libaio", "LGPL-3+"), ("ioctl_opt", "LGPL-2+")):
        assert re.search(rf"Files: debian/vendor-dist/{lib}-\*\n.*\n.*/usr/share/ccidgadget/{lib}\nLicense: "
                         rf"{re.escape(licence)}\n", copyright), lib


def test_the_unit_is_the_repositorys_with_the_packaged_paths(tree):
    packaged = (tree / "lib/systemd/system/ccidgadget.service").read_text().splitlines()
    source = (REPO / "systemd/ccidgadget.service").read_text().splitlines()
    changed = [line for line in difflib.unified_diff(source, packaged, lineterm="", n=0)
               if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    assert sorted(changed) == sorted([
        "-# Installed by `make install` to /etc/systemd/system/ccidgadget.service.",
        "+# Installed by the Debian package ccidgadget.",
        "-Documentation=file:/opt/ccidgadget/docs/service.md",
        "+Documentation=man:ccidgadget(8) file:/usr/share/doc/ccidgadget/service.md",
        "-ExecStart=/opt/ccidgadget/venv/bin/ccidgadget", "+ExecStart=/usr/bin/ccidgadget",
        "-ExecReload=/opt/ccidgadget/venv/bin/ccidgadget reload", "+ExecReload=/usr/bin/ccidgadget reload",
        "-ExecStopPost=-/opt/ccidgadget/venv/bin/ccidgadget cleanup", "+ExecStopPost=-/usr/bin/ccidgadget cleanup",
    ]), changed


def test_maintainer_scripts(tree):
    postinst = (tree / "DEBIAN/postinst").read_text()
    assert "systemctl --system daemon-reload" in postinst
    assert "deb-systemd-invoke try-restart 'ccidgadget.service'" in postinst      # upgrades only ($2 set)
    # never started on installation; enabled only again if the administrator had enabled it before
    assert "deb-systemd-invoke start" not in postinst and "systemctl start" not in postinst
    lines = postinst.splitlines()
    for i, line in enumerate(lines):
        if "deb-systemd-helper enable" in line:
            assert "was-enabled" in "".join(lines[i - 3:i]), lines[i - 3:i + 1]
    assert "py3compile -p ccidgadget /usr/share/ccidgadget" in postinst
    prerm = (tree / "DEBIAN/prerm").read_text()
    assert re.search(r'if \[ "\$1" = remove \].*\n\s+deb-systemd-invoke stop ccidgadget.service', prerm)
    postrm = (tree / "DEBIAN/postrm").read_text()
    assert "rm -r /var/lib/ccidgadget" in postrm and not re.search(r"^\s*rm .*/var/lib", postrm, re.M)


def test_lintian_is_clean_and_every_override_says_why(built):
    assert built.lintian is not None
    tags = [line for line in built.lintian.splitlines() if re.match(r"^[EWIPXC]: ", line)]
    assert not tags, built.lintian
    lines = (REPO / "debian/ccidgadget.lintian-overrides").read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("ccidgadget: "):
            assert i > 0 and lines[i - 1].startswith("#"), f"override without a reason: {line}"


def test_every_module_imports_on_debians_python_with_what_the_package_ships(tree):
    # /usr/bin/python3 -I: no venv, no PYTHONPATH, no user site; only Debian's packages + the package's directory
    private = tree / "usr/share/ccidgadget"
    code = ("import sys, pkgutil, importlib; sys.path.insert(0, sys.argv[1]); import ccidgadget\n"
            "names = [m.name for m in pkgutil.walk_packages(ccidgadget.__path__, 'ccidgadget.')"
            "         if m.name != 'ccidgadget.__main__']\n"
            "for n in names: importlib.import_module(n)\n"
            "import functionfs, libaio, cryptography\n"
            "assert functionfs.__file__.startswith(sys.argv[1]), functionfs.__file__\n"
            "print(len(names), cryptography.__version__)")
    p = subprocess.run(["/usr/bin/python3", "-I", "-c", code, str(private)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    count, version = p.stdout.split()
    assert int(count) > 40, p.stdout
    launcher = (tree / "usr/bin/ccidgadget").read_text()
    assert launcher.startswith("#!/usr/bin/python3 -I\n") and 'sys.path.insert(0, "/usr/share/ccidgadget")' in launcher


def test_man_page_in_the_package_is_the_generated_one(tree):
    page = gzip.decompress((tree / "usr/share/man/man8/ccidgadget.8.gz").read_bytes()).decode()
    date = re.search(r'^\.TH CCIDGADGET 8 "([0-9-]+)"', page).group(1)
    assert page == manpage.render(datetime.date.fromisoformat(date))
