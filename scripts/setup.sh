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
# What each is for: node/npm run buf and the e2b SDK tests; qemu runs the
# sandbox VMs; busybox-static, mkfs.ext4 (e2fsprogs) and debootstrap build
# guest images; ip (iproute2) and nsenter (util-linux) are used by network
# tests; mkfs.xfs (xfsprogs) lets the copy-on-write tests exercise reflinks;
# postgresql provides the server binaries the control plane's private
# database (and its tests) run from; chromium runs the dashboard's browser
# tests (driven by playwright-core).
for pair in "node:nodejs" "npm:npm" "git:git" "make:make" "gcc:gcc" "curl:curl" \
	"qemu-system-x86_64:qemu-system-x86" "busybox:busybox-static" "mkfs.ext4:e2fsprogs" \
	"debootstrap:debootstrap" "ip:iproute2" "nsenter:util-linux" "mkfs.xfs:xfsprogs" \
	"chromium:chromium"; do
	cmd=${pair%%:*} pkg=${pair#*:}
	have "$cmd" || [ -x "/usr/sbin/$cmd" ] || [ -x "/sbin/$cmd" ] || need_apt+=("$pkg")
done
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need_apt+=(postgresql)
# Guest kernels are fetched with `apt-get download`, which needs package lists.
if [ "$(id -u)" -eq 0 ] && ! apt-cache policy linux-image-cloud-amd64 2>/dev/null | grep -q 'Candidate: [0-9]'; then
	apt_updated=1
	log "refreshing apt package lists (guest kernels come from apt)"
	apt-get update -qq
fi
if [ ${#need_apt[@]} -gt 0 ]; then
	if [ "$(id -u)" -ne 0 ]; then
		log "missing packages: ${need_apt[*]}; run this script as root (or install them) and retry"
		exit 1
	fi
	log "installing Debian packages: ${need_apt[*]}"
	[ -n "${apt_updated:-}" ] || apt-get update -qq
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

# The dashboard's build and browser-test tools: installed from
# web/package-lock.json.
stamp=web/node_modules/.wrenn-lock
if [ ! -f "$stamp" ] || ! cmp -s web/package-lock.json "$stamp"; then
	log "installing the dashboard's node packages (vite, react, xterm.js, playwright-core)"
	(cd web && npm ci --no-audit --no-fund --loglevel=error)
	cp web/package-lock.json "$stamp"
fi

# Go modules, so the first build or test does not stall on downloads.
go mod download
log "setup complete"
