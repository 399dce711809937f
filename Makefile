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

# The Gemma 3 tokenizer is fetched, never committed. Outside CI a failed fetch only warns
# (the tests that need it skip); under CI=true it fails.
tokenizer:
	@bash scripts/fetch-tokenizer.sh $(TOKENIZER_DIR) || { [ "$$CI" != true ] && \
	  echo "warning: no tokenizer in $(TOKENIZER_DIR); tests that need it will skip" >&2; }

# With node and npm, the tokenizer golden data is regenerated with Hugging Face's own
# implementations and compared with the committed copy; go test checks it either way.
test: tokenizer
	$(GO) vet ./...
	@if command -v node >/dev/null && command -v npm >/dev/null && [ -f $(TOKENIZER_DIR)/tokenizer.json ]; then \
	  bash scripts/tokenizer-golden/setup.sh && node scripts/tokenizer-golden/golden.mjs --check; \
	else echo "tokenizer golden: node, npm or the tokenizer missing; not regenerated (go test still checks it)"; fi
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
