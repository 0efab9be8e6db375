# The README's commands. Everything they need is installed into .cache/
# (git-ignored) from the package registries on first use.
SHELL := /bin/bash
GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

.PHONY: run demo test faults bench build install vet clean stop help

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

run: ## install what is missing, start Kafka and run `meterline serve` (Ctrl-C stops all)
	@deploy/run.sh

demo: ## with `make run` going: realistic traffic for the dev customers, their usage alerts printed (ARGS="..." for `meterline demo`)
	@deploy/demo.sh $(ARGS)

test: ## install what is missing, start the shared servers, run every test
	@deploy/test.sh

faults: ## the Kafka fault test alone, verbose: a three-node cluster under load from two collectors, brokers killed and restarted; prints recovery times and events/s (ARGS="..." for `go test`)
	@deploy/faults.sh $(ARGS)

bench: ## `meterline bench --duration 60s` on a broker of its own: rate, latency, CPU, memory, lag vs raw Kafka and insert baselines (ARGS="..." overrides)
	@deploy/bench.sh $(ARGS)

build: ## build bin/meterline
	$(GO) build -ldflags '$(LDFLAGS)' -o bin/meterline ./cmd/meterline

install: ## install Kafka, libchdb.so, stripe-mock, schemathesis and the Helm chart's tools into .cache/ (and uPlot into web/)
	deploy/install.sh

vet: ## go vet and gofmt check
	$(GO) vet ./...
	@test -z "$$(gofmt -l . | grep -v '^.cache/')" || { gofmt -l . | grep -v '^.cache/'; echo 'gofmt needed'; exit 1; }

stop: ## stop everything `make run` and `make demo` started (the demo, meterline, stripe-mock, Kafka); safe to repeat
	@deploy/stop.sh

clean: ## stop what runs, remove local run state (.run/) and bin/; keeps the download cache
	deploy/stop.sh || true
	rm -rf .run bin
