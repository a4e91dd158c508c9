"""The `pkcs11-kms` subcommands (keys, doctor, emulator, tsa); the module never imports this."""
