# Same-run A/B micro-benchmarks (bench/cache_bench.py, bench/profiler_bench.py; what they share: bench/ab.py);
# included by the top-level Makefile. Needs the local Postgres and Redis running (`make setup`); starts its own
# memcached and gunicorns.
MICRO_ARGS ?=

.PHONY: bench-cache bench-profiler
bench-cache: ## Cache off vs. on vs. on without the local LRU on GET /api/v1/items -> bench/results/cache.{json,md}
	@$(PY) -m bench.cache_bench $(MICRO_ARGS)

bench-profiler: ## Throughput with the profiler off vs. 100 Hz (native and thread clocks) -> bench/results/profiler.{json,md}
	@$(PY) -m bench.profiler_bench $(MICRO_ARGS)

.PHONY: bench-brands bench-version
bench-brands: ## Brand autocomplete: µs per query, difflib scan vs. indexed catalogue (+ LRU) -> bench/results/brands.{json,md}
	@$(PY) -m bench.brands_bench $(MICRO_ARGS)

bench-version: ## List reads with the wardrobe version from Postgres vs. memcached -> bench/results/version.{json,md}
	@$(PY) -m bench.version_bench $(MICRO_ARGS)

.PHONY: bench-session
bench-session: ## API CPU per request on the session mix, HEAD vs. the working tree -> bench/results/session.{json,md}
	@$(PY) -m bench.session_ab $(MICRO_ARGS)

.PHONY: bench-api
STEPS ?= 500,1000,1500,2000
STEP_SECONDS ?= 15
bench-api: ## Users per API core: API on core 1, the rest on core 0, STEPS (STEP_SECONDS each) beside the floor and a minimal app -> bench/results/api-*
	@scripts/services.sh start wardrobe_bench_api
	@$(PY) -m bench.api_capacity --steps $(STEPS) --step-seconds $(STEP_SECONDS) $(MICRO_ARGS)

.PHONY: bench-partitioning
bench-partitioning: ## Hot item queries at 100,000 users, items unpartitioned vs hash-partitioned by user_id -> bench/results/partitioning.{json,md}
	@$(PY) -m bench.partitioning $(MICRO_ARGS)
