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
    # Files read at run time through importlib.resources: they must be in the wheel, not only in the source tree
    # (tests/test_hub_card.py checks the declaration; .ci/wheel_smoke.sh renders a card from an installed wheel).
    package_data={"paka_hf.hub": ["templates/*.md"]},
    python_requires=">=3.10",
    # Lower bounds, each with its reason. Checked: the pins of requirements-ci.txt pass the suite; transformers 4.56.2
    # (+ huggingface-hub 0.36.2, datasets 3.6.0) imports every module but fails tests/test_modeling_backbone_families.py
    # (no DINOv3ViTImageProcessor; CLIP/SigLIP vision modules laid out differently), so transformers starts at 5.0.
    install_requires=[
        # untested below 2.4 (the torchvision.tv_tensors / transforms.v2 API used needs torchvision >= 0.16)
        "torch>=2.4",
        "torchvision>=0.19",  # the torchvision built for torch 2.4 (the two must match)
        # the 5.x model classes and module names of modeling/backbones.py (DINOv3ViTModel with
        # DINOv3ViTImageProcessor, Siglip2VisionModel, CLIP/SigLIP vision towers); activation_checkpointing (5.20)
        # is used only where present (commands/train.py, modeling/model.py)
        "transformers>=5.0",
        "datasets>=3.0",  # Image(decode=False), datasets.distributed.split_dataset_by_node
        "accelerate>=1.0",  # accelerate.utils.gather_object; transformers' Trainer needs >= 0.26
        "huggingface-hub>=1.0",  # the floor of transformers 5; ModelCard/SpaceCard and create_commit are older
        "evaluate>=0.4",  # evaluate.Metric for the shipped paka_mean_iou module
        "safetensors>=0.4.3",  # safe_open (hub/card.py); transformers 5 asks for a newer one itself
        "pillow>=10.0",
        "numpy>=1.24",
        "pyyaml>=6.0",
        "scipy>=1.10",
        "scikit-learn>=1.3",
        "tqdm>=4.60",
        "jinja2>=3.0",  # ModelCard.from_template renders the packaged template with Jinja
    ],
    extras_require={
        "test": ["pytest>=8.0", "selenium>=4.40"],  # selenium: the explorer's browser test
        # the feature explorer (paka-explore, paka_hf.apps.explorer) and its Hub Space
        "app": ["gradio>=6.0,<7"],
        # LoRA post-training (use_lora, paka_hf.modeling.lora)
        "peft": ["peft>=0.15"],
        # the NYUv2 labelled .mat file (MATLAB v7.3 = HDF5) of the depth probe (paka_hf.evaluation.depth)
        "depth": ["h5py>=3.0"],
        # the faiss k-NN backends of Hummingbird (--knn_backend faiss / faiss_ivf, paka_hf.evaluation.knn); 1.9 is the
        # first faiss-cpu wheel built for NumPy 2 (tested with the pin of requirements-ci.txt)
        "faiss": ["faiss-cpu>=1.9"],
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
