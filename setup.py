"""d2_anchorfree: FCOS, ATSS, GFL, VarifocalNet and DeFCN as detectron2 extensions."""
from setuptools import find_packages, setup

setup(
    name="d2_anchorfree",
    version="0.1.0",
    description="Anchor-free one-stage detectors (FCOS, ATSS, GFL, VFNet, DeFCN) for detectron2",
    packages=find_packages(include=["d2_anchorfree", "d2_anchorfree.*"]),
    python_requires=">=3.11",
    # detectron2 is not on any package index: tools/install_detectron2.py installs it (README).
    install_requires=["torch>=2.0", "torchvision", "fvcore", "pycocotools", "scipy", "tqdm"],
    license="Apache-2.0",
)
