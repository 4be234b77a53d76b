"""SelVA Studio benchmarks: `python -m benchmarks.bench` (see README.md here)."""
