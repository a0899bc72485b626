"""Build glue pyproject.toml cannot express: the CUDA kernel sources live in the top-level ``cuda/``
folder and ship inside the package as ``evsnn._cuda_src`` (found with importlib.resources from an
editable install and from a built wheel alike). Everything else is configured in pyproject.toml."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["evsnn", "evsnn.*"]), "evsnn._cuda_src"],
    package_dir={"evsnn._cuda_src": "cuda"},
    package_data={"evsnn._cuda_src": ["*.cu", "*.cuh"]},
)
