"""Conversion between the HFA authors' PyTorch Lightning checkpoints and hfa_jax workdirs
(``python -m hfa_jax.convert``; docs/coming_from_pytorch.md)."""
