"""Metadata lives in setup.cfg; this file only maps the two source roots (src/wardrobe and tasks/)."""

from setuptools import find_packages, setup

setup(
    package_dir={"": "src", "tasks": "tasks"},
    packages=find_packages("src") + find_packages(".", include=["tasks", "tasks.*"]),
)
