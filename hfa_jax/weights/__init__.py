"""Pretrained weights apart from the models: torch-free readers (torch_io) and the DINOv2 and
mBART conversions (dinov2, mbart)."""
