# The two commands a new user needs: `make demo` and `make test`. Both set up .venv on first use.
.PHONY: demo test lint bench setup

setup:
	@scripts/bootstrap.sh

demo: setup
	.venv/bin/aiflow demo

# pytest exits 5 when it collects no test: that is a failure, not a pass. Two pytest workers: most
# of the slow tests wait on emulated links and daemons' schedules, not on the CPU (8.8 min against
# 15 min in one process on this 2-core machine). Tests that make network namespaces look only at their
# own process's (named aiflow-<pid>-...), so they may run beside each other. Tests marked `alone` (the
# Ray cluster's: Ray gives a starting node a fixed 30 s, which a CI run beside other tests overran) run
# after them, in one process.
test: setup
	@.venv/bin/python -m pytest -q -n 2 -m "not alone"; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; \
	.venv/bin/python -m pytest -q -m alone; rc2=$$?; \
	if [ $$rc2 -eq 5 ]; then echo "make test: pytest collected no test marked alone" >&2; exit 1; fi; \
	if [ $$rc -ne 0 ]; then exit $$rc; fi; exit $$rc2

lint: setup
	.venv/bin/ruff check .

bench: setup
	.venv/bin/python -m bench.planner_speed
