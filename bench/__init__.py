"""Benchmarks of aetherium-hpc: ``python -m bench`` runs them all (bench/suite.py); each script also runs alone."""
