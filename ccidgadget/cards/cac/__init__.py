"""The emulated CAC card (``--card emulated --type cac``), libcacard's card in Python."""

from .card import DEFAULT_PIN, CacCard
from .material import CAC_LABELS, CacCredential, CacMaterialError, load_cac_material

__all__ = ["CacCard", "CacCredential", "CacMaterialError", "CAC_LABELS", "DEFAULT_PIN", "load_cac_material"]
