"""Installable package of the SN-Netv2 stitching engine.

Only ``snnet_core`` is installed. The projects (``projects/``) and the data generators (``datasets/``) run from
the checkout (their scripts put it on ``sys.path``), so that names as generic as ``projects`` and ``datasets``
never shadow other packages (e.g. Hugging Face ``datasets``) in the user's environment."""
from setuptools import find_packages, setup

setup(
    name="snnet",
    version="0.1.0",
    description="SN-Netv2: stitched ViTs as flexible vision backbones (stitching engine)",
    python_requires=">=3.9",
    packages=find_packages(include=["snnet_core", "snnet_core.*"]),
    install_requires=["torch", "timm", "fvcore", "tqdm", "matplotlib", "numpy", "filelock"],
)
