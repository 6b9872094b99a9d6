"""Pretrained weights apart from the models: torch-free readers (torch_io) and the DINOv2 and
mBART conversions (dinov2, mbart). The user-facing entry points::

    from hfa_jax.weights import dinov2 as vit, mbart
    vit_module, vit_vars = vit.from_hf("weights/dinov2-small")
    mbart_module, mbart_vars = mbart.from_hf("weights/mbart-large-cc25", vocab_map="...")

The converters import the models (:mod:`hfa_jax.models.vit`, :mod:`hfa_jax.models.mbart`); the
models never import them.
"""
