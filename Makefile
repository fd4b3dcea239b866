# Wardrobe — `make help` lists the targets. `make run` and `make test` set up whatever is missing first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export WARDROBE_DATA_DIR ?= $(CURDIR)/var
export WARDROBE_U2NET_HOME ?= $(WARDROBE_DATA_DIR)/models

.DEFAULT_GOAL := help
.PHONY: help setup services run test lint format token token-link migrate clean

# Benchmark targets (bench, bench-sweep, bench-compare, bench-jobs, capacity) live beside the load test.
-include bench/bench.mk bench/micro.mk
-include scripts/fleet/fleet.mk

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[1m%-16s\033[0m %s\n", $$1, $$2}'

setup: ## Install system packages, the virtualenv and the model; start Postgres, Redis, memcached; migrate
	@scripts/setup.sh

run: setup ## Run the whole stack on loopback in the foreground (WARDROBE_BIND, default 127.0.0.1:8000)
	@scripts/run.sh

test: ## Set up what is missing, then run the test suite against real services
	@scripts/setup.sh --no-services
	@scripts/services.sh start wardrobe_test
	@$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: ## Check formatting and lint with ruff, and the Ansible roles with ansible-lint
	@scripts/setup.sh --no-services
	@$(VENV)/bin/ruff format --check .
	@$(VENV)/bin/ruff check .
	@cd ansible && ../$(VENV)/bin/ansible-lint

format: ## Format and autofix with ruff
	@$(VENV)/bin/ruff format .
	@$(VENV)/bin/ruff check --fix .

token: ## Print an Authorization header for the local bot token (USER_ID=123)
	@$(VENV)/bin/wardrobe-token --user-id $(or $(USER_ID),123)

token-link: ## Print a link that opens the Mini App (/app/) signed in as USER_ID, for a browser beside `make run`
	@$(VENV)/bin/wardrobe-token --link --user-id $(or $(USER_ID),123)

migrate: ## Apply pending database migrations
	@$(VENV)/bin/wardrobe-migrate

clean: ## Remove local data (images, dev token, metrics) — not the database
	rm -rf var
