"""Performance benchmarks: `python -m slmops.bench` (what `make bench` runs).

Each benchmark measures a value and its baseline in the same run; the results
go to `build/bench/results.json` and `build/bench/report.md`.
"""
