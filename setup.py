"""Installable package of the SN-Netv2 stitching engine and its projects."""
from setuptools import find_packages, setup

setup(
    name="snnet",
    version="0.1.0",
    description="SN-Netv2: stitched ViTs as flexible vision backbones (engine + detectron2/DPT projects)",
    python_requires=">=3.9",
    packages=find_packages(include=["snnet_core*", "projects*", "datasets*"]),
    install_requires=["torch", "timm", "fvcore", "tqdm", "matplotlib", "numpy"],
)
