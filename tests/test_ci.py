# SPDX-License-Identifier: GPL-3.0-or-later
"""tests/ci.py: which values of CI mean CI, and the skips a guest's junit.xml records."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.ci import in_ci, junit_skips


@pytest.mark.parametrize("value", ["1", "true", "True", "TRUE", "yes", "Yes", "on", " true\n"])
def test_truthy_ci_values(value):
    assert in_ci({"CI": value})


@pytest.mark.parametrize("value", ["", "0", "false", "False", "no", "off"])
def test_other_values_are_not_ci(value):
    assert not in_ci({"CI": value})
    assert not in_ci({})


def test_junit_skips_lists_what_pytest_skipped(tmp_path):
    (tmp_path / "test_sample.py").write_text(
        "import pytest\n"
        "def test_runs():\n    pass\n"
        "def test_skips():\n    pytest.skip('no dummy_hcd here')\n"
        "@pytest.mark.xfail(reason='known')\ndef test_xfails():\n    assert False\n")
    junit = tmp_path / "junit.xml"
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path),
                        f"--junitxml={junit}"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr          # skips keep the exit status 0: only the file tells
    skips = junit_skips(junit)
    assert len(skips) == 2, skips
    assert any("test_skips" in s and "no dummy_hcd here" in s for s in skips), skips
    assert any("test_xfails" in s for s in skips), skips


def test_junit_without_test_cases_or_missing_is_an_error(tmp_path):
    empty = tmp_path / "junit.xml"
    empty.write_text('<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="0"/></testsuites>')
    with pytest.raises(AssertionError, match="no test case"):
        junit_skips(empty)
    with pytest.raises(AssertionError, match="no readable"):
        junit_skips(tmp_path / "absent.xml")
