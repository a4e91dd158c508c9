#!/usr/bin/env bash
# Installs what pkcs11-kms needs to build and test on Debian 12 (bookworm) or Debian 13 (trixie):
# system packages (the consumers the tests drive), a virtual environment in .venv, and the package
# with its library built. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

# The module's build: gcc (cffi compiles it), python3-dev and python3-venv (Debian's Python, where
# no other python3 comes first on PATH). The consumers the tests drive: openssl and
# libengine-pkcs11-openssl (libp11's engine), pkcs11-provider (OpenSSL 3's provider), curl, opensc
# (pkcs11-tool, pkcs11-spy), gnutls-bin (p11tool, certtool, gnutls-serv/cli), libnss3-tools
# (modutil, certutil, selfserv, tstclnt), firefox-esr, p11-kit (its proxy module), a JDK (keytool,
# jarsigner), openssh-client and openssh-server, nginx, osslsigncode, softhsm2 (a second, ordinary
# module, and bench/run.py's reference), python3-pykcs11 (Debian's own Python as a host), strace,
# time (GNU time: bench/run.py's peak RSS).
PACKAGES=(
  gcc libc6-dev python3-dev python3-venv openssl libengine-pkcs11-openssl curl opensc gnutls-bin libnss3-tools
  firefox-esr p11-kit openssh-client openssh-server nginx osslsigncode softhsm2 python3-pykcs11 strace
  time
)

# What differs between the releases: the JDK, and where pkcs11-provider comes from (bookworm has it
# only in bookworm-backports; trixie and later in main).
codename=""
if [ -r /etc/os-release ]; then
  codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
fi
if [ -z "$codename" ] && [ -r /etc/debian_version ]; then
  case "$(cat /etc/debian_version)" in
    12.*|bookworm*) codename=bookworm ;;
    13.*|trixie*) codename=trixie ;;
  esac
fi
BACKPORTS=""
case "$codename" in
  bookworm) JDK=openjdk-17-jdk-headless; BACKPORTS=bookworm-backports ;;
  trixie) JDK=openjdk-21-jdk-headless ;;
  *) JDK=default-jdk-headless
     echo "note: not Debian 12 or 13 ('${codename:-unknown}'): installing $JDK" ;;
esac
PACKAGES+=("$JDK")

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

update=""
if [ -n "$BACKPORTS" ] && ! installed pkcs11-provider; then
  # The suite, as a deb822 source of its own, unless some source already names it.
  if ! grep -qsE "^[^#]*[[:space:]]$BACKPORTS([[:space:]]|\$)" /etc/apt/sources.list \
      /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; then
    echo "adding the $BACKPORTS suite: /etc/apt/sources.list.d/$BACKPORTS.sources"
    printf '%s\n' "Types: deb" "URIs: http://deb.debian.org/debian" "Suites: $BACKPORTS" \
      "Components: main" "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" |
      $sudo tee "/etc/apt/sources.list.d/$BACKPORTS.sources" >/dev/null
  fi
  update=1
fi

missing=()
for p in "${PACKAGES[@]}"; do
  installed "$p" || missing+=("$p")
done
if [ -z "$BACKPORTS" ] && ! installed pkcs11-provider; then
  missing+=(pkcs11-provider)
fi
[ ${#missing[@]} -eq 0 ] || update=1

apt_install() {
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "$@"
}
if [ -n "$update" ]; then
  $sudo apt-get update -q
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt_install "${missing[@]}"
fi
if [ -n "$BACKPORTS" ] && ! installed pkcs11-provider; then
  echo "installing: pkcs11-provider from $BACKPORTS"
  apt_install -t "$BACKPORTS" pkcs11-provider
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# setuptools: build_ffi.py (which the tests run to build libraries of their own) compiles with cffi,
# which needs it on Python >= 3.12, whose virtual environments come without it (Debian 13: 3.13).
.venv/bin/python -m pip install -q 'setuptools>=68' -e '.[test]'
echo "module: $(.venv/bin/pkcs11-kms module-path)"

# Python programs of the tests that live in other virtual environments than the module
# (tests/test_python_hosts.py): python-pkcs11 and PyKCS11 in one; in the other, python-pkcs11 with
# an asn1crypto older than the module needs.
host_venv() {
  local dir="$1"
  shift
  [ -x "$dir/bin/python" ] || "$PYTHON" -m venv "$dir"
  "$dir/bin/python" -m pip install -q "$@"
}
host_venv .venv-hosts/plain python-pkcs11 PyKCS11
host_venv .venv-hosts/old-asn1crypto python-pkcs11 'asn1crypto==1.4.0'
