"""Card engines whose card lives elsewhere: across the network or in a PC/SC reader.

- `vscard_server.VSCardServerCard`: a VSCard client (libcacard vscclient,
  spice) connects to us, as to QEMU's ccid-card-passthru.
- `vpcd_server.VpcdServerCard`: a vsmartcard vicc connects to us, as to vpcd.
- `pcsc.PcscCard`: a card in a reader of this machine's pcscd.

The wire formats are sans-I/O modules (`vscard`, `vpcd_protocol`) so that
they can be tested and fuzzed with bytes alone.
"""
