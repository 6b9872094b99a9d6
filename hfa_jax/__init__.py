"""hfa_jax: gloss-free sign language translation in JAX/Flax.

Hierarchical Feature Alignment (HFA, arXiv 2507.06732) with the BeyondGloss objectives
(arXiv 2507.23575). See README.md for the quick start and docs/ for the design.

``from hfa_jax import Translator`` gives :class:`hfa_jax.translator.Translator`; it is imported on
first use, so ``import hfa_jax`` alone loads neither JAX nor the models.
"""

import glob
import os

__version__ = "0.1.0"

__all__ = ["Translator", "__version__"]

# PCI ids of Google's TPU chips (vendor 0x1ae0), as JAX's own TPU detection lists them.
_TPU_PCI_IDS = frozenset({"0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076"})


def _tpu_present() -> bool:
    """Whether this machine may have a TPU: a Google TPU PCI device or an accelerator device
    node (read from /sys and /dev; JAX is not loaded)."""
    if glob.glob("/dev/accel*"):
        return True
    for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
        try:
            with open(vendor) as f:
                if f.read().strip() != "0x1ae0":
                    continue
            with open(os.path.join(os.path.dirname(vendor), "device")) as f:
                if f.read().strip() in _TPU_PCI_IDS:
                    return True
        except OSError:
            continue
    return False


def _quiet_tpu_probe() -> None:
    """With libtpu installed (the [test] and [tpu] extras), JAX tries the TPU backend at start-up
    and, on a machine without a TPU, libtpu prints about five lines of errors about the TPU
    worker hostnames and host bounds it cannot look up. Where there is no TPU, tell it the truth
    (one host, this one) so the failed probe is silent. Only where no TPU is present, no TPU
    platform is asked for and these variables are unset: real TPU errors are never hidden, and
    compiling for a TPU topology on a CPU machine (hfa_jax.aot) is unaffected."""
    if "tpu" in os.environ.get("JAX_PLATFORMS", "").lower() or _tpu_present():
        return
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_HOST_BOUNDS", "1,1,1")


_quiet_tpu_probe()


def __getattr__(name: str):
    if name == "Translator":
        from hfa_jax.translator import Translator

        return Translator
    raise AttributeError(f"module 'hfa_jax' has no attribute {name!r}")
