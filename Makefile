# tinymq: build, run and test. Everything runs on Debian's /usr/bin/python3 with Debian's
# packages; `make deps` installs what is missing (needs root, as in CI).
PYTHON ?= /usr/bin/python3
PORT ?= 9000
RUNDIR ?= run
RUNTIME_DEBS = python3-yaml python3-systemd python3-sdnotify python3-cryptography sqlite3
TEST_DEBS = python3-pytest python3-pytest-timeout python3-hypothesis iproute2 procps strace
LINT_DEBS = pyflakes3
PYTEST = $(PYTHON) -m pytest -p no:cacheprovider

.PHONY: all run lint test test-unit test-integration bench chaos deps deps-test clean test-slow

all: test

# apt-get install the packages in $(1) that are not installed yet (idempotent; needs
# root). Shared with packaging.mk, which is included below.
define apt_ensure
	@missing=$$(for p in $(1); do \
	    [ "$$(dpkg-query -W -f='$${db:Status-Status}' $$p 2>/dev/null)" = installed ] || echo $$p; \
	  done); \
	if [ -n "$$missing" ]; then \
	  echo "installing:" $$missing; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends $$missing </dev/null; \
	fi
endef

deps:
	$(call apt_ensure,$(RUNTIME_DEBS))

deps-test: deps
	$(call apt_ensure,$(TEST_DEBS))

# Static checks: pyflakes (Debian's pyflakes3) and byte-compiling every module.
lint:
	$(call apt_ensure,$(LINT_DEBS))
	pyflakes3 tinymqd tests
	$(PYTHON) -m compileall -q tinymqd tests

# Run the daemon in the foreground from the checkout with a local database.
run: deps
	mkdir -p $(RUNDIR)
	$(PYTHON) -m tinymqd $(PORT) $(RUNDIR)/tinymq.db

# The default run (about 8 minutes); the longer tests (floods, replays after restarts,
# 10 s locks, 400 `tinymq send`s under load: about 4 minutes more) with test-slow.
test: deps-test
	$(PYTEST) -m "not slow" tests/unit tests/integration

test-slow: deps-test
	$(PYTEST) -m slow tests/integration

test-unit: deps-test
	$(PYTEST) tests/unit

test-integration: deps-test
	$(PYTEST) tests/integration

bench: deps-test
	$(PYTHON) -m tests.bench && $(PYTHON) -m tests.bench_adversity && $(PYTHON) -m tests.bench_latency

# The full chaos run: 20,000 + 5,000 messages through lossy, duplicating,
# reordering relays while both daemons are SIGKILLed 40 times; prints its figures.
# TINYMQ_CHAOS_SEED=<n> repeats it with another seed.
chaos: deps-test
	$(PYTEST) -m chaos -s tests/integration

clean:
	rm -rf $(RUNDIR) .pytest_cache build dist *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# Debian package, lintian and system tests: deb, lintian, image, test-system.
-include packaging.mk
