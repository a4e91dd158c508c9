"""Entry point: python -m pkcs11_kms.emulator [--host H] [--port P] [--tls-cert C --tls-key K]."""

import sys

from .server import main

sys.exit(main())
