"""composer's evaluations: offline router evals, live benchmark runs, leaderboard, benchmarks.

Installed as `composer.evals` (pyproject.toml maps this folder there).
"""
