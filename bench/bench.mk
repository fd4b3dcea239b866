# Benchmark targets; included by the top-level Makefile. Real runs are manual and their results committed under
# bench/results/; `bench-smoke` is the short version CI runs so the bench never rots.
USERS ?= 1000
DURATION ?= 120
STEP_DURATION ?= 60
BENCH_ARGS ?=
CAPACITY_USERS = $(if $(filter command line environment,$(origin USERS)),$(USERS),1000,10000,100000)

.PHONY: bench bench-sweep bench-compare bench-jobs bench-precision bench-floor capacity bench-smoke bench-services

bench-services:
	@scripts/setup.sh --no-services
	@scripts/services.sh start wardrobe_bench

bench: bench-services ## Load test the whole stack on this box (USERS=1000 DURATION=120) into bench/results/
	@$(PY) -m bench.run load --users $(USERS) --duration $(DURATION) $(BENCH_ARGS)

bench-sweep: bench-services ## Step users 250, 500, 1000, ... until p95 > 2 s or errors: users per box
	@$(PY) -m bench.run sweep --duration $(STEP_DURATION) $(BENCH_ARGS)

bench-compare: bench-services ## Same scenario against the original architecture and Wardrobe; print ratios
	@$(PY) -m bench.run compare --duration $(STEP_DURATION) $(BENCH_ARGS)

bench-jobs: bench-services ## Images/s per worker box (u2netp, 1024 px), RSS per process, OpenAI RPM used
	@$(PY) -m bench.jobs $(BENCH_ARGS)

bench-precision: ## bf16 vs float32 cutout masks (IoU, alpha difference) and CPU per mask
	@scripts/setup.sh --no-services
	@$(PY) -m bench.precision $(BENCH_ARGS)

bench-floor: ## CPU per request of a do-nothing app under the API's gunicorn worker vs. what 10x / 5,000 users allow
	@scripts/setup.sh --no-services
	@command -v wrk >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk >/dev/null; }
	@$(PY) -m bench.floor $(BENCH_ARGS)

capacity: ## Fleet size and monthly cost from the latest results (USERS=1000,10000,100000)
	@$(PY) -m bench.capacity --users $(CAPACITY_USERS)

bench-smoke: bench-services ## A 50-user, 20-second load test with zero errors allowed (CI)
	@$(VENV)/bin/pytest -m slow tests/test_bench_smoke.py $(PYTEST_ARGS)
