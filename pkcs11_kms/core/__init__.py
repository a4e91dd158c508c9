"""The core: module state, slots and tokens, sessions, objects and attributes. Never sees a pointer."""
