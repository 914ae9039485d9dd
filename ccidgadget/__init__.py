"""ccidgadget: a USB CCID smart-card reader, with the card inside, on a Linux USB device port."""

__version__ = "0.1.0"
