"""mdist: distil a multilingual encoder into monolingual student encoders."""
from setuptools import find_packages, setup

setup(
    name="mdist",
    version="0.1.0",
    description="Distilling multilingual encoders (XLM-R) into language-specific students with DeepSpeed",
    python_requires=">=3.10",
    packages=find_packages(include=["mdist", "mdist.*"]) + ["mdist.kernels", "mdist.ds_configs"],
    package_dir={"mdist": "mdist", "mdist.kernels": "kernels", "mdist.ds_configs": "ds_configs"},
    package_data={"mdist.recipes": ["*.yaml"], "mdist.studies": ["*.yaml"], "mdist.ds_configs": ["*.json"]},
    install_requires=[
        "torch>=2.4",
        "deepspeed>=0.15",
        "transformers>=4.46",
        "webdataset>=0.2.90",
        "sentencepiece>=0.2",
        "protobuf",
        "triton>=3.0",
        "mlflow>=2.16",
        "bert-score>=0.3.13",
        "pyyaml>=6",
        "tqdm",
        "matplotlib",
        "seqeval>=1.2",
    ],
    extras_require={"test": ["pytest>=8", "pytest-timeout"]},
    entry_points={"console_scripts": ["mdist=mdist.cli:main"]},
)
