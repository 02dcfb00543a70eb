# The two commands that matter: `make run` (the standalone agent, no cluster needed) and
# `make test`.
CARGO ?= cargo
export PATH := $(CURDIR)/target/tools/bin:$(PATH)

.PHONY: run test test-deps image dev-cluster dev-apiserver bench bench-docker crds manifests lint fmt

## run: the standalone agent on this machine, with examples/standalone (API on 127.0.0.1:9733)
run:
	$(CARGO) run --release -- agent --checks-dir examples/standalone --state-dir target/state

## test: everything, after making sure the tools, the Docker engine, vigil's image, the QEMU guest and the Kubernetes
## control plane the tests use are here; an engine started for the tests is stopped afterwards (one
## that was already running is left alone), and so is the control plane
test: test-deps
	tests/fixtures/docker-engine.sh ensure
	status=0; packaging/image.sh && tests/fixtures/k8s.sh up && $(CARGO) test --workspace --locked || status=$$?; \
	tests/fixtures/k8s.sh down; tests/fixtures/docker-engine.sh down; exit $$status

test-deps:
	tests/fixtures/tools.sh
	tests/fixtures/qemu-guest.sh build
	tests/fixtures/k8s.sh build

## image: vigil's image (FROM scratch: the stripped release binary and the libraries it links),
## vigil:<version>, with the local Docker engine
image:
	packaging/image.sh

## dev-cluster: a real Kubernetes control plane (kube-apiserver, etcd, kube-controller-manager, kwok)
## on loopback, in the foreground, with its kubeconfig in target/dev-cluster/kubeconfig (Ctrl-C stops it)
dev-cluster:
	VIGIL_K8S_DIR=$(CURDIR)/target/dev-cluster tests/fixtures/k8s.sh foreground

## dev-apiserver: the test-only Kubernetes API stand-in on http://127.0.0.1:6443, with a kubeconfig
## in target/dev-apiserver/kubeconfig, to try vigil's CRDs and examples with kubectl (Ctrl-C stops it)
dev-apiserver:
	$(CARGO) run --locked -p vigil-test-apiserver -- --listen 127.0.0.1:6443 --kubeconfig target/dev-apiserver/kubeconfig

## bench: probe throughput, CPU per probe, scheduler lateness and memory (not a test)
bench:
	tests/fixtures/tools.sh bench
	$(CARGO) bench --locked --bench scale

## bench-docker: container summary latency and agent CPU with 50 running containers (not a test)
bench-docker:
	tests/fixtures/docker-engine.sh ensure
	$(CARGO) bench --locked --bench containers; status=$$?; tests/fixtures/docker-engine.sh down; exit $$status

## crds: regenerate crds/ (and the chart's and kustomize base's copies) from the Rust types
crds:
	VIGIL_UPDATE_CRDS=1 $(CARGO) test --locked --test crds committed_crds_are_current

## manifests: regenerate the kustomize base manifests/ from the Helm chart's default rendering
manifests:
	tests/fixtures/k8s.sh build
	status=0; tests/fixtures/k8s.sh up && VIGIL_UPDATE_MANIFESTS=1 $(CARGO) test --locked --test packaging \
	  the_kustomize_base_is_the_chart_with_its_defaults || status=$$?; tests/fixtures/k8s.sh down; exit $$status

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt
