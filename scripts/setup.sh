#!/usr/bin/env bash
# Installs what building and testing Wrenn needs on a Debian machine, and
# nothing that is already there. Safe to run again and again.
#
# Uses only the machine's own apt, npm and Go configuration.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*" >&2; }

need_apt=()
have() { command -v "$1" >/dev/null 2>&1; }

# Debian packages: name of a command -> package providing it.
for pair in "node:nodejs" "npm:npm" "git:git" "make:make" "gcc:gcc" "curl:curl"; do
	cmd=${pair%%:*} pkg=${pair#*:}
	have "$cmd" || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
	if [ "$(id -u)" -ne 0 ]; then
		log "missing packages: ${need_apt[*]}; run this script as root (or install them) and retry"
		exit 1
	fi
	log "installing Debian packages: ${need_apt[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# Go: the version go.mod names. A Go of 1.21 or newer fetches that toolchain
# itself through the module proxy (GOTOOLCHAIN=auto).
want_go=$(awk '/^go /{print $2; exit}' go.mod)
if ! have go; then
	[ -x /usr/local/go/bin/go ] && export PATH=/usr/local/go/bin:$PATH
fi
if ! have go; then
	if [ "$(id -u)" -eq 0 ]; then
		log "installing Debian's Go to bootstrap go$want_go"
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go >/dev/null
	fi
fi
if ! have go; then
	log "no Go toolchain found; install Go $want_go (or any Go >= 1.21, which fetches it) and retry"
	exit 1
fi
if ! GOTOOLCHAIN=auto go version >/dev/null 2>&1; then
	log "the installed Go cannot switch to go$want_go; install Go >= 1.21"
	exit 1
fi

# Node tools (buf, the e2b SDK): installed from tools/package-lock.json.
stamp=tools/node_modules/.wrenn-lock
if [ ! -f "$stamp" ] || ! cmp -s tools/package-lock.json "$stamp"; then
	log "installing node tools (buf, e2b SDK)"
	(cd tools && npm ci --no-audit --no-fund --loglevel=error)
	cp tools/package-lock.json "$stamp"
fi

# Go modules, so the first build or test does not stall on downloads.
go mod download
log "setup complete"
