# ccidgadget — developer entry points.  Every target does its own set-up.
#
#   make test    all tests: unit, property/fuzz (bounded), and end-to-end in a QEMU guest
#   make demo    the daemon on its default emulated card, and what the host side sees
#   make bench   speed and memory figures
#   make fuzz    a long coverage-guided fuzzing run
#   make install / make uninstall   (see docs/service.md)

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PYTEST_ARGS ?=

APT_PACKAGES := python3-venv python3-dev gcc pkg-config libaio1 libpcsclite-dev libsystemd-dev \
	qemu-system-x86 busybox-static kmod cpio xz-utils iproute2 usbutils \
	pcscd libccid opensc pcsc-tools vsmartcard-vpcd vsmartcard-vpicc python3-virtualsmartcard \
	yubico-piv-tool libnss3-tools openssl openssh-client systemd

.PHONY: deps venv vm test test-unit test-vm demo bench fuzz clean

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
	$(PY) -m pip install -q -e '.[test,pcsc,systemd]'
	@touch $(PY)

venv: deps $(PY)

# The guest kernel (Debian's 6.12 with dummy_hcd) and the initramfs, cached in .cache/vm.
vm: deps
	$(PYTHON) -m tests.vm.testbed prepare

test: venv vm
	$(PY) -m pytest $(PYTEST_ARGS)

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

clean:
	rm -rf $(VENV) .cache build *.egg-info .pytest_cache .hypothesis
