#!/usr/bin/env bash
# The pkcs11-kms demo: set-up (scripts/setup.sh), the KMS emulator over HTTPS with three demo keys,
# then OpenSSL workflows whose private keys never leave (emulated) KMS: each step shows the command,
# what it printed, and a check mark. Exits non-zero on the first failure; leaves nothing running.
#
#   scripts/demo.sh                                   # fresh Debian 12 or 13: root, or sudo
#   PKCS11_KMS_DEMO_VENV=/path/to/venv scripts/demo.sh  # skip the set-up, use that environment
#   PKCS11_KMS_DEMO_KEEP=1 scripts/demo.sh              # keep the work directory (certs, replies)
set -Eeuo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
ENGINE=/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so

if [ -t 1 ]; then
  BOLD=$'\e[1m' DIM=$'\e[2m' GREEN=$'\e[32m' RED=$'\e[31m' RESET=$'\e[0m'
else
  BOLD="" DIM="" GREEN="" RED="" RESET=""
fi
STEP=0
PIDS=()
WORK=""

# ---- output helpers -------------------------------------------------------------------------------

heading() { printf '\n%s== %s ==%s\n' "$BOLD" "$*" "$RESET"; }
step() { STEP=$((STEP + 1)); heading "$STEP. $*"; }
ok() { printf '   %s✓%s %s\n' "$GREEN" "$RESET" "$*"; }
fail() { printf '   %s✗ %s%s\n' "$RED" "$*" "$RESET" >&2; exit 1; }

# The command as one could paste it: arguments with shell-special characters in single quotes.
show() {
  local arg out=""
  for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_./:=@%+,-]+$ || "$arg" == "&" || "$arg" == "<"* ]]; then
      out+="$arg "
    else
      out+="'${arg//\'/\'\\\'\'}' "
    fi
  done
  printf '%s$ %s%s\n' "$DIM" "${out% }" "$RESET"
}

# run CMD...: show it, run it, print its output indented (without the "Engine "pkcs11" set." and
# "Using configuration from" chatter);
# its output stays in $OUT for `expect`. RUN_FILTER (a grep -E pattern) shortens long outputs.
OUT=""
run() {
  show "$@"
  local rc=0
  OUT="$("$@" 2>&1)" || rc=$?
  local shown
  shown="$(printf '%s\n' "$OUT" | grep -vE '^(Engine "pkcs11" set\.|Using configuration from )' || true)"
  if [ -n "${RUN_FILTER:-}" ] && [ $rc -eq 0 ]; then
    shown="$(printf '%s\n' "$shown" | grep -E "$RUN_FILTER" || true)"
  fi
  [ -z "$shown" ] || printf '%s\n' "$shown" | sed 's/^/    /'
  [ $rc -eq 0 ] || fail "exit status $rc"
}
expect() { grep -qF -- "$1" <<<"$OUT" || fail "expected \"$1\" in the output"; }

# ---- processes and clean-up ------------------------------------------------------------------------

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  local pid
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  if [ -n "$WORK" ] && [ -d "$WORK" ]; then
    if [ "${PKCS11_KMS_DEMO_KEEP:-}" = 1 ]; then
      echo "work files kept in $WORK"
    else
      rm -rf "$WORK"
    fi
  fi
  if [ $status -ne 0 ]; then
    printf '\n%s✗ the demo failed (step %s)%s\n' "$RED" "$STEP" "$RESET" >&2
  fi
  exit $status
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

stop() {  # stop one background process we started, and forget it
  local pid=$1 rest=() p
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] || rest+=("$p"); done
  PIDS=("${rest[@]}")
}

# wait_for FILE PATTERN PID: until FILE has a line matching PATTERN; fails when PID exits first.
wait_for() {
  local file=$1 pattern=$2 pid=$3 i
  for i in $(seq 300); do
    grep -qE -- "$pattern" "$file" 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || { cat "$file" >&2; fail "the process exited"; }
    sleep 0.2
  done
  cat "$file" >&2
  fail "timed out waiting for '$pattern' in $file"
}

free_port() {
  "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# ---- set-up ------------------------------------------------------------------------------------------

heading "Set-up"
if [ -n "${PKCS11_KMS_DEMO_VENV:-}" ]; then
  VENV="$PKCS11_KMS_DEMO_VENV"
  echo "using $VENV (PKCS11_KMS_DEMO_VENV): skipping scripts/setup.sh"
else
  scripts/setup.sh
  VENV="$ROOT/.venv"
fi
PYTHON="$VENV/bin/python"
PKCS11_KMS="$VENV/bin/pkcs11-kms"
for tool in openssl pkcs11-tool curl; do
  command -v "$tool" >/dev/null || fail "$tool is missing"
done
[ -f "$ENGINE" ] || fail "$ENGINE is missing (package libengine-pkcs11-openssl)"
M="$("$PKCS11_KMS" module-path)"
ok "module: $M"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/pkcs11-kms-demo.XXXXXX")"
cd "$WORK"

heading "The KMS emulator (HTTPS, throwaway CA) with three demo keys"
show "$PKCS11_KMS" emulator --tls --dir "$WORK/emulator"
# Never real AWS, never the EC2 metadata service (the emulator's env.sh sets dummy credentials).
export AWS_EC2_METADATA_DISABLED=true
"$PKCS11_KMS" emulator --tls --dir "$WORK/emulator" >emulator.out 2>emulator.log &
PIDS+=($!)
wait_for emulator.out '^# then:' "${PIDS[-1]}"
sed 's/^/    /' emulator.out
# shellcheck disable=SC1091
. "$WORK/emulator/env.sh"
ok "emulator running, PKCS11_KMS_CONFIG=$PKCS11_KMS_CONFIG"

RSA='pkcs11:token=emulator;object=demo-rsa;type=private'
EC='pkcs11:token=emulator;object=demo-ec;type=private'
DEC='pkcs11:token=emulator;object=demo-decrypt;type=private'

heading "The token, as the module sees it"
RUN_FILTER='^(token|  [a-z]|    private:)' run "$PKCS11_KMS" keys
expect "$RSA"
expect "$DEC"
run "$PKCS11_KMS" doctor
expect "everything is usable: 3 keys"
ok "three keys, reachable and usable"

cat >openssl.cnf <<CNF
# OpenSSL with libp11's engine, which loads the pkcs11-kms module (init = 0: only when used)
openssl_conf = openssl_init
[openssl_init]
engines = engine_section
[engine_section]
pkcs11 = pkcs11_section
[pkcs11_section]
engine_id = pkcs11
dynamic_path = $ENGINE
MODULE_PATH = $M
init = 0
CNF
heading "OpenSSL configuration: openssl.cnf"
sed 's/^/    /' openssl.cnf
# Only the commands that use a token key run with it: with libp11's engine loaded, OpenSSL 3.0
# routes every RSA key through the engine's methods, and `cms -encrypt` with OAEP then fails.
KMS=(env OPENSSL_CONF=openssl.cnf)
echo "    commands using token keys run as: ${KMS[*]} openssl ..."

# ---- 1 --------------------------------------------------------------------------------------------------
step "Export the public keys"
for key in demo-rsa demo-ec demo-decrypt; do
  RUN_FILTER='^-----BEGIN' run "${KMS[@]}" openssl pkey -engine pkcs11 -inform engine -pubout \
    -in "pkcs11:token=emulator;object=$key;type=public" -out "$key.pub.pem"
  pkcs11-tool --module "$M" --read-object --type pubkey --label "$key" -o "$key.pub.der" >/dev/null 2>&1
  openssl pkey -pubin -inform DER -in "$key.pub.der" -out "$key.check.pem"
  cmp -s "$key.pub.pem" "$key.check.pem" || fail "$key: openssl and pkcs11-tool disagree"
  ok "$key.pub.pem: the same key pkcs11-tool reads from the token"
done

# ---- 2 --------------------------------------------------------------------------------------------------
step "Sign with pkeyutl, verify in software: RSA PKCS#1 v1.5, RSA-PSS, ECDSA"
printf 'pkcs11-kms demo: data to sign\n' >data.txt
run openssl dgst -sha256 -binary -out data.sha256 data.txt
run "${KMS[@]}" openssl pkeyutl -engine pkcs11 -keyform engine -sign -inkey "$RSA" \
  -pkeyopt digest:sha256 -in data.sha256 -out rsa.sig
run openssl pkeyutl -verify -pubin -inkey demo-rsa.pub.pem -pkeyopt digest:sha256 \
  -in data.sha256 -sigfile rsa.sig
expect "Signature Verified Successfully"
ok "RSA PKCS#1 v1.5 (SHA-256)"
PSS=(-pkeyopt digest:sha256 -pkeyopt rsa_padding_mode:pss -pkeyopt rsa_pss_saltlen:digest)
run "${KMS[@]}" openssl pkeyutl -engine pkcs11 -keyform engine -sign -inkey "$RSA" "${PSS[@]}" \
  -in data.sha256 -out pss.sig
run openssl pkeyutl -verify -pubin -inkey demo-rsa.pub.pem "${PSS[@]}" -in data.sha256 -sigfile pss.sig
expect "Signature Verified Successfully"
ok "RSA-PSS (SHA-256, salt = hash length)"
run "${KMS[@]}" openssl pkeyutl -engine pkcs11 -keyform engine -sign -inkey "$EC" -in data.sha256 -out ec.sig
run openssl pkeyutl -verify -pubin -inkey demo-ec.pub.pem -in data.sha256 -sigfile ec.sig
expect "Signature Verified Successfully"
ok "ECDSA P-256"

# ---- 3 --------------------------------------------------------------------------------------------------
step "RSA-OAEP: encrypt in software, decrypt with the token"
OAEP=(-pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:sha256 -pkeyopt rsa_mgf1_md:sha256)
printf 'a secret for the KMS key\n' >secret.txt
run openssl pkeyutl -encrypt -pubin -inkey demo-decrypt.pub.pem "${OAEP[@]}" -in secret.txt -out secret.enc
run "${KMS[@]}" openssl pkeyutl -engine pkcs11 -keyform engine -decrypt -inkey "$DEC" "${OAEP[@]}" \
  -in secret.enc -out secret.dec
cmp secret.txt secret.dec || fail "the decrypted text differs"
ok "OAEP SHA-256: decrypted text = original ($(cat secret.dec))"

# ---- 4 --------------------------------------------------------------------------------------------------
step "A CSR, and a self-signed CA certificate"
run "${KMS[@]}" openssl req -new -engine pkcs11 -keyform engine -key "$RSA" -subj "/CN=localhost" -out server.csr
run openssl req -verify -noout -in server.csr
expect "verify OK"
ok "server.csr, signed by demo-rsa"
run "${KMS[@]}" openssl req -new -x509 -engine pkcs11 -keyform engine -key "$EC" -sha256 -days 30 \
  -subj "/CN=pkcs11-kms demo CA" -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.pem
run openssl verify -CAfile ca.pem ca.pem
expect "ca.pem: OK"
ok "ca.pem: a CA whose key is demo-ec"

# ---- 5 --------------------------------------------------------------------------------------------------
step "The CA signs certificates"
cat >server.ext <<EXT
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
EXT
run "${KMS[@]}" openssl x509 -req -engine pkcs11 -CAkeyform engine -CAkey "$EC" -CA ca.pem -set_serial 2 \
  -sha256 -days 30 -extfile server.ext -in server.csr -out server.pem
run openssl verify -CAfile ca.pem server.pem
expect "server.pem: OK"
ok "server.pem (demo-rsa), issued by the KMS CA"
cat >client.ext <<EXT
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth, emailProtection
subjectAltName = email:demo-rsa@example.com
EXT
run "${KMS[@]}" openssl req -new -engine pkcs11 -keyform engine -key "$RSA" -subj "/CN=demo-rsa client" -out client.csr
run "${KMS[@]}" openssl x509 -req -engine pkcs11 -CAkeyform engine -CAkey "$EC" -CA ca.pem -set_serial 3 \
  -sha256 -days 30 -extfile client.ext -in client.csr -out client.pem
run openssl verify -CAfile ca.pem client.pem
expect "client.pem: OK"
ok "client.pem (demo-rsa, clientAuth and e-mail)"
cat >decrypt.ext <<EXT
basicConstraints = critical, CA:FALSE
keyUsage = critical, keyEncipherment
extendedKeyUsage = emailProtection
subjectAltName = email:demo-decrypt@example.com
EXT
# A decryption key cannot sign a CSR: the CA certifies its public key directly.
run "${KMS[@]}" openssl x509 -new -subj "/CN=demo-decrypt" -force_pubkey demo-decrypt.pub.pem -engine pkcs11 \
  -CAkeyform engine -CAkey "$EC" -CA ca.pem -set_serial 4 -sha256 -days 30 -extfile decrypt.ext \
  -out decrypt.pem
run openssl verify -CAfile ca.pem decrypt.pem
expect "decrypt.pem: OK"
ok "decrypt.pem (demo-decrypt, e-mail encryption)"

# ---- 6 --------------------------------------------------------------------------------------------------
step "An HTTPS server whose key is in KMS (TLS 1.3)"
PORT="$(free_port)"
show "${KMS[@]}" openssl s_server -engine pkcs11 -keyform engine -key "$RSA" -cert server.pem \
  -accept "127.0.0.1:$PORT" -tls1_3 -www "&"
"${KMS[@]}" openssl s_server -engine pkcs11 -keyform engine -key "$RSA" -cert server.pem \
  -accept "127.0.0.1:$PORT" -tls1_3 -www >s_server.log 2>&1 &
PIDS+=($!)
SERVER=${PIDS[-1]}
wait_for s_server.log '^ACCEPT' "$SERVER"
RUN_FILTER='^(<pre>|Protocol|Cipher|New, )' run curl -sS --fail --tlsv1.3 --cacert ca.pem "https://localhost:$PORT/"
expect "TLSv1.3"
RUN_FILTER='^(Protocol version|Peer certificate|Signature type|Verification)' \
  run openssl s_client -connect "127.0.0.1:$PORT" -servername localhost -CAfile ca.pem \
  -verify_return_error -brief </dev/null
expect "Protocol version: TLSv1.3"
expect "Verification: OK"
stop "$SERVER"
ok "curl and s_client verified the server; its TLS 1.3 handshake was signed in KMS (RSA-PSS)"

# ---- 7 --------------------------------------------------------------------------------------------------
step "TLS client certificate authentication with a key in KMS"
run openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout web.key \
  -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost" -days 1 -out web.pem
PORT="$(free_port)"
show openssl s_server -key web.key -cert web.pem -accept "127.0.0.1:$PORT" -tls1_3 -www \
  -Verify 1 -verify_return_error -CAfile ca.pem "&"
openssl s_server -key web.key -cert web.pem -accept "127.0.0.1:$PORT" -tls1_3 -www \
  -Verify 1 -verify_return_error -CAfile ca.pem >s_server2.log 2>&1 &
PIDS+=($!)
SERVER=${PIDS[-1]}
wait_for s_server2.log '^ACCEPT' "$SERVER"
printf 'GET / HTTP/1.0\r\n\r\n' >request.txt
RUN_FILTER='^(Client certificate|        Subject: |    Protocol)' \
  run "${KMS[@]}" openssl s_client -engine pkcs11 -keyform engine -key "$RSA" -cert client.pem \
  -connect "127.0.0.1:$PORT" -CAfile web.pem -quiet -ign_eof <request.txt
expect "Client certificate"
expect "Subject: CN=demo-rsa client"
ok "the server checked the client's certificate chain and its KMS-made CertificateVerify"
show openssl s_client -connect "127.0.0.1:$PORT" -CAfile web.pem -quiet -ign_eof "<request.txt"
refused="$(openssl s_client -connect "127.0.0.1:$PORT" -CAfile web.pem -quiet -ign_eof \
  <request.txt 2>&1 || true)"
if grep -q "Client certificate" <<<"$refused"; then
  fail "the server answered a client without a certificate"
fi
grep -E "alert|certificate required" <<<"$refused" | sed 's/^/    /' || true
stop "$SERVER"
ok "without the certificate the server refuses"

# ---- 8 --------------------------------------------------------------------------------------------------
step "S/MIME: sign and verify, encrypt and decrypt (RSA-OAEP)"
printf 'Hello from a key that lives in KMS.\n' >message.txt
run "${KMS[@]}" openssl smime -sign -engine pkcs11 -keyform engine -inkey "$RSA" -signer client.pem \
  -in message.txt -out signed.eml
run openssl smime -verify -CAfile ca.pem -in signed.eml -out verified.txt
expect "Verification successful"
# S/MIME signs the canonical (CRLF) form of a text message
tr -d '\r' <verified.txt | cmp -s message.txt - || fail "the verified message differs"
ok "signed.eml verifies against the KMS CA"
run openssl cms -encrypt -binary -aes256 -recip decrypt.pem -keyopt rsa_padding_mode:oaep \
  -keyopt rsa_oaep_md:sha256 -in message.txt -out encrypted.eml
run "${KMS[@]}" openssl cms -decrypt -binary -engine pkcs11 -keyform engine -inkey "$DEC" -recip decrypt.pem \
  -in encrypted.eml -out decrypted.txt
cmp message.txt decrypted.txt || fail "the decrypted message differs"
ok "encrypted.eml (AES-256, key transport RSA-OAEP SHA-256) decrypted by demo-decrypt"

# ---- 9 --------------------------------------------------------------------------------------------------
step "RFC 3161 time-stamps signed in KMS (pkcs11-kms tsa)"
cat >tsa.ext <<EXT
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = critical, timeStamping
EXT
run "${KMS[@]}" openssl req -new -engine pkcs11 -keyform engine -key "$RSA" -subj "/CN=pkcs11-kms demo TSA" -out tsa.csr
run "${KMS[@]}" openssl x509 -req -engine pkcs11 -CAkeyform engine -CAkey "$EC" -CA ca.pem -set_serial 5 \
  -sha256 -days 30 -extfile tsa.ext -in tsa.csr -out tsa.pem
run openssl ts -query -data message.txt -sha256 -cert -out query.tsq
run "$PKCS11_KMS" tsa --key "$RSA" --cert tsa.pem --in query.tsq --out reply.tsr
RUN_FILTER='^(Status:|Policy OID|Time stamp|Serial number|TSA)' run openssl ts -reply -in reply.tsr -text
expect "Status: Granted."
run openssl ts -verify -in reply.tsr -queryfile query.tsq -CAfile ca.pem -untrusted tsa.pem
expect "Verification: OK"
ok "openssl ts -verify accepts the reply"
PORT="$(free_port)"
show "$PKCS11_KMS" tsa --serve --port "$PORT" --key "$RSA" --cert tsa.pem "&"
"$PKCS11_KMS" tsa --serve --port "$PORT" --key "$RSA" --cert tsa.pem >tsa.log 2>&1 &
PIDS+=($!)
SERVER=${PIDS[-1]}
wait_for tsa.log '^serving' "$SERVER"
run openssl ts -query -data data.txt -sha384 -cert -out query2.tsq
run curl -sS --fail -H "Content-Type: application/timestamp-query" --data-binary @query2.tsq \
  -o reply2.tsr "http://127.0.0.1:$PORT/"
run openssl ts -verify -in reply2.tsr -queryfile query2.tsq -CAfile ca.pem -untrusted tsa.pem
expect "Verification: OK"
stop "$SERVER"
ok "the HTTP time-stamping server answered curl with a valid reply"

# ---- 10 -------------------------------------------------------------------------------------------------
step "Random bytes from KMS (GenerateRandom)"
run pkcs11-tool --module "$M" --generate-random 32 -o random.bin
[ "$(stat -c %s random.bin)" = 32 ] || fail "expected 32 bytes"
ok "32 random bytes: $(od -An -tx1 random.bin | tr -d ' \n')"

heading "Done"
ok "all $STEP workflows passed; the private keys never left the (emulated) KMS"
