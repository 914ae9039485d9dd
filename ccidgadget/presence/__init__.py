# SPDX-License-Identifier: GPL-3.0-or-later
"""User presence (touch) and PIN entry on the board: buttons, keypads, LEDs (docs/presence.md).

- `hub`: touch waits between a card's worker thread and the loop's sources;
- `pinpad`: PIN entry for PC_to_RDR_Secure (keypad state machine, control socket);
- `inputkeys` (python-evdev), `gpio` (GPIO character device uAPI v2), `led`: the hardware;
- `config`: the [presence] and [pinpad] tables; `service`: what the daemon runs.
"""
