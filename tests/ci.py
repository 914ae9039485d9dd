# SPDX-License-Identifier: GPL-3.0-or-later
"""Are we in CI?  The one place the tests read the ``CI`` environment variable.

CI services and people spell a true ``CI`` differently (``true``, ``True``, ``1``, ``yes``, ``on``); any
of them means CI, so a test that cannot run fails there instead of skipping.  ``.ci/run`` exports
``CI=true`` unless ``CI`` is set already.

Standard library only: tests/vm/testbed.py and the guest side import it too.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Mapping, NoReturn

#: Values of ``CI`` that mean "this is a CI run" (compared case-insensitively, blanks stripped).
TRUTHY = frozenset({"1", "true", "yes", "on"})


def in_ci(environ: Mapping[str, str] | None = None) -> bool:
    value = (os.environ if environ is None else environ).get("CI", "")
    return value.strip().lower() in TRUTHY


def skip_or_fail(reason: str, *, allow_module_level: bool = False) -> NoReturn:
    """Skip with ``reason`` outside CI; fail with it in CI (a check that cannot run is a defect there)."""
    import pytest

    if in_ci():
        pytest.fail(f"cannot run in CI: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=allow_module_level)


def junit_skips(junit: Path) -> list[str]:
    """``test id: reason`` of every skipped (or xfailed) test case in the guest's junit.xml.

    The exit status of the guest's pytest is 0 when tests skip, so only this file shows them.
    Raises AssertionError when the file is missing or records no test case at all.
    """
    try:
        root = ET.parse(junit).getroot()
    except (OSError, ET.ParseError) as e:
        raise AssertionError(f"the guest's pytest left no readable {junit.name} ({e})") from None
    cases = list(root.iter("testcase"))
    if not cases:
        raise AssertionError(f"{junit.name} records no test case: the guest ran nothing")
    skips = []
    for case in cases:
        for skipped in case.findall("skipped"):
            name = f"{case.get('classname', '')}::{case.get('name', '')}"
            skips.append(f"{name}: {skipped.get('message') or skipped.get('type') or 'skipped'}")
    return skips
