# Same-run A/B micro-benchmarks (bench/micro.py); included by the top-level Makefile.
# Needs the local Postgres and Redis running (`make setup`); starts its own memcached and gunicorns.
MICRO_ARGS ?=

.PHONY: bench-cache bench-profiler
bench-cache: ## Cache off vs. on vs. on without the local LRU on GET /api/v1/items -> bench/results/cache.{json,md}
	@$(PY) -m bench.micro cache $(MICRO_ARGS)

bench-profiler: ## Throughput with the profiler at 100 Hz vs. off -> bench/results/profiler.{json,md}
	@$(PY) -m bench.micro profiler $(MICRO_ARGS)
