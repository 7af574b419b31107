# sera — see README.md. `make demo` shows it working; `make test` is what CI runs.

GO        ?= go
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
LDFLAGS   := -X main.version=$(VERSION)
NPM_DIR   := transport/sqs/testdata/npm
FUZZ_PKGS := ./crypto/ . ./settings/ ./commands/ ./commands/admin/ ./host/accounts/ ./host/sshkeys/ ./host/firewall/ ./host/hostkeys/ ./host/sudo/

.PHONY: all build test test-load unit fuzz fuzz-short deps lint fmt-check vet bench demo clean deb

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
# go test's own limit is 10 minutes a package; cmd/sera's real hosts take
# most of that on a busy 2-core machine, and a package killed by the limit
# is a red run that says nothing about the code.
UNIT_TIMEOUT ?= 30m
unit:
	GORACE=atexit_sleep_ms=0 $(GO) test -race -count=1 -timeout $(UNIT_TIMEOUT) ./...

# test-load runs the tests the way they fail first (docs/testing.md): every
# core kept busy by a `yes` while each package runs COUNT times with
# GOMAXPROCS 1 and then 2. PKGS narrows it; cmd/sera alone takes most of
# the time.
COUNT ?= 3
PKGS  ?= ./...
test-load: deps
	@set -e; pids=; \
	for i in $$(seq $$(nproc)); do yes >/dev/null & pids="$$pids $$!"; done; \
	trap 'kill $$pids' EXIT; \
	GORACE=atexit_sleep_ms=0 $(GO) test -race -count=$(COUNT) -cpu 1,2 -timeout 120m $(PKGS)

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
	$(GO) test -run '^$$' -bench ReadHeartbeats -benchtime 5x -benchmem .
	$(GO) test -run '^$$' -bench PingRoundTrip -benchtime 50x -count 3 ./commands/
	$(GO) test -run '^$$' -bench Fanout -benchtime 3x ./commands/
	$(GO) test -run '^$$' -bench Wake -benchtime 200x -count 3 ./transport/spool/
	$(GO) test -run '^$$' -bench WatcherIdleRSS -benchtime 1x ./cmd/sera/
	$(GO) test -run '^$$' -bench PingProcess -benchtime 50x -count 3 ./cmd/sera/
	$(GO) test -run '^$$' -bench ParallelProcesses -benchtime 3x ./cmd/sera/

demo: build
	@SERA=$(CURDIR)/bin/sera bash docs/demo.sh

# The Debian package, $(DIST)/sera_<version>_<arch>.deb: sera built static,
# position-independent and stripped (no libc needed; lintian-clean), the
# systemd unit, /etc/sera/env (a conffile), man pages and completions
# generated from the command tree (packaging/gen), maintainer scripts in
# packaging/scripts. nfpm is pinned and fetched through the module proxy;
# go.mod does not change. VERSION=v1.2.3 or DEB_ARCH=arm64 override.
NFPM           := github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.45.2
DIST           ?= dist
DEB_ARCH       ?= $(shell $(GO) env GOARCH)
DEB_EPOCH      ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
DEB_VERSION    ?= $(shell packaging/deb-version '$(VERSION)' '$(DEB_EPOCH)')
DEB_MAINTAINER ?= sera maintainers <sera@users.noreply.github.com>
DEB_STAGE       = $(DIST)/deb-stage-$(DEB_ARCH)

deb:
	rm -rf $(DEB_STAGE) && mkdir -p $(DEB_STAGE)
	CGO_ENABLED=0 GOOS=linux GOARCH=$(DEB_ARCH) $(GO) build -trimpath -buildmode=pie -ldflags '-s -w $(LDFLAGS)' -o $(DEB_STAGE)/sera ./cmd/sera
	SOURCE_DATE_EPOCH=$(DEB_EPOCH) $(GO) run ./packaging/gen -out $(DEB_STAGE) -version '$(DEB_VERSION)' -maintainer '$(DEB_MAINTAINER)'
	SERA_STAGE='$(abspath $(DEB_STAGE))' SERA_DEB_VERSION='$(DEB_VERSION)' SERA_DEB_ARCH='$(DEB_ARCH)' \
	SERA_DEB_MAINTAINER='$(DEB_MAINTAINER)' SOURCE_DATE_EPOCH=$(DEB_EPOCH) \
	  $(GO) run $(NFPM) package --config packaging/nfpm.yaml --packager deb --target '$(DIST)/sera_$(DEB_VERSION)_$(DEB_ARCH).deb'

clean:
	rm -rf bin dist
