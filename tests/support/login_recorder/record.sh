#!/usr/bin/env bash
# Records the real CLIs' login screens (src/providers/recorded/) offline: each CLI runs under a
# PTY with HTTPS_PROXY pointing at vendor_stub.py, which plays the vendors' OAuth endpoints.
# Needs the pinned CLIs (scripts/install-cli-tools.sh) and openssl. The recordings hold no real
# secret: every token comes from the stub.
#   usage: record.sh CLI_TOOLS_DIR OUT_DIR
set -euo pipefail
tools=${1:?CLI tools dir}/node_modules/.bin
out=$(mkdir -p "${2:?out dir}" && cd "$2" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
cd "$work"
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj "/CN=Recorder CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout srv.key -out srv.csr -subj "/CN=auth.openai.com" 2>/dev/null
printf "subjectAltName=DNS:auth.openai.com,DNS:platform.claude.com,DNS:api.anthropic.com,DNS:claude.ai,DNS:claude.com,DNS:oauth2.googleapis.com,DNS:www.googleapis.com,DNS:accounts.google.com,DNS:cloudcode-pa.googleapis.com,DNS:play.googleapis.com\nextendedKeyUsage=serverAuth\n" >ext.cnf
openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem -days 2 -extfile ext.cnf 2>/dev/null
proxy=(env HTTPS_PROXY=http://127.0.0.1:18998 SSL_CERT_FILE="$work/ca.pem" NODE_EXTRA_CA_CERTS="$work/ca.pem")
for mode in ok deny; do
  python3 "$here/vendor_stub.py" "$mode" 2>"stub-$mode.log" &
  stub=$!
  sleep 0.5
  rm -rf home && mkdir -p home/.codex home/.gemini home/work
  "${proxy[@]}" HOME="$work/home" python3 "$here/drive.py" "$out/claude-login-$mode.txt" \
    "Paste code here" "authcode123#STATE" 30 -- "$tools/claude" auth login
  "${proxy[@]}" HOME="$work/home" CODEX_HOME="$work/home/.codex" python3 "$here/drive.py" \
    "$out/codex-device-$mode.txt" "never" - 25 -- "$tools/codex" login --device-auth
  echo '{"security":{"auth":{"selectedType":"oauth-personal"}}}' >home/.gemini/settings.json
  (cd home/work && "${proxy[@]}" HOME="$work/home" NO_BROWSER=true GEMINI_CLI_TRUST_WORKSPACE=true \
    python3 "$here/drive.py" "$out/gemini-login-$mode.txt" "authorization code" "4/0AfakeAuthCode" 45 -- "$tools/gemini")
  kill "$stub"
done
echo "record.sh: transcripts in $out (rename *-deny to *-bad-code / *-denied as in the repository)"
