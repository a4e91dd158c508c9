"""The abi layer: the only code that touches cffi objects (pointers in, CK_RV out)."""
