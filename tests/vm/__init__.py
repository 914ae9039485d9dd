# SPDX-License-Identifier: GPL-3.0-or-later
"""QEMU test bed for the end-to-end tests (see ``tests/vm/testbed.py``)."""
