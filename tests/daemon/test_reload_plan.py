# SPDX-License-Identifier: GPL-3.0-or-later
"""`reload.plan(old, new)`: what a reload does, as a table (daemon/reload.py)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from ccidgadget.daemon.reload import plan
from ccidgadget.options import DaemonOptions, SlotSpec
from ccidgadget.usb.gadget import ExtraFunction

ISO = SlotSpec(type="iso")
PIV = SlotSpec(type="piv")
VPCD = SlotSpec(engine="vpcd")
BASE = DaemonOptions(slots=[ISO, PIV])


def changed(**kw) -> DaemonOptions:
    return replace(BASE, **kw)


@pytest.mark.parametrize("new,reenumerate,replaced", [
    (BASE, (), ()),
    (changed(slots=[ISO, VPCD]), (), (1,)),                                   # an engine swapped in place
    (changed(slots=[replace(ISO, inserted=False), PIV]), (), (0,)),           # a key of one slot
    (changed(slots=[PIV, ISO]), (), (0, 1)),                                  # both slots changed
    (changed(state_dir=Path("/srv/cards")), (), (0, 1)),                      # emulated cards move
    (changed(slots=[VPCD, VPCD], state_dir=Path("/srv")), (), (0, 1)),
    (DaemonOptions(slots=[VPCD, ISO], state_dir=Path("/srv")), (), (0, 1)),
    (changed(slots=[ISO]), ("number of slots",), ()),
    (changed(slots=[ISO, PIV, VPCD]), ("number of slots",), ()),
    (changed(identity="vmware"), ("identity",), ()),
    (changed(vid=0x1234), ("identity",), ()),
    (changed(product="Other"), ("identity",), ()),
    (changed(udc="fe980000.usb"), ("udc",), ()),
    (changed(gadget_name="other"), ("gadget name",), ()),
    (changed(max_message_length=4106), ("max_message_length",), ()),
    (changed(functions=[ExtraFunction("acm")]), ("functions",), ()),
    (changed(functions=[ExtraFunction("acm")], slots=[ISO]), ("functions", "number of slots"), ()),
    (changed(log_level="debug"), (), ()),
    (changed(control_group="root"), (), ()),
])
def test_plan(new, reenumerate, replaced):
    p = plan(BASE, new)
    assert p.reenumerate == reenumerate
    assert p.replace == replaced
    assert p.in_place is (not reenumerate)


def test_notes_and_what_applies_at_once():
    p = plan(BASE, changed(log_level="debug", control_group="root", runtime_dir=Path("/run/other")))
    assert p.log_level == "debug" and p.control_group_changed
    assert p.notes == ("runtime_dir stays /run/ccidgadget until the next restart", "log level debug",
                       "control socket group root")
    assert p.options.runtime_dir == BASE.runtime_dir and p.options.log_level == "debug"
    assert plan(BASE, BASE).notes == () and plan(BASE, BASE).log_level is None


def test_plan_is_pure():
    new = changed(runtime_dir=Path("/run/other"))
    before = new.copy()
    plan(BASE, new)
    assert new == before and new.runtime_dir == Path("/run/other")
