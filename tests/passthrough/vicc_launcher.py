"""Stand-in for /usr/bin/vicc when only the library is installed.

Debian's python3-virtualsmartcard carries the library, while the `vicc`
command is in vsmartcard-vpicc.  This accepts the vicc options the tests use
(-t/--type, -H/--hostname, -P/--port, -v) and runs the library's VirtualICC,
the class /usr/bin/vicc runs.
"""

import argparse
import logging

from virtualsmartcard.VirtualSmartcard import VirtualICC

p = argparse.ArgumentParser(prog="vicc")
p.add_argument("-t", "--type", default="iso7816")
p.add_argument("-H", "--hostname", default="localhost")
p.add_argument("-P", "--port", type=int, default=35963)
p.add_argument("-v", "--verbose", action="count", default=0)
a = p.parse_args()
level = logging.DEBUG if a.verbose else logging.WARNING
VirtualICC(None, a.type, a.hostname, a.port, logginglevel=level).run()
