# The fleet lab (issue 17): real Debian 12 hosts booted as systemd-nspawn containers on this machine, provisioned
# by the project's playbooks. Needs root. State lives in var/fleet/ (the cached base survives fleet-down).
.PHONY: fleet-up fleet-hosts fleet-wheelhouse fleet-provision fleet-down fleet-kill fleet-boot fleet-status fleet-smoke

FLEET := $(VENV)/bin/python scripts/fleet/lab.py
# The lab's vault password is a committed lab-only test password (see ansible/inventories/lab/group_vars/all/).
FLEET_ANSIBLE_ENV := ANSIBLE_VAULT_PASSWORD_FILE=inventories/lab/vault-password.txt
# Lab-only plays (the object store) run before site.yml, so the API finds its store when it starts.
FLEET_LAB_PLAYBOOKS := $(notdir $(wildcard ansible/lab/*.yml))

fleet-up: fleet-hosts fleet-wheelhouse fleet-provision ## Build and boot the lab, then provision it with site.yml

fleet-hosts: ## Boot the lab's hosts (base, bridge, firewall, apt proxy) without provisioning them
	@$(FLEET) up

fleet-wheelhouse: ## Build dist/wheelhouse/: the wardrobe wheel and its dependencies for the hosts' Python
	@$(VENV)/bin/python scripts/fleet/wheelhouse.py

fleet-provision: ## Run the lab-only plays and site.yml against the booted lab
	@cd ansible && for play in $(addprefix lab/,$(FLEET_LAB_PLAYBOOKS)) site.yml; do \
		$(FLEET_ANSIBLE_ENV) ../$(VENV)/bin/ansible-playbook -i inventories/lab $$play || exit 1; done

fleet-down: ## Stop and remove the lab (hosts, mounts, bridge, firewall table, apt proxy); keeps the cached base
	@$(FLEET) down

fleet-kill: ## Kill a lab host hard, as a power cut (HOST=api2); it stays down
	@$(FLEET) kill $(or $(HOST),$(error HOST=<name> is required, e.g. HOST=api2))

fleet-boot: ## Boot a lab host again on its kept disk (HOST=api2)
	@$(FLEET) boot $(or $(HOST),$(error HOST=<name> is required, e.g. HOST=api2))

fleet-status: ## List the lab's hosts: address, up/down, ssh reachable
	@$(FLEET) status
-include scripts/fleet/drills.mk

fleet-smoke: ## One user's upload end to end through the lab's LB: job done, every API host agrees, images served
	@$(VENV)/bin/python scripts/fleet/smoke.py
