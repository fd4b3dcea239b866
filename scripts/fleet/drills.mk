# Drills on the fleet lab under steady load through its load balancer (issue 17, section 4). Needs root and a
# converged lab (make fleet-up). DRILLS=1,3 picks drills (all seven by default); DRILL_USERS and DRILL_SECONDS
# size the load (150 users, 150 s per drill).
.PHONY: fleet-test

fleet-test: ## Run the fault and deploy drills on the lab under load; writes bench/results/fleet-<stamp>.{json,md}
	@DRILLS="$(DRILLS)" DRILL_USERS="$(DRILL_USERS)" DRILL_SECONDS="$(DRILL_SECONDS)" \
		$(VENV)/bin/python scripts/fleet/drills.py
