# ccidgadget — developer entry points.  Every target does its own set-up.
#
#   make test    all tests: unit, property/fuzz (bounded), and end-to-end in a QEMU guest
#                (first the unit suite on Debian 12's own python3-cryptography 38.0.4: make test-deb12)
#   make demo    the daemon on its default emulated card, and what the host side sees
#   make bench   speed and memory figures
#   make fuzz    a long coverage-guided fuzzing run
#   make deb     build/deb/ccidgadget_VERSION_all.deb (Debian 12 / Raspberry Pi OS, every architecture), lintian
#   make install / make uninstall   (see docs/service.md)

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PYTEST_ARGS ?=

APT_PACKAGES := python3-venv python3-dev gcc pkg-config libaio1 libpcsclite-dev libsystemd-dev \
	qemu-system-x86 busybox-static kmod cpio xz-utils iproute2 usbutils \
	pcscd libccid opensc pcsc-tools vsmartcard-vpcd vsmartcard-vpicc python3-virtualsmartcard \
	yubico-piv-tool libnss3-tools openssl openssh-client systemd \
	python3-cryptography python3-pyscard python3-systemd groff-base debhelper dh-python lintian \
	swtpm swtpm-tools tpm2-tools libtss2-tcti-swtpm0 \
	scdaemon gnupg git \
	qemu-system-arm qemu-user-static binfmt-support debootstrap e2fsprogs util-linux

.PHONY: deps venv vm test test-unit test-vm test-deb12 deb demo bench fuzz clean

# System packages (Debian 12).  Skipped quietly when everything is there.
deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		if [ "$$(id -u)" != 0 ]; then SUDO=sudo; fi; \
		$$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends $$missing; \
	fi

$(PY): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,pcsc,systemd,presence]'
	@touch $(PY)

venv: deps $(PY)

# The guest kernel (Debian's 6.12 with dummy_hcd) and the initramfs, cached in .cache/vm; then, side
# by side, the arm64 guest (kernel + a Debian arm64 root image) and the armhf chroot of the 32-bit
# unit run (tests/vm/rootfs.py; several minutes the first time).  If those cannot be built here
# (no binfmt_misc...) their tests say why (and fail in CI).
vm: deps
	$(PYTHON) -m tests.vm.testbed prepare
	@$(PYTHON) -m tests.vm.testbed prepare --flavour arm64 & arm64=$$!; \
	$(PYTHON) -m tests.vm.rootfs prepare armhf || echo "armhf chroot not prepared: tests/test_arm32.py will say why"; \
	wait $$arm64 || echo "arm64 guest not prepared: test_e2e_arm64 will say why"

test: venv vm test-deb12
	$(PY) -m pytest $(PYTEST_ARGS)

# The unit suite on what Debian 12 / Raspberry Pi OS bookworm ship: Debian's /usr/bin/python3 with
# python3-cryptography (38.0.4: no PyPI wheels for 32-bit ARM), python3-pyscard and python3-systemd,
# in a --system-site-packages venv that adds only what Debian lacks (functionfs, libaio, ioctl-opt,
# pytest, hypothesis) from PyPI.  pip resolving pyproject's requirements against Debian's versions is
# part of the check; the versions actually imported are checked before the run.  tests/packaging runs
# /usr/bin/python3 itself and builds the .deb: once, in the main run.
DEB12_VENV ?= .cache/deb12-venv
DEB12_PY   := $(DEB12_VENV)/bin/python
DEBIAN_CRYPTOGRAPHY ?= 38.0.4

$(DEB12_PY): pyproject.toml
	/usr/bin/python3 -m venv --system-site-packages $(DEB12_VENV)
	$(DEB12_PY) -m pip install -q -e '.[test,pcsc,systemd]'
	@touch $(DEB12_PY)

test-deb12: deps $(DEB12_PY)
	$(DEB12_PY) -c 'import sys, cryptography, smartcard, systemd; \
		print("Debian 12 run: cryptography", cryptography.__version__, "from", cryptography.__file__); \
		mods = (cryptography, smartcard, systemd); \
		bad = [m.__name__ for m in mods if not m.__file__.startswith("/usr/lib/python3/dist-packages/")]; \
		sys.exit(f"not Debian'"'"'s: {bad}" if bad else \
			 None if cryptography.__version__ == "$(DEBIAN_CRYPTOGRAPHY)" else "expected $(DEBIAN_CRYPTOGRAPHY)")'
	$(DEB12_PY) -m pytest -m 'not vm' -q -p no:cacheprovider --ignore=tests/packaging $(PYTEST_ARGS)

test-unit: venv
	$(PY) -m pytest -m 'not vm' $(PYTEST_ARGS)

test-vm: venv vm
	$(PY) -m pytest -m vm $(PYTEST_ARGS)

demo: venv vm
	$(PY) scripts/demo.py

bench: venv vm
	$(PY) scripts/bench.py

fuzz: venv
	$(PY) scripts/fuzz.py --long

# The Debian package (debian/, scripts/build_deb.py): Debian's python3-cryptography/pyscard/systemd,
# python-functionfs, python-libaio and ioctl-opt shipped inside; lintian's verdict is printed.
deb: deps
	$(SYS_PYTHON) scripts/build_deb.py

clean:
	rm -rf $(VENV) .cache build *.egg-info .pytest_cache .hypothesis

# ---------------------------------------------------------------------------------------------
# make install / make uninstall: the daemon as a systemd service on Debian 12 / Raspberry Pi OS
# (bookworm).  See docs/service.md.  Run as root.  The package goes into its own venv under
# INSTALL_DIR, made from Debian's python3 with --system-site-packages so that Debian's
# python3-systemd, python3-pyscard and python3-cryptography are used instead of being rebuilt.
# The configuration (CONF_DIR) and the cards' state (/var/lib/ccidgadget) survive uninstall.
INSTALL_DIR ?= /opt/ccidgadget
CONF_DIR    ?= /etc/ccidgadget
UNIT_DIR    ?= /etc/systemd/system
MODULES_CONF ?= /etc/modules-load.d/ccidgadget.conf
BIN_LINK    ?= /usr/local/bin/ccidgadget
SYS_PYTHON  ?= /usr/bin/python3
ENABLE      ?= 0
# pip comes from Debian's python3-pip through --system-site-packages (no ensurepip: minutes on a Pi Zero).
# PIP_INSTALL_ARGS: e.g. --no-index --find-links=DIR on a board without network; PIP_PACKAGE: what to
# install, this checkout by default, or a wheel built from it (tests/e2e/test_package.py does both).
PIP_INSTALL_ARGS ?=
PIP_PACKAGE ?= .
RUNTIME_APT := python3-venv python3-pip python3-systemd python3-pyscard python3-cryptography pcscd

.PHONY: install uninstall

install:
	@test "$$(id -u)" = 0 || { echo "make install must run as root (sudo make install)"; exit 1; }
	@missing=$$(for p in $(RUNTIME_APT); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	aio=$$(apt-cache show libaio1t64 >/dev/null 2>&1 && echo libaio1t64 || echo libaio1); \
	dpkg-query -W -f='$${Status}\n' $$aio 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$aio"; \
	if [ -n "$$missing" ]; then echo "apt-get install$$missing"; apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; fi
	test -x $(INSTALL_DIR)/venv/bin/python || $(SYS_PYTHON) -m venv --system-site-packages --without-pip $(INSTALL_DIR)/venv
	$(INSTALL_DIR)/venv/bin/python -m pip install -q --upgrade $(PIP_INSTALL_ARGS) $(PIP_PACKAGE)
	install -d -m 0755 $(INSTALL_DIR)/docs
	install -m 0644 docs/service.md $(INSTALL_DIR)/docs/service.md
	ln -sfn $(INSTALL_DIR)/venv/bin/ccidgadget $(BIN_LINK)
	install -d -m 0755 $(CONF_DIR)
	install -m 0644 etc/ccidgadget.toml.example $(CONF_DIR)/ccidgadget.toml.example
	@if [ -e $(CONF_DIR)/ccidgadget.toml ]; then echo "kept your $(CONF_DIR)/ccidgadget.toml"; \
	else install -m 0644 etc/ccidgadget.toml.example $(CONF_DIR)/ccidgadget.toml && \
		echo "installed $(CONF_DIR)/ccidgadget.toml (every key commented out: the defaults)"; fi
	install -m 0644 systemd/ccidgadget.service $(UNIT_DIR)/ccidgadget.service
	@if grep -qs 'Raspberry Pi' /proc/device-tree/model; then \
		printf '# ccidgadget: the Pi'"'"'s USB device controller and the configfs gadget framework\ndwc2\nlibcomposite\n' > $(MODULES_CONF); \
		cfg=/boot/firmware/config.txt; [ -e $$cfg ] || cfg=/boot/config.txt; \
		grep -qs '^dtoverlay=dwc2' $$cfg || echo "NOTE: add the line 'dtoverlay=dwc2' to $$cfg (under [all]) and reboot: see docs/service.md"; \
	else printf '# ccidgadget: the configfs gadget framework\nlibcomposite\n' > $(MODULES_CONF); fi
	@echo "wrote $(MODULES_CONF)"
	-modprobe libcomposite 2>/dev/null
	-systemctl daemon-reload
	$(BIN_LINK) check-config --config $(CONF_DIR)/ccidgadget.toml
	@if [ "$(ENABLE)" = 1 ]; then systemctl enable --now ccidgadget; \
	else echo "next: edit $(CONF_DIR)/ccidgadget.toml, then: systemctl enable --now ccidgadget"; fi

uninstall:
	@test "$$(id -u)" = 0 || { echo "make uninstall must run as root (sudo make uninstall)"; exit 1; }
	-systemctl disable --now ccidgadget 2>/dev/null
	-[ -x $(INSTALL_DIR)/venv/bin/ccidgadget ] && $(INSTALL_DIR)/venv/bin/ccidgadget cleanup
	rm -f $(UNIT_DIR)/ccidgadget.service $(MODULES_CONF) $(BIN_LINK)
	rm -rf $(INSTALL_DIR)
	-systemctl daemon-reload
	@echo "kept $(CONF_DIR) (configuration) and /var/lib/ccidgadget (emulated cards' keys and PINs);"
	@echo "remove them by hand if you mean to: rm -r $(CONF_DIR) /var/lib/ccidgadget"
