"""hfa_jax: gloss-free sign language translation (HFA + BeyondGloss) in JAX/Flax."""

from setuptools import find_packages, setup

# Pinned so a fresh clone reproduces the numbers in README.md and bench/RESULTS.md.
RUNTIME = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "ml-collections==1.1.0",
    "numpy==2.4.6",
    "transformers==5.23.0",
    "sentencepiece==0.2.3",
    "safetensors==0.8.0",
    "spacy==3.8.18",
    "HanTa==1.2.1",
    "jieba==0.42.1",  # Chinese (CSL-Daily) pseudo-glosses: segmenter + POS tagger, dictionary in the package
    "fasttext-numpy2==0.10.4",
    "tensorflow-datasets==4.9.10",
    "array-record==0.8.6",
    "grain==0.2.18",
    "sacrebleu==2.6.0",
    # 12.3.0, not 13: the newest Pillow that gradio (the [app] extra, tested in CI) accepts.
    "pillow==12.3.0",
    "tqdm==4.70.1",
    "tensorboardX==2.6.5",
    "matplotlib==3.11.2",
    "av==16.0.1",  # PyAV: video files in (its wheels ship FFmpeg)
]

TEST = [
    "pytest==8.4.2",  # pytest-xdist 3.8 cannot group tests (xdist_group) under pytest 9
    "pytest-xdist==3.8.0",
    # PyTorch reference models and independent metric implementations; tests only.
    "torch==2.13.0",
    "peft==0.21.2",
    "pycocoevalcap==1.2",
    "rouge-score==0.1.2",
    "hypothesis==6.155.2",  # property-based tests of the readers of untrusted files (tests/hostile)
]

# The web page (python -m hfa_jax.serve): pip install -e ".[app]".
APP = [
    "gradio==6.31.0",
    "gradio_client==2.7.2",
]
# The browser test drives the system's Chromium (never a downloaded one) with Playwright.
TEST += APP + ["playwright==1.65.2"]

# TensorBoard, to watch the scalars a run writes (docs/training.md): pip install -e ".[tensorboard]".
TENSORBOARD = ["tensorboard==2.21.0"]

# Building datasets on Apache Beam (data_prep.build_dataset; docs/asl.md): Beam's own runtime
# requirements. apache-beam itself is then installed with `pip install --no-deps
# apache-beam==2.78.0`: it declares protobuf<7 and pyarrow<26, while transformers 5.23 reads
# SentencePiece models only with protobuf >= 7.36; Beam runs on protobuf 7.36 and pyarrow 26 (the
# build tests pass on them). Without Beam, build_dataset runs the same shards on a process pool.
BEAM = [
    "beartype==0.22.9",
    "cryptography==51.0.1",
    "fastavro==1.13.1",
    "fasteners==0.20",
    "grpcio==1.85.4",
    "httplib2==0.32.1",
    "jsonpickle==4.1.4",
    "objsize==0.7.1",
    "proto-plus==1.29.0",
    "pymongo==4.20.1",
    "python-dateutil==2.9.0.post0",
    "pytz==2026.6",
    "sortedcontainers==2.4.0",
    "zstandard==0.25.0",
]
BEAM_NO_DEPS = "apache-beam==2.78.0"  # installed by .ci/run with --no-deps, see above
TEST += BEAM

# Compiling for TPU topologies on any machine (python -m hfa_jax.aot --topology=v5e:2x4) and
# running on TPU VMs: libtpu, pinned to the jax version above. The tests compile for v5e:2x2.
TPU = ["jax[tpu]==0.10.2", "libtpu==0.0.42.1"]
TEST += TPU

setup(
    name="hfa_jax",
    version="0.1.0",
    description="Gloss-free sign language translation (HFA, BeyondGloss) in JAX/Flax",
    python_requires=">=3.11",
    packages=find_packages(include=["hfa_jax", "hfa_jax.*", "data_prep", "data_prep.*", "configs"]),
    include_package_data=True,
    package_data={"hfa_jax": ["resources/**/*"], "data_prep": ["resources/**/*"]},
    install_requires=RUNTIME,
    extras_require={"test": TEST, "app": APP, "tpu": TPU, "tensorboard": TENSORBOARD, "beam": BEAM},
)
