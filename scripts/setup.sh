#!/usr/bin/env bash
# Installs what pkcs11-kms needs to build and test on Debian 12: system packages (the consumers the
# tests drive), a virtual environment in .venv, and the package with its library built. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

# gcc: cffi compiles the module, the tests compile a C harness; openssl + libengine-pkcs11-openssl:
# libp11's engine; opensc: pkcs11-tool; gnutls-bin: p11tool, certtool; libnss3-tools: modutil,
# certutil; p11-kit: its proxy module.
PACKAGES=(gcc libc6-dev openssl libengine-pkcs11-openssl opensc gnutls-bin libnss3-tools p11-kit)

missing=()
for p in "${PACKAGES[@]}"; do
  [ -n "$p" ] || continue
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: ${missing[*]}"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
echo "module: $(.venv/bin/pkcs11-kms module-path)"
