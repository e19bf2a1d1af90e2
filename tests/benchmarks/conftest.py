# The benchmarks are a script (python tests/benchmarks/run.py), not a test module: keep pytest out.
collect_ignore_glob = ["*.py"]
