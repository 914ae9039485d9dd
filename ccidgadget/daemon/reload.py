# SPDX-License-Identifier: GPL-3.0-or-later
"""What a reload does, decided without doing it: `plan(old, new)` is pure, the daemon executes the plan.

- What the host only learns by enumerating the device again (identity, UDC, gadget name, dwMaxCCIDMessage-
  Length, kernel functions, the number of slots) re-enumerates: the reader leaves the bus and comes back
  with the new configuration (`reenumerate` names what changed).
- Otherwise every slot whose spec changed has its engine swapped in place while the host stays connected
  (`replace`); an emulated slot also when the state directory moved.
- A change of [presence] (buttons, LED, timeouts) restarts the presence sources in place; [pinpad] is in
  the descriptor (bPINSupport), so it re-enumerates.
- The log level and the control socket's group apply at once; the runtime directory (FunctionFS mount and
  control socket) stays until the next restart (`notes` say so).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..options import DaemonOptions, Engine


@dataclass(frozen=True)
class ReloadPlan:
    #: the options to run with from now on (the old runtime_dir kept)
    options: DaemonOptions
    #: what changed that needs a re-enumeration, in words ("identity", "number of slots"); empty: in place
    reenumerate: tuple[str, ...]
    #: slots whose engine is swapped in place (empty when re-enumerating: every slot is new then)
    replace: tuple[int, ...]
    log_level: str | None = None             # set when it changed
    control_group_changed: bool = False
    #: [presence] changed (in place: the presence sources restart, cards get their new presence)
    board_changed: bool = False
    notes: tuple[str, ...] = ()

    @property
    def in_place(self) -> bool:
        return not self.reenumerate


def plan(old: DaemonOptions, new: DaemonOptions) -> ReloadPlan:
    notes = []
    if new.runtime_dir != old.runtime_dir:
        notes.append(f"runtime_dir stays {old.runtime_dir} until the next restart")
        new = new.copy()
        new.runtime_dir = old.runtime_dir
    log_level = new.log_level if new.log_level != old.log_level else None
    if log_level:
        notes.append(f"log level {log_level}")
    group_changed = new.control_group != old.control_group
    if group_changed:
        notes.append(f"control socket group {new.control_group or 'root only'}")
    old_key, new_key = old.gadget_key(), new.gadget_key()
    reenumerate = tuple(name for name in new_key if old_key[name] != new_key[name])
    replace: tuple[int, ...] = ()
    board_changed = not reenumerate and new.board != old.board
    if board_changed:
        notes.append("presence sources restarted")
    if not reenumerate:
        state_dir_moved = new.state_dir != old.state_dir
        replace = tuple(slot for slot, (a, b) in enumerate(zip(old.slots, new.slots))
                        if a != b or (state_dir_moved and b.engine is Engine.EMULATED))
    return ReloadPlan(options=new, reenumerate=reenumerate, replace=replace, log_level=log_level,
                      control_group_changed=group_changed, board_changed=board_changed, notes=tuple(notes))
