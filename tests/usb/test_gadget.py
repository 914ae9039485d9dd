# SPDX-License-Identifier: GPL-3.0-or-later
"""configfs gadget management against a fake configfs/UDC tree (no kernel needed).

What the real configfs does is proven in the VM tests; these check the
decisions: which UDC, refusing a UDC that another gadget owns, the messages.
"""

from __future__ import annotations

import os

import pytest

from tests.ci import in_ci

from ccidgadget.usb.descriptors import ccid_descriptors
from ccidgadget.usb.gadget import PRESETS, ConfigfsGadget, GadgetError, Identity, board_serial
from ccidgadget.ccid import ClassDescriptor, Reader, ReaderConfig

pytestmark = pytest.mark.skipif(os.geteuid() != 0 and not in_ci(),
                                reason="not root: preflight refuses non-root first (CI runs as root)")


def make(tmp_path, udcs=("dummy_udc.0",), others=None, **kw):
    configfs = tmp_path / "config"
    (configfs / "usb_gadget").mkdir(parents=True)
    udc_class = tmp_path / "udc"
    udc_class.mkdir()
    for u in udcs:
        (udc_class / u).mkdir()
    for name, udc in (others or {}).items():
        (configfs / "usb_gadget" / name).mkdir()
        (configfs / "usb_gadget" / name / "UDC").write_text(udc + "\n")
    return ConfigfsGadget(identity=Identity(0x1209, 0x2702), configfs=configfs, udc_class=udc_class,
                          runtime_dir=tmp_path / "run", **kw)


def test_the_only_udc_is_picked(tmp_path):
    assert make(tmp_path).preflight() == "dummy_udc.0"


def test_no_udc_says_how_to_get_one(tmp_path):
    with pytest.raises(GadgetError, match="modprobe dummy_hcd.*dtoverlay=dwc2"):
        make(tmp_path, udcs=()).preflight()


def test_several_udcs_need_a_choice(tmp_path):
    with pytest.raises(GadgetError, match="several UDCs.*--udc"):
        make(tmp_path, udcs=("a.usb", "b.usb")).preflight()
    assert make(tmp_path / "x", udcs=("a.usb", "b.usb"), udc="b.usb").preflight() == "b.usb"


def test_unknown_udc_lists_the_available_ones(tmp_path):
    with pytest.raises(GadgetError, match="no UDC named 'fe980000.usb'; available: dummy_udc.0"):
        make(tmp_path, udc="fe980000.usb").preflight()


def test_a_udc_owned_by_another_gadget_is_never_taken(tmp_path):
    g = make(tmp_path, others={"g_ether": "dummy_udc.0"})
    with pytest.raises(GadgetError, match="in use by the gadget .*g_ether.*will not take it over"):
        g.preflight()
    assert (tmp_path / "config" / "usb_gadget" / "g_ether" / "UDC").read_text().strip() == "dummy_udc.0"


def test_missing_configfs_says_what_to_load(tmp_path, monkeypatch):
    g = make(tmp_path)
    (tmp_path / "config" / "usb_gadget").rmdir()
    monkeypatch.setattr(ConfigfsGadget, "_try", staticmethod(lambda argv: None))
    with pytest.raises(GadgetError, match="modprobe libcomposite"):
        g.preflight()


def test_board_serial_is_stable_and_hides_the_machine_id():
    s = board_serial()
    assert s == board_serial() and len(s) == 16
    try:
        machine_id = open("/etc/machine-id").read().strip()
    except OSError:
        machine_id = ""
    assert not machine_id or s.lower() not in machine_id


def test_presets_are_distinct_pairs():
    pairs = [(vid, pid) for vid, pid, _ in PRESETS.values()]
    assert len(set(pairs)) == len(pairs)


@pytest.mark.parametrize("slots", [1, 8])
def test_functionfs_descriptors_carry_the_54_byte_class_descriptor(slots):
    import functionfs
    fs, hs, ss = ccid_descriptors(Reader(ReaderConfig(slots=slots)).descriptor)
    for speed in (fs, hs, ss):
        blobs = [bytes(functionfs.serialise(d)) for d in speed]
        assert blobs[0][1] == 4 and blobs[0][5] == 0x0B          # interface, class 0x0B
        assert blobs[1][:2] == bytes((54, 0x21))                 # class descriptor right after it
        assert blobs[1] == Reader(ReaderConfig(slots=slots)).descriptor.to_bytes()
        endpoints = [b for b in blobs if b[1] == 5]
        assert [(e[2] & 0x80, e[3] & 3) for e in endpoints] == [(0, 2), (0x80, 2), (0x80, 3)]
    assert isinstance(Reader().descriptor, ClassDescriptor)
