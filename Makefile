# Wrenn's build. `make help` lists the targets.
SHELL := /usr/bin/env bash
.DEFAULT_GOAL := help
export PATH := /usr/local/go/bin:$(PATH)

BIN      := bin
ENVD     := $(BIN)/envd
WRENN    := $(BIN)/wrenn
GO_FILES := $(shell find . -name '*.go' -not -path './tools/*' -not -path './web/node_modules/*' 2>/dev/null)
WEB_SRC  := $(shell find web/src web/scripts web/index.html web/vite.config.ts web/tsconfig.json web/package.json web/package-lock.json -type f 2>/dev/null)
BUF      := tools/node_modules/.bin/buf
# Running the platform needs root (VMs, network namespaces, nftables).
SUDO     := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

.PHONY: setup
setup: ## install what building and testing need (idempotent)
	@scripts/setup.sh

.PHONY: build
build: $(ENVD) $(WRENN) ## build the binaries into bin/

$(ENVD): $(GO_FILES) go.mod go.sum
	@mkdir -p $(BIN)
	CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o $@ ./cmd/envd

# The dashboard and Swagger UI are built into web/dist and embedded in wrenn.
$(WRENN): $(GO_FILES) go.mod go.sum web/dist/index.html
	@mkdir -p $(BIN)
	go build -trimpath -o $@ ./cmd/wrenn

web/dist/index.html: $(WEB_SRC)
	cd web && npm run --silent build

.PHONY: web
web: setup web/dist/index.html ## build the dashboard (web/dist, embedded in bin/wrenn)

.PHONY: generate
generate: setup ## regenerate code from proto/ and SQL queries (committed; must be reproducible)
	$(BUF) generate
	go tool sqlc generate -f internal/control/db/sqlc.yaml

.PHONY: verify-generate
verify-generate: setup ## fail when generated code is not what `make generate` produces
	@tmp=$$(mktemp -d) && trap 'rm -rf $$tmp' EXIT && \
	$(BUF) generate -o $$tmp && \
	diff -r $$tmp/internal/gen internal/gen && \
	go tool sqlc diff -f internal/control/db/sqlc.yaml && echo "generated code is up to date"

.PHONY: vet
vet: ## go vet and gofmt
	@out=$$(gofmt -l cmd internal bench api test web/*.go 2>/dev/null); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	go vet ./...

.PHONY: test
test: setup verify-generate vet build ## set up and run every test (what CI runs)
	WRENN_ENVD_BIN=$(CURDIR)/$(ENVD) go test -race -count=1 -timeout 25m ./...
	WRENN_ENVD_BIN=$(CURDIR)/$(ENVD) node --test --test-concurrency=1 test/e2b/
	WRENN_BIN=$(CURDIR)/$(WRENN) WRENN_ENVD_BIN=$(CURDIR)/$(ENVD) node --test --test-concurrency=1 test/web/

.PHONY: bench
bench: setup build ## run the benchmarks; prints metric lines with baselines and ratios
	go run ./bench -envd $(CURDIR)/$(ENVD)

.PHONY: dev
dev: setup build ## run the whole platform here (database, host agent, API, dashboard); prints the URL and an API key
	$(SUDO) $(WRENN) dev -envd $(CURDIR)/$(ENVD) $(DEV_FLAGS)

.PHONY: clean
clean: ## remove build outputs
	rm -rf $(BIN) web/dist/assets web/dist/swagger web/dist/index.html
