"""Front ends that offer a ccidgadget card without the USB gadget.

`vpcd_client`: connect to pcscd's vpcd driver (vsmartcard) as a virtual card.
"""
