"""The emulated CAC card (``--card emulated --type cac``), libcacard's card in Python."""

from .card import DEFAULT_PIN, CacCard
from .material import CAC_LABELS, CacCredential, CacMaterialError, load_cac_material



def build_card(spec, context) -> CacCard:
    """`--card emulated --type cac` (options.CARD_TYPES)."""
    return CacCard.from_sources(context.card_dir(spec), certs=spec.certs, db=spec.db, inserted=spec.inserted,
                                pin=context.read_secret(spec.pin_file, "pin_file"),
                                db_password=context.read_secret(spec.db_password_file, "db_password_file"),
                                options=context.vault_options())


__all__ = ["CacCard", "CacCredential", "CacMaterialError", "CAC_LABELS", "DEFAULT_PIN", "load_cac_material"]
