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
    # pip install -e .[export]: ONNX export and the onnxruntime predictor (pinned versions in
    # requirements-extra.txt, which tools/setup_env.sh installs).
    extras_require={"export": ["onnx>=1.16", "onnxruntime>=1.17"]},
    license="Apache-2.0",
)
