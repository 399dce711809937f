# tpuserve — see README.md. Quick start: `make run`, `make test`.
GO        ?= go
BIN       := bin/tpuserve
TOKENIZER_DIR ?= .cache/tokenizer
# The pure-Go backend with the deadlock-free configuration (see docs in README).
export TPUSERVE_BACKEND ?= go
export TPUSERVE_TOKENIZER_DIR := $(abspath $(TOKENIZER_DIR))
export GOMLX_NO_AUTO_INSTALL := 1

.PHONY: build test run bench lint tokenizer proto clean

build:
	$(GO) build -o $(BIN) ./cmd/tpuserve

tokenizer:
	bash scripts/fetch-tokenizer.sh $(TOKENIZER_DIR)

test: tokenizer
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 20m ./...

run: build tokenizer
	$(BIN) serve --model tiny --tokenizer $(TOKENIZER_DIR)

bench: tokenizer
	$(GO) test -run '^$$' -bench . -benchtime 2x ./...

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

proto:
	bash scripts/gen-proto.sh

clean:
	rm -rf bin
