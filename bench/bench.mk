# Benchmark targets; included by the top-level Makefile.
.PHONY: bench
bench: ## Load test the whole stack (USERS=1000 DURATION=120)
	@echo "bench: not written yet" >&2; exit 1
