#!/usr/bin/python3 -I
# ccidgadget: the package keeps its modules and the pure-Python libraries Debian lacks
# (python-functionfs, python-libaio, ioctl-opt) in /usr/share/ccidgadget.
import sys

sys.path.insert(0, "/usr/share/ccidgadget")
from ccidgadget.cli import main  # noqa: E402

sys.exit(main())
