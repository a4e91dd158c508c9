"""A local AWS KMS emulator for tests and demos: moto's server with AWS KMS's asymmetric semantics.

Run it with ``python -m pkcs11_kms.emulator``; drive it from tests with
``pkcs11_kms.emulator.testing.EmulatorProcess``. The PKCS#11 module itself never imports this
package. Modules: specs (the key-spec and algorithm tables), crypto and ed25519ph (the
primitives), kms (moto overrides), faults (fault injection), server (the server and CLI),
testing (the subprocess helper) and tls (a throwaway test PKI).
"""
