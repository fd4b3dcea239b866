# Same-run A/B micro-benchmarks (bench/cache_bench.py, bench/profiler_bench.py; what they share: bench/ab.py);
# included by the top-level Makefile. Needs the local Postgres and Redis running (`make setup`); starts its own
# memcached and gunicorns.
MICRO_ARGS ?=

.PHONY: bench-cache bench-profiler
bench-cache: ## Cache off vs. on vs. on without the local LRU on GET /api/v1/items -> bench/results/cache.{json,md}
	@$(PY) -m bench.cache_bench $(MICRO_ARGS)

bench-profiler: ## Throughput with the profiler off vs. 100 Hz (native and thread clocks) -> bench/results/profiler.{json,md}
	@$(PY) -m bench.profiler_bench $(MICRO_ARGS)
