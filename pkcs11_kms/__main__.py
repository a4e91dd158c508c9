"""`python -m pkcs11_kms` is the `pkcs11-kms` command."""

import sys

from .cli import main

sys.exit(main())
