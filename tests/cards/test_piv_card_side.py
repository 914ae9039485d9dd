# SPDX-License-Identifier: GPL-3.0-or-later
"""The PIV applet's seam to its card: `PivCardSide` lists all the applet asks of its card, and `PivCard` has it."""

from __future__ import annotations

import ast
import inspect
import typing

from ccidgadget.cards import applet as applet_module
from ccidgadget.cards import pin
from ccidgadget.cards.piv import applet as piv_module
from ccidgadget.cards.piv import PivCard
from ccidgadget.cards.piv.applet import PivApplet, PivCardSide


def _members(protocol) -> set[str]:
    names: set[str] = set()
    for cls in protocol.__mro__:
        if cls is not typing.Protocol and cls is not object and issubclass(cls, typing.Protocol):
            names |= set(vars(cls).get("__annotations__", {}))     # unevaluated: types only for checkers
            names |= {n for n, v in vars(cls).items() if callable(v) and not n.startswith("_")}
    return names


def _card_uses(module, class_name: str) -> set[str]:
    """Attributes read or written on `self.card` (or a local `card = self.card`) in the class's methods."""
    tree = ast.parse(inspect.getsource(module))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name)
    used = set()
    for node in ast.walk(cls):
        if not isinstance(node, ast.Attribute):
            continue
        v = node.value
        if (isinstance(v, ast.Attribute) and v.attr == "card" and isinstance(v.value, ast.Name)
                and v.value.id == "self") or (isinstance(v, ast.Name) and v.id == "card"):
            used.add(node.attr)
    return used


def test_the_applet_asks_only_what_the_protocol_lists():
    members = _members(PivCardSide)
    used = _card_uses(piv_module, "PivApplet") | _card_uses(applet_module, "StatefulApplet")
    assert used, "the walk found no use of the card: it looks in the wrong place"
    assert used <= members, f"the PIV applet uses {sorted(used - members)} of its card beyond PivCardSide"
    assert members <= used, f"PivCardSide lists {sorted(members - used)}, which the applet never uses"


def test_piv_card_implements_the_protocol(tmp_path, monkeypatch):
    monkeypatch.setattr(pin, "SCRYPT_N", 2 ** 4)
    card = PivCard.from_directory(tmp_path / "piv")
    missing = [name for name in _members(PivCardSide) if not hasattr(card, name)]
    assert not missing, f"PivCard lacks {missing}"
    assert isinstance(card.applet, PivApplet) and card.applet.card is card
