"""Only the package list, which pyproject.toml cannot express: every package under composer/,
plus routers/ and evals/ installed as composer.routers and composer.evals (see package-dir)."""

from setuptools import find_packages, setup

setup(packages=find_packages(include=["composer", "composer.*"]) + ["composer.routers", "composer.evals"])
