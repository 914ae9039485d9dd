# SPDX-License-Identifier: GPL-3.0-or-later
"""The foreign roots' requirement closure (tests/vm/rootfs.py): what Debian provides is left out with
the dependencies only it needs, markers are evaluated for the root's machine, extras are followed.

CI's arm64 and armhf roots once failed because pip, resolving for the foreign platform, had to find a
wheel of pyscard (under yubikey-manager) that only Debian's package provides there."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import pytest

from tests.vm import rootfs


def wheel(tmp_path, name: str, version: str, *requires: str):
    path = tmp_path / f"{name}-{version}-py3-none-any.whl"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    meta += "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name.replace('-', '_')}-{version}.dist-info/METADATA", meta)
    return str(path)


def closure(tmp_path, wanted, skip, env=None):
    wheels = [
        wheel(tmp_path, "ykman", "5.9", "pyscard>=2", "fido2>=1", "click"),
        wheel(tmp_path, "fido2", "2.2", "cryptography>=2.6", "pyscard; extra == 'pcsc'"),
        wheel(tmp_path, "cryptography", "50.0", "cffi>=2"),
        wheel(tmp_path, "cffi", "2.1", "pycparser"),
        wheel(tmp_path, "pycparser", "3.1"),
        wheel(tmp_path, "pyscard", "2.3"),
        wheel(tmp_path, "click", "8.5", "colorama; platform_system == 'Windows'",
              "armonly; platform_machine == 'armv7l'"),
        wheel(tmp_path, "armonly", "1.0"),
    ]
    args = {"env": env or {"platform_machine": "aarch64"}, "wanted": wanted, "skip": skip}
    p = subprocess.run([sys.executable, "-c", rootfs._CLOSURE, json.dumps(args), *wheels],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return p.stdout.split()


def test_debian_provided_and_what_only_it_needs_are_left_out(tmp_path):
    got = closure(tmp_path, ["ykman>=5"], ["cryptography", "pyscard"])
    assert got == ["click==8.5", "fido2==2.2", "ykman==5.9"]


def test_everything_else_is_pinned(tmp_path):
    got = closure(tmp_path, ["ykman>=5"], ["pyscard"])
    assert got == ["cffi==2.1", "click==8.5", "cryptography==50.0", "fido2==2.2", "pycparser==3.1", "ykman==5.9"]


def test_markers_for_the_root_and_extras_followed(tmp_path):
    got = closure(tmp_path, ["fido2[pcsc]", "click"], ["cryptography"], env={"platform_machine": "armv7l"})
    assert got == ["armonly==1.0", "click==8.5", "fido2==2.2", "pyscard==2.3"]


def test_a_dependency_without_a_wheel_is_named(tmp_path):
    args = {"env": {}, "wanted": ["missing>=1"], "skip": []}
    p = subprocess.run([sys.executable, "-c", rootfs._CLOSURE, json.dumps(args)], capture_output=True, text=True)
    assert p.returncode == 1 and "missing>=1 is needed in the root" in p.stderr


@pytest.mark.parametrize("arch", sorted(rootfs.ROOT_SPECS))
def test_the_roots_leave_debian_provided_distributions_to_debian(arch):
    spec = rootfs.ROOT_SPECS[arch]
    names = {r.split(">")[0].split("=")[0].split(";")[0].strip() for r in spec.requirements}
    assert not names & set(spec.debian_provided)
    assert "pyscard" in spec.debian_provided and "evdev" in spec.debian_provided


def test_console_scripts_for_the_roots_interpreter(tmp_path):
    site, bin_dir = tmp_path / "site", tmp_path / "bin"
    (site / "yubikey_manager-5.9.dist-info").mkdir(parents=True)
    bin_dir.mkdir()
    (site / "yubikey_manager-5.9.dist-info/entry_points.txt").write_text(
        "[console_scripts]\nykman = ykman._cli.__main__:main\nDeep = pkg.mod:obj.run [extra]\n\n"
        "[other]\nx = y:z\n")
    assert rootfs.console_scripts(site, bin_dir) == ["ykman", "Deep"]
    text = (bin_dir / "ykman").read_text()
    assert text.startswith(f"#!{rootfs.VENV}/bin/python\n")
    assert "from ykman._cli.__main__ import main as _entry\nsys.exit(_entry())" in text
    assert "from pkg.mod import obj as _entry\nsys.exit(_entry.run())" in (bin_dir / "Deep").read_text()
    assert (bin_dir / "ykman").stat().st_mode & 0o111
    compile((bin_dir / "Deep").read_text(), "Deep", "exec")
