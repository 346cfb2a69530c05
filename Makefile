# imgate — the two commands a newcomer needs are `make run` and `make test`.
GO        ?= go
BIN       := bin
VERSION   ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X main.version=$(VERSION)
# FUZZTIME: one budget for every fuzz target (10s, 1m, 500000x). Unset, each
# target runs a count of inputs (~5 s here, plus the instrumented build): a count has no wall-clock
# deadline, and a duration trips Go 1.26's fuzz coordinator at its end now
# and then ("context deadline exceeded" with no failing input; fixed in
# Go 1.27, golang/go#75804).
FUZZTIME  ?=

# Pinned code generators (protoc comes from Debian's protobuf-compiler).
PROTOC_GEN_GO      := google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
PROTOC_GEN_GO_GRPC := google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.5.1
PROTOC_GEN_VTPROTO := github.com/planetscale/vtprotobuf/cmd/protoc-gen-go-vtproto@v0.6.0
ETCDCTL            := go.etcd.io/etcd/etcdctl/v3@v3.7.3
GOTESTSUM          := gotest.tools/gotestsum@v1.13.0

.PHONY: all build run test vet fmt-check deploy-check race lockcheck fuzz bench bench-ws bench-rooms microbench chaos chaos-short proto proto-ts tools etcdctl ts-test web-test chat-bundle clean

all: build

## build: the dispatcher, the access node, the dev runner and the chat client into bin/
build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/ ./dispatcher ./accessnode ./scripts/devrun ./scripts/imchat

## run: embedded etcd + dispatcher + 2 access nodes + a demo exchange; Ctrl-C stops all
run: build
	$(BIN)/devrun --bin $(BIN)

## test: vet, gofmt, the deploy kit's own checkers, the race-enabled test suite (includes the end-to-end test and the deploy kit's tests), the lock-order check, the TypeScript SDK against the real binaries, the chat page in headless Chromium, then every fault scenario, short (root)
test: vet fmt-check deploy-check race lockcheck ts-test web-test chaos-short

vet:
	$(GO) vet ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

## deploy-check: the deploy kit's alert rules and scrape config through promtool (Debian prometheus), units through systemd-analyze; the manifests, sysctls and dashboard are checked by go test ./scripts/deploy
PROMTOOL ?= promtool
deploy-check:
	cd scripts/deploy/prometheus && $(PROMTOOL) check rules imgate-alerts.yml && \
	  $(PROMTOOL) test rules imgate-alerts.test.yml && \
	  $(PROMTOOL) check config --syntax-only prometheus.yml
	IMGATE_DEPLOY_REQUIRE_TOOLS=1 $(GO) test -count=1 -run 'TestSystemdAnalyzeVerify|TestDashboardQueriesParse' ./scripts/deploy

# race prints each package as it finishes (gotestsum, pinned), with the
# failing tests' output; `go test` alone says nothing for minutes.
race: $(BIN)/tools/gotestsum
	$(BIN)/tools/gotestsum --format pkgname-and-test-fails --format-hide-empty-pkg -- -race -count=1 -timeout 10m ./...

## lockcheck: the tests of the packages whose locks nest, built so that any two locks taken in both orders fail them (gateway/locks.go)
lockcheck:
	$(GO) test -tags lockcheck -count=1 -timeout 10m ./accessnode/internal/lockorder/ ./accessnode/internal/gateway/ ./accessnode/internal/evloop/ ./accessnode/internal/relay/

$(BIN)/tools/gotestsum:
	GOBIN=$(CURDIR)/$(BIN)/tools $(GO) install $(GOTESTSUM)

## fuzz: every fuzz target, ~5 s of inputs each (or FUZZTIME each; e.g. FUZZTIME=1m for a deeper run)
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime $(or $(FUZZTIME),125000x) ./proto/wire
	$(GO) test -run '^$$' -fuzz '^FuzzVerify$$' -fuzztime $(or $(FUZZTIME),75000x) ./proto/token
	$(GO) test -run '^$$' -fuzz '^FuzzParseDispatcherError$$' -fuzztime $(or $(FUZZTIME),50000x) ./proto/client
	$(GO) test -run '^$$' -fuzz '^FuzzParseLoginPolicy$$' -fuzztime $(or $(FUZZTIME),50000x) ./proto/etcdkeys
	$(GO) test -run '^$$' -fuzz '^FuzzEndpointQuery$$' -fuzztime $(or $(FUZZTIME),3000x) ./dispatcher/internal/httpapi
	$(GO) test -run '^$$' -fuzz '^FuzzVerify$$' -fuzztime $(or $(FUZZTIME),50000x) ./dispatcher/internal/auth
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeFrame$$' -fuzztime $(or $(FUZZTIME),25000x) ./accessnode/internal/handoff
	$(GO) test -run '^$$' -fuzz '^FuzzWebSocket$$' -fuzztime $(or $(FUZZTIME),150000x) ./accessnode/internal/evloop
	$(GO) test -run '^$$' -fuzz '^FuzzConfigFile$$' -fuzztime $(or $(FUZZTIME),10000x) ./proto/cliflags
	$(GO) test -run '^$$' -fuzz '^FuzzProxyHeader$$' -fuzztime $(or $(FUZZTIME),150000x) ./accessnode/internal/proxyhdr

## bench: the standard load scenario (whole system + load tool, a few minutes)
bench:
	scripts/bench.sh

## bench-ws: memory per idle WebSocket connection, imgate ws/wss beside Centrifugo 6.9 (CONNS=15000)
bench-ws:
	scripts/bench-ws.sh

## bench-rooms: a room of 10,000 members over 4 nodes, broadcast and acknowledged (MEMBERS=, BROADCAST_RATE=, ACKED_RATE=)
bench-rooms:
	scripts/room-bench.sh

## chaos: the fault harness, every scenario with full fault windows (root; about 10 min); CHAOS_ARGS="--scenario kill9 --json f"
chaos:
	scripts/chaos.sh $(CHAOS_ARGS)

## chaos-short: every scenario with short fault windows, 100 clients (root; under 5 min)
chaos-short:
	scripts/chaos.sh --short $(CHAOS_ARGS)

## microbench: every Go benchmark
microbench:
	$(GO) test -run '^$$' -bench . -benchmem ./...

## ts-test: the TypeScript SDK (proto/ts): install from the lock file, build (library + browser bundle), test against the real binaries (and that the dispatcher embeds this bundle)
ts-test:
	cd proto/ts && npm ci --no-audit --no-fund && npm run build && npm test

## web-test: the dispatcher's chat page (/chat/) in headless Chromium (Debian's chromium, or CHROMIUM=path) against the real binaries; screenshots in proto/ts/artifacts/web
web-test:
	cd proto/ts && npm ci --no-audit --no-fund && npm run test:web

## chat-bundle: rebuild the SDK's browser bundle and copy it where the dispatcher embeds it (commit the result)
chat-bundle:
	cd proto/ts && npm ci --no-audit --no-fund && npm run build
	cp proto/ts/dist/imgate.browser.js dispatcher/internal/webchat/static/imgate.browser.js

## proto: regenerate proto/*pb (and the TypeScript SDK's proto/ts/src/gen) from the .proto files with pinned tools
proto: tools
	protoc -I proto \
	  --plugin=protoc-gen-go=$(BIN)/tools/protoc-gen-go \
	  --plugin=protoc-gen-go-grpc=$(BIN)/tools/protoc-gen-go-grpc \
	  --plugin=protoc-gen-go-vtproto=$(BIN)/tools/protoc-gen-go-vtproto \
	  --go_out=proto --go_opt=paths=source_relative \
	  --go-grpc_out=proto --go-grpc_opt=paths=source_relative \
	  --go-vtproto_out=proto --go-vtproto_opt=paths=source_relative,features=marshal+unmarshal+size \
	  wirepb/frame.proto nodepb/node.proto
	$(MAKE) proto-ts

## proto-ts: regenerate proto/ts/src/gen with the protoc-gen-es pinned in proto/ts/package-lock.json
proto-ts:
	@command -v protoc >/dev/null || { echo "installing protoc (Debian protobuf-compiler)"; \
	  (apt-get update -qq && apt-get install -y -qq protobuf-compiler) >/dev/null; }
	cd proto/ts && npm ci --no-audit --no-fund && npm run gen

tools:
	@command -v protoc >/dev/null || { echo "installing protoc (Debian protobuf-compiler)"; \
	  (apt-get update -qq && apt-get install -y -qq protobuf-compiler) >/dev/null; }
	GOBIN=$(CURDIR)/$(BIN)/tools $(GO) install $(PROTOC_GEN_GO)
	GOBIN=$(CURDIR)/$(BIN)/tools $(GO) install $(PROTOC_GEN_GO_GRPC)
	GOBIN=$(CURDIR)/$(BIN)/tools $(GO) install $(PROTOC_GEN_VTPROTO)

## etcdctl: the etcd command-line client, into bin/
etcdctl:
	GOBIN=$(CURDIR)/$(BIN) $(GO) install $(ETCDCTL)

clean:
	rm -rf $(BIN) .run proto/ts/dist proto/ts/build-test proto/ts/artifacts
