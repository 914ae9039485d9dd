# SPDX-License-Identifier: GPL-3.0-or-later
"""`ccidgadget doctor` against fake sysfs/configfs/boot trees: each mistake is found and its fix named."""

from __future__ import annotations

import os

import pytest

from ccidgadget import cli
from ccidgadget.doctor import Doctor, Status, System, format_findings, main_doctor

PI_ZERO = "Raspberry Pi Zero W Rev 1.1"
RELEASE = "6.6.51+rpt-rpi-v6"
UID = os.geteuid()


def board(root, *, model=PI_ZERO, udcs=("20980000.usb",), configfs=True, modules=("libcomposite", "dwc2"),
          boot_modules=("libcomposite", "dwc2"), config_txt="[all]\ndtoverlay=dwc2\n", gadgets=None,
          udc_state="configured", functionfs_in_kernel=True, config=None):
    """A fake board under `root`; returns the System the doctor reads it through."""
    def write(path, text):
        f = root / path.lstrip("/")
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)

    if model:
        write("/proc/device-tree/model", model + "\0")
    for u in udcs:
        write(f"/sys/class/udc/{u}/state", udc_state + "\n")
    (root / "sys/class/udc").mkdir(parents=True, exist_ok=True)
    mounts = "sysfs /sys sysfs rw 0 0\nproc /proc proc rw 0 0\n"
    if configfs:
        mounts += "configfs /sys/kernel/config configfs rw,relatime 0 0\n"
    write("/proc/mounts", mounts)
    write("/proc/cmdline", "console=serial0,115200 root=PARTUUID=1234-02 rootwait\n")
    for m in modules:
        (root / "sys/module" / m).mkdir(parents=True, exist_ok=True)
    if configfs and "libcomposite" in modules:
        (root / "sys/kernel/config/usb_gadget").mkdir(parents=True, exist_ok=True)
    write("/etc/modules-load.d/ccidgadget.conf", "# ccidgadget\n" + "".join(f"{m}\n" for m in boot_modules))
    if config_txt is not None:
        # the tail of Raspberry Pi OS bookworm's own config.txt, then the test's lines
        write("/boot/firmware/config.txt", "# For more options, see http://rptl.io/configtxt\n"
                                           "dtparam=audio=on\n[cm4]\notg_mode=1\n\n"
                                           "[cm5]\ndtoverlay=dwc2,dr_mode=host\n\n" + config_txt)
    dep = "kernel/drivers/usb/gadget/function/usb_f_fs.ko.xz: kernel/drivers/usb/gadget/libcomposite.ko.xz\n"
    write(f"/lib/modules/{RELEASE}/modules.dep", dep if functionfs_in_kernel else "kernel/fs/9p/9p.ko.xz:\n")
    for name, udc in (gadgets or {}).items():
        write(f"/sys/kernel/config/usb_gadget/{name}/UDC", udc + "\n")
    if config is not None:
        write("/etc/ccidgadget/ccidgadget.toml", config)
    return System(root, kernel_release=RELEASE, euid=0, service_uid=UID)


def by_check(findings):
    out = {}
    for f in findings:
        out.setdefault(f.check, []).append(f)
    return out


def statuses(findings):
    return {f.check: f.status for f in findings}


def failed(findings):
    return [f for f in findings if f.status is Status.FAIL]


def test_a_ready_pi_zero_passes(tmp_path, capsys):
    system = board(tmp_path)
    findings = Doctor(system).run()
    assert not failed(findings), format_findings(findings)
    assert not [f for f in findings if f.status is Status.WARN], format_findings(findings)
    st = statuses(findings)
    assert st["udc"] is Status.OK and st["dwc2"] is Status.OK and st["configfs"] is Status.OK
    assert main_doctor([], system) == 0
    assert "everything looks right" in capsys.readouterr().out


def test_fresh_raspberry_pi_os_image_needs_the_dwc2_overlay(tmp_path, capsys):
    system = board(tmp_path, udcs=(), modules=("libcomposite",), boot_modules=(), config_txt="[all]\n")
    findings = Doctor(system).run()
    dwc2 = by_check(findings)["dwc2"][0]
    assert dwc2.status is Status.FAIL and "no 'dtoverlay=dwc2' in /boot/firmware/config.txt" in dwc2.summary
    assert "add the line dtoverlay=dwc2 under [all]" in dwc2.fix and "reboot" in dwc2.fix
    assert by_check(findings)["udc"][0].status is Status.FAIL
    assert main_doctor([], system) == 1
    out = capsys.readouterr().out
    assert "fix: add the line dtoverlay=dwc2" in out and "problem(s)" in out


@pytest.mark.parametrize("config_txt", ["#dtoverlay=dwc2\n", "[none]\ndtoverlay=dwc2\n"])
def test_a_commented_or_disabled_overlay_does_not_count(tmp_path, config_txt):
    findings = Doctor(board(tmp_path, udcs=(), modules=("libcomposite",), config_txt=config_txt)).run()
    assert by_check(findings)["dwc2"][0].status is Status.FAIL


def test_a_compute_module_5_line_is_not_for_a_pi_4(tmp_path):
    # bookworm's config.txt has [cm5] dtoverlay=dwc2,dr_mode=host: a CM5 gets a host port, a Pi 4 does not
    findings = Doctor(board(tmp_path, model="Raspberry Pi 4 Model B Rev 1.4", udcs=(), config_txt="[all]\n")).run()
    f = by_check(findings)["dwc2"][0]
    assert f.status is Status.FAIL and "no 'dtoverlay=dwc2'" in f.summary
    findings = Doctor(board(tmp_path / "cm5", model="Raspberry Pi Compute Module 5 Rev 1.0", udcs=(),
                            config_txt="[all]\n")).run()
    assert "makes the port a host" in by_check(findings)["dwc2"][0].summary
    findings = Doctor(board(tmp_path / "pi4", model="Raspberry Pi 4 Model B Rev 1.4", udcs=(),
                            config_txt="[pi4]\ndtoverlay=dwc2,dr_mode=peripheral\n[all]\n")).run()
    assert by_check(findings)["dwc2"][0].status is Status.OK       # [pi4] applies to a Pi 4


def test_overlay_in_host_mode(tmp_path):
    findings = Doctor(board(tmp_path, udcs=(), config_txt="[all]\ndtoverlay=dwc2,dr_mode=host\n")).run()
    f = by_check(findings)["dwc2"][0]
    assert f.status is Status.FAIL and "makes the port a host" in f.summary and "dr_mode=peripheral" in f.fix


def test_overlay_set_but_driver_not_loaded(tmp_path):
    findings = Doctor(board(tmp_path, udcs=(), modules=("libcomposite",))).run()
    f = by_check(findings)["dwc2"][0]
    assert f.status is Status.FAIL and "modprobe dwc2" in f.fix


def test_dwc2_needs_no_modules_load_entry(tmp_path):
    # udev loads dwc2 for the overlay's device-tree node: only libcomposite must be listed
    system = board(tmp_path, boot_modules=("libcomposite",))
    assert statuses(Doctor(system).run())["dwc2"] is Status.OK


def test_a_pi_3_model_b_has_no_device_port(tmp_path):
    findings = Doctor(board(tmp_path, model="Raspberry Pi 3 Model B Plus Rev 1.3", udcs=())).run()
    f = by_check(findings)["raspberry-pi"][0]
    assert f.status is Status.FAIL and "behind a hub chip" in f.summary


def test_pi_4_is_not_mistaken_for_a_model_b_without_device_port(tmp_path):
    findings = Doctor(board(tmp_path, model="Raspberry Pi 4 Model B Rev 1.4", udcs=("fe980000.usb",))).run()
    assert "raspberry-pi" not in statuses(findings) and statuses(findings)["dwc2"] is Status.OK


def test_configfs_not_mounted_and_libcomposite_missing(tmp_path):
    findings = Doctor(board(tmp_path, model=None, udcs=("dummy_udc.0",), configfs=False, modules=())).run()
    st = by_check(findings)
    assert st["configfs"][0].status is Status.FAIL and "mount -t configfs" in st["configfs"][0].fix
    assert st["libcomposite"][0].status is Status.FAIL and "modprobe libcomposite" in st["libcomposite"][0].fix


def test_libcomposite_loaded_but_not_at_boot(tmp_path):
    system = board(tmp_path, boot_modules=("dwc2",))
    findings = Doctor(system).run()
    f = by_check(findings)["libcomposite"][0]
    assert f.status is Status.WARN and "/etc/modules-load.d/ccidgadget.conf" in f.fix
    assert main_doctor([], system) == 0       # works now: a warning does not fail


def test_modules_load_on_the_kernel_command_line_counts(tmp_path):
    system = board(tmp_path, boot_modules=())
    (tmp_path / "boot/firmware/cmdline.txt").write_text("console=tty1 rootwait modules-load=dwc2,libcomposite\n")
    st = statuses(Doctor(system).run())
    assert st["libcomposite"] is Status.OK and st["dwc2"] is Status.OK


def test_kernel_without_functionfs(tmp_path):
    findings = Doctor(board(tmp_path, functionfs_in_kernel=False)).run()
    f = by_check(findings)["functionfs"][0]
    assert f.status is Status.FAIL and "CONFIG_USB_CONFIGFS_F_FS" in f.summary


def test_a_pc_without_udc_is_told_about_dummy_hcd(tmp_path):
    findings = Doctor(board(tmp_path, model=None, udcs=(), config_txt=None)).run()
    f = by_check(findings)["udc"][0]
    assert f.status is Status.FAIL and "modprobe dummy_hcd" in f.fix
    assert "dwc2" not in statuses(findings)


def test_another_gadget_owns_the_udc(tmp_path):
    findings = Doctor(board(tmp_path, gadgets={"pi-serial": "20980000.usb"})).run()
    [f] = by_check(findings)["other-gadget"]
    assert f.status is Status.FAIL and "'pi-serial' is bound to 20980000.usb" in f.summary
    assert "/sys/kernel/config/usb_gadget/pi-serial/UDC" in f.fix


def test_another_gadget_on_another_udc_is_only_a_note(tmp_path):
    config = '[gadget]\nudc = "b.usb"\n'
    findings = Doctor(board(tmp_path, model=None, config_txt=None, udcs=("a.usb", "b.usb"),
                            gadgets={"other": "a.usb"}, config=config)).run()
    assert statuses(findings)["other-gadget"] is Status.NOTE and not failed(findings), format_findings(findings)


def test_legacy_g_ether_holds_the_udc(tmp_path):
    findings = Doctor(board(tmp_path, modules=("libcomposite", "dwc2", "g_ether"))).run()
    f = [f for f in by_check(findings)["other-gadget"] if "g_ether" in f.summary][0]
    assert f.status is Status.FAIL and "rmmod g_ether" in f.fix and '"ncm"' in f.fix


def test_bound_but_no_host_points_at_the_data_port(tmp_path):
    findings = Doctor(board(tmp_path, gadgets={"ccidgadget": "20980000.usb"}, udc_state="not attached")).run()
    f = by_check(findings)["host"][0]
    assert f.status is Status.WARN and "data port" in f.fix and "PWR" in f.fix


def test_bound_and_configured(tmp_path):
    findings = Doctor(board(tmp_path, gadgets={"ccidgadget": "20980000.usb"})).run()
    assert by_check(findings)["host"][0].status is Status.OK and not failed(findings)


def test_several_udcs_and_a_missing_named_udc(tmp_path):
    findings = Doctor(board(tmp_path, model=None, config_txt=None, udcs=("a.usb", "b.usb"))).run()
    f = by_check(findings)["udc"][0]
    assert f.status is Status.FAIL and "several UDCs (a.usb, b.usb)" in f.summary
    findings = Doctor(board(tmp_path / "2", model=None, config_txt=None, udcs=("a.usb",),
                            config='[gadget]\nudc = "fe980000.usb"\n')).run()
    f = by_check(findings)["udc"][0]
    assert f.status is Status.FAIL and "'fe980000.usb' does not exist; there are: a.usb" in f.summary


def _state(root, mode=0o700):
    d = root / "var/lib/ccidgadget/cards/slot0-piv"
    d.mkdir(parents=True)
    (d / "state.json").write_text("{}")
    for p in (root / "var/lib/ccidgadget", root / "var/lib/ccidgadget/cards", d):
        p.chmod(0o700)
    (d / "state.json").chmod(0o600)
    return d


def test_state_directory_good(tmp_path):
    system = board(tmp_path)
    _state(tmp_path)
    f = by_check(Doctor(system).run())["state"][0]
    assert f.status is Status.OK, f


def test_state_directory_readable_by_others(tmp_path):
    system = board(tmp_path)
    d = _state(tmp_path)
    (d / "state.json").chmod(0o644)
    f = by_check(Doctor(system).run())["state"][0]
    assert f.status is Status.FAIL and "cards/slot0-piv/state.json has mode 0644" in f.summary
    assert "chmod -R go=" in f.fix


def test_state_directory_owned_by_someone_else(tmp_path):
    system = board(tmp_path)
    system.service_uid = UID + 1        # the service's uid is not the owner of these files
    _state(tmp_path)
    f = by_check(Doctor(system).run())["state"][0]
    assert f.status is Status.FAIL and f"belongs to uid {UID}" in f.summary and "chown -R root:root" in f.fix
    assert "sudo ccidgadget card" in f.fix


def test_state_directory_from_the_configuration(tmp_path):
    system = board(tmp_path, config='[daemon]\nstate_dir = "/srv/cards"\n')
    (tmp_path / "srv/cards").mkdir(parents=True)
    (tmp_path / "srv/cards").chmod(0o755)
    f = by_check(Doctor(system).run())["state"][0]
    assert f.status is Status.FAIL and "/srv/cards has mode 0755" in f.summary


def test_broken_configuration(tmp_path, capsys):
    system = board(tmp_path, config='[gadget]\nvid = "12g9"\n')
    findings = Doctor(system).run()
    f = by_check(findings)["configuration"][0]
    assert f.status is Status.FAIL and "gadget.vid: '12g9' is not a 16-bit hexadecimal number" in f.summary
    assert "ccidgadget check-config" in f.fix
    assert main_doctor([], system) == 1


def test_explicit_configuration_file(tmp_path):
    system = board(tmp_path)
    cfg = tmp_path / "other.toml"
    cfg.write_text('[[slot]]\nengine = "emulated"\ntype = "iso"\n')
    f = by_check(Doctor(system, cfg).run())["configuration"][0]
    assert f.status is Status.OK and f.summary == f"{cfg}: 1 slot(s): emulated iso"


def test_unlisted_vid_pid_warns_about_linux_hosts(tmp_path):
    f = by_check(Doctor(board(tmp_path, config='[gadget]\nidentity = "linux"\n')).run())["host-identity"][0]
    assert f.status is Status.WARN and "1d6b:0104" in f.summary and "Info.plist" in f.fix
    f = by_check(Doctor(board(tmp_path / "2")).run())["host-identity"][0]
    assert f.status is Status.NOTE and "1209:2702" in f.summary
    f = by_check(Doctor(board(tmp_path / "3", config='[gadget]\npid = 0x1234\n')).run())["host-identity"][0]
    assert f.status is Status.WARN and "1209:1234" in f.summary


def test_pcsc_slot_needs_pcscd(tmp_path):
    system = board(tmp_path, config='[[slot]]\nengine = "pcsc"\nreader = "Yubico"\n')
    f = by_check(Doctor(system).run())["pcsc"][0]
    assert f.status is Status.FAIL and "pcscd is not running" in f.summary and "pcscd.socket" in f.fix
    (tmp_path / "run/pcscd").mkdir(parents=True)
    (tmp_path / "run/pcscd/pcscd.comm").touch()
    assert by_check(Doctor(system).run())["pcsc"][0].status is Status.OK


def test_not_root_is_noted(tmp_path):
    system = board(tmp_path)
    system.euid = 1000
    assert statuses(Doctor(system).run())["privileges"] is Status.NOTE


def test_the_cli_verb(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["doctor", "--help"])
    assert e.value.code == 0
    assert "fix for each problem" in capsys.readouterr().out
