# Wrenn's build. `make help` lists the targets.
SHELL := /usr/bin/env bash
.DEFAULT_GOAL := help
export PATH := /usr/local/go/bin:$(PATH)

BIN      := bin
ENVD     := $(BIN)/envd
WRENN    := $(BIN)/wrenn
GO_FILES := $(shell find . -name '*.go' -not -path './tools/*' 2>/dev/null)
BUF      := tools/node_modules/.bin/buf

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

$(WRENN): $(GO_FILES) go.mod go.sum
	@mkdir -p $(BIN)
	go build -trimpath -o $@ ./cmd/wrenn

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
	@out=$$(gofmt -l cmd internal bench 2>/dev/null); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	go vet ./...

.PHONY: test
test: setup verify-generate vet build ## set up and run every test (what CI runs)
	WRENN_ENVD_BIN=$(CURDIR)/$(ENVD) go test -race -count=1 -timeout 20m ./...
	WRENN_ENVD_BIN=$(CURDIR)/$(ENVD) node --test --test-concurrency=1 test/e2b/

.PHONY: bench
bench: setup build ## run the benchmarks; prints metric lines with baselines and ratios
	go run ./bench -envd $(CURDIR)/$(ENVD)

.PHONY: dev
dev: setup build ## run envd locally in host mode on :49983 (the platform arrives with the agent and control plane)
	@echo "envd on http://localhost:49983 (host mode: no MMDS, no clock setting); Ctrl-C stops it"
	$(ENVD) -isnotfc -no-port-forward

.PHONY: clean
clean: ## remove build outputs
	rm -rf $(BIN)
