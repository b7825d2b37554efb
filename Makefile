# Convenience targets; each wraps a script in scripts/ (which work without make too).
.PHONY: setup demo test bench clean
setup:
	bash scripts/setup.sh
demo:
	bash scripts/demo.sh
test:
	bash scripts/test.sh
bench: setup
	.venv/bin/python bench/train_throughput.py --preset cpu-d1024
clean:
	rm -rf runs .cache .pytest_cache
