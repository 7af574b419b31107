# sera — see README.md. `make demo` shows it working; `make test` is what CI runs.

GO        ?= go
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
LDFLAGS   := -X main.version=$(VERSION)
NPM_DIR   := transport/sqs/testdata/npm
FUZZ_PKGS := ./crypto/ .

.PHONY: all build test unit fuzz fuzz-short deps lint fmt-check vet bench demo clean

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/sera ./cmd/sera

# deps installs what the tests need beyond Go modules: the fauxqs SQS/SNS
# server from npm, pinned by its package-lock.json.
deps: $(NPM_DIR)/node_modules/.package-lock.json

$(NPM_DIR)/node_modules/.package-lock.json: $(NPM_DIR)/package-lock.json
	npm ci --prefix $(NPM_DIR) --no-audit --no-fund --loglevel=error

test: deps fmt-check vet unit fuzz-short

# A -race binary sleeps 1 s at exit by default; tests exec sera many times.
unit:
	GORACE=atexit_sleep_ms=0 $(GO) test -race -count=1 ./...

lint: fmt-check vet

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

# Every Fuzz target of every package that parses bytes from a queue: a few
# seconds each in `make test`, a minute each in `make fuzz`.
fuzz-short: FUZZTIME = 3s
fuzz: FUZZTIME = 60s
fuzz fuzz-short:
	@set -e; for pkg in $(FUZZ_PKGS); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
	    echo "fuzz $$pkg $$f ($(FUZZTIME))"; \
	    log=$$(mktemp); \
	    $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg > $$log 2>&1 || { cat $$log; rm -f $$log; exit 1; }; \
	    rm -f $$log; \
	  done; \
	done

# Figures and the machine they ran on go to docs/benchmarks.md.
bench: deps
	$(GO) test -run '^$$' -bench . -benchmem -count 5 ./crypto/
	$(GO) test -run '^$$' -bench PingRoundTrip -benchtime 50x -count 3 ./commands/
	$(GO) test -run '^$$' -bench Wake -benchtime 200x -count 3 ./transport/spool/
	$(GO) test -run '^$$' -bench WatcherIdleRSS -benchtime 1x ./cmd/sera/

demo: build
	@SERA=$(CURDIR)/bin/sera bash docs/demo.sh

clean:
	rm -rf bin dist
