"""hfa_jax: gloss-free sign language translation in JAX/Flax.

Hierarchical Feature Alignment (HFA, arXiv 2507.06732) with the BeyondGloss objectives
(arXiv 2507.23575). See README.md for the quick start and docs/ for the design.

``from hfa_jax import Translator`` gives :class:`hfa_jax.translator.Translator`; it is imported on
first use, so ``import hfa_jax`` alone loads neither JAX nor the models.
"""

__version__ = "0.1.0"

__all__ = ["Translator", "__version__"]


def __getattr__(name: str):
    if name == "Translator":
        from hfa_jax.translator import Translator

        return Translator
    raise AttributeError(f"module 'hfa_jax' has no attribute {name!r}")
