"""Metadata lives in setup.cfg; this file maps the two source roots (src/wardrobe and tasks/) and builds the
profiler's native clock (optional: without a C compiler the profiler falls back to a Python sampler thread)."""

from setuptools import Extension, find_packages, setup

setup(
    package_dir={"": "src", "tasks": "tasks"},
    packages=find_packages("src") + find_packages(".", include=["tasks", "tasks.*"]),
    ext_modules=[
        Extension(
            "wardrobe.ops.profiling._ticker",
            ["src/wardrobe/ops/profiling/_ticker.c"],
            extra_compile_args=["-O2", "-std=c11", "-Wall"],
            optional=True,
        )
    ],
)
