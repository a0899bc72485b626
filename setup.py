"""Build glue pyproject.toml cannot express: the CUDA kernel sources live in the top-level ``cuda/``
folder and ship inside the wheel as the package ``evsnn._cuda_src``; ``evsnn.ops.cupy_runtime`` finds
them there in an installed wheel and in ``cuda/`` in a checkout or editable install. Everything else
is configured in pyproject.toml."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["evsnn", "evsnn.*"]), "evsnn._cuda_src"],
    package_dir={"evsnn._cuda_src": "cuda"},
    package_data={"evsnn._cuda_src": ["*.cu", "*.cuh"]},
)
