import re
from pathlib import Path

from setuptools import find_packages, setup

VERSION = re.search(r'^__version__ = "([^"]+)"', Path("paka_hf/__init__.py").read_text(), re.M).group(1)

setup(
    name="paka_hf",
    version=VERSION,
    description="PaKA (Patch-level Kernel Alignment) post-training of vision transformers' dense features on the Hugging Face stack",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["paka_hf", "paka_hf.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "transformers>=4.56",
        "datasets>=3.0",
        "accelerate>=1.0",
        "huggingface-hub>=0.34",
        "evaluate>=0.4",
        "safetensors>=0.4",
        "pillow>=10.0",
        "numpy>=1.24",
        "pyyaml>=6.0",
        "scipy>=1.10",
        "scikit-learn>=1.3",
        "tqdm>=4.60",
        "jinja2>=3.0",
    ],
    extras_require={
        "test": ["pytest>=8.0", "selenium>=4.40"],  # selenium: the explorer's browser test
        # the feature explorer (paka-explore, paka_hf.apps.explorer) and its Hub Space
        "app": ["gradio>=6.0,<7"],
        # LoRA post-training (use_lora, paka_hf.modeling.lora)
        "peft": ["peft>=0.15"],
    },
    entry_points={
        "console_scripts": [
            "paka-train = paka_hf.commands.train:cli_main",
            "paka-evaluate = paka_hf.commands.evaluate:cli_main",
            "paka-push = paka_hf.commands.push:cli_main",
            "paka-visualize = paka_hf.commands.visualize:cli_main",
            "paka-explore = paka_hf.commands.explore:cli_main",
        ]
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
