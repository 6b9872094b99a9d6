"""hfa_jax: gloss-free sign language translation in JAX/Flax.

Hierarchical Feature Alignment (HFA, arXiv 2507.06732) with the BeyondGloss objectives
(arXiv 2507.23575). See README.md for the quick start and ../SPEC-derived configs in configs/.
"""

__version__ = "0.1.0"
