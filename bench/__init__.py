"""Load scenarios, baselines and the report: `make bench` (or `python -m bench.run`)."""
