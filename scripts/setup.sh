#!/usr/bin/env bash
# Installs what pkcs11-kms needs to build and test on Debian 12: system packages (the consumers the
# tests drive), a virtual environment in .venv, and the package with its library built. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

# The module's build: gcc (cffi compiles it), python3-dev and python3-venv (Debian's Python, where
# no other python3 comes first on PATH). The consumers the tests drive: openssl and
# libengine-pkcs11-openssl (libp11's engine), curl, opensc (pkcs11-tool), gnutls-bin (p11tool,
# certtool, gnutls-serv/cli), libnss3-tools (modutil, certutil, selfserv, tstclnt), firefox-esr,
# p11-kit (its proxy module), openjdk-17-jdk-headless (keytool, jarsigner), openssh-client and
# openssh-server, nginx, osslsigncode.
PACKAGES=(
  gcc libc6-dev python3-dev python3-venv openssl libengine-pkcs11-openssl curl opensc gnutls-bin libnss3-tools
  firefox-esr p11-kit openjdk-17-jdk-headless openssh-client openssh-server nginx osslsigncode
)

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
