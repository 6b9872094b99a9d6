"""Translate one signed video with a trained fine-tuning workdir.

    python -m hfa_jax.translate --workdir runs/finetune2 --frames path/to/frames_folder
    python -m hfa_jax.translate --workdir runs/finetune2 --frames clip.mp4     # needs PyAV

The workdir's ``config.json`` gives the model and the tokenizer; its best checkpoint the weights.
Frames are resized to the stored frame size of the training dataset (256 x 256 for PHOENIX14T),
centre-cropped and normalised exactly as in evaluation, then decoded with beam search.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

import numpy as np

from hfa_jax.errors import CheckpointError, ConfigError, DataError, cli_main

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp")


def read_frames(path: str, size: int) -> np.ndarray:
    """A folder of images (sorted by name) or a video file -> ``[T, size, size, 3] uint8``
    (bicubic resize, as data_prep.build_dataset does)."""
    from PIL import Image

    if os.path.isdir(path):
        files = sorted(f for f in glob.glob(os.path.join(path, "*")) if f.lower().endswith(IMAGE_EXTS))
        if not files:
            raise DataError(f"{path}: no {'/'.join(IMAGE_EXTS)} frames in this folder")
        images = []
        for f in files:
            with Image.open(f) as im:
                images.append(np.asarray(im.convert("RGB").resize((size, size), Image.BICUBIC)))
        return np.stack(images)
    if os.path.isfile(path):
        try:
            import av  # PyAV, optional
        except ImportError:
            raise DataError(f"{path}: reading video files needs PyAV (pip install av); or pass a folder "
                            "of frames") from None
        with av.open(path) as container:
            frames = [np.asarray(f.to_image().convert("RGB").resize((size, size), Image.BICUBIC))
                      for f in container.decode(video=0)]
        if not frames:
            raise DataError(f"{path}: the video has no frames")
        return np.stack(frames)
    raise DataError(f"{path}: no such folder or file; pass a folder of frames or a video file")


class Translator:
    """Loads a fine-tuning workdir once; ``translate(frames)`` -> sentence."""

    def __init__(self, workdir: str):
        import jax
        import ml_collections

        from hfa_jax.text import tokenizer as text_lib
        from hfa_jax.train import checkpoint as ckpt_lib
        from hfa_jax.train import state as state_lib
        from hfa_jax.train import trainer as trainer_lib

        cfg_path = os.path.join(workdir, "config.json")
        if not os.path.isfile(cfg_path):
            raise ConfigError(f"{workdir}: no config.json; pass the workdir of a fine-tuning run")
        with open(cfg_path) as f:
            config = ml_collections.ConfigDict(json.load(f))
        if config.train.stage == "pretrain":
            raise ConfigError(f"{workdir} is a pretraining run; translate with a fine-tuning workdir")
        self.config = config
        self.tokenizer = text_lib.load_tokenizer(config.data.tokenizer_dir, lang=config.data.get("lang", "de_DE"))
        self.model = trainer_lib.build_model(config, trainer_lib.model_config(config, tokenizer=self.tokenizer))
        try:
            state, meta = ckpt_lib.load_state_arrays(workdir, best=True)
        except CheckpointError:
            state, meta = ckpt_lib.load_state_arrays(workdir, best=False)
        self.step = meta.get("step")
        self.variables = state_lib.variables_from_state(state)
        self.crop = int(config.data.crop_size)
        self.size = self._stored_size(config)
        self.max_frames = int(config.data.max_frames)
        self.buckets = tuple(int(b) for b in config.data.buckets)
        ev = config.eval
        self._generate = jax.jit(lambda v, px, m: self.model.generate(
            v, px, m, num_beams=int(ev.num_beams), max_new_tokens=int(ev.max_new_tokens),
            length_penalty=float(ev.get("length_penalty", 1.0))).sequences)

    def _stored_size(self, config) -> int:
        try:
            from hfa_jax.data import pipeline

            src = pipeline.open_split(config.data.dataset_dir, config.data.train_split)
            return int(src.features["frames"].feature.shape[0])
        except Exception:  # dataset not on this machine: the 256/224 convention of SPEC §1
            return int(round(self.crop * 256 / 224))

    def translate(self, frames: np.ndarray) -> str:
        """frames: ``[T, size, size, 3] uint8`` -> the translation."""
        import jax.numpy as jnp

        from hfa_jax.data import augment
        from hfa_jax.data.pipeline import bucket_length

        if len(frames) > self.max_frames:
            if self.config.data.frame_selection == "first":  # HFA: the first max_frames frames
                frames = frames[: self.max_frames]
            else:  # trained on random subsamples: take an evenly spaced one (deterministic)
                frames = frames[np.linspace(0, len(frames) - 1, self.max_frames).round().astype(int)]
        t = bucket_length(len(frames), self.buckets)
        x = np.zeros((1, t) + frames.shape[1:], np.uint8)
        x[0, : len(frames)] = frames
        mask = np.zeros((1, t), bool)
        mask[0, : len(frames)] = True
        pixels = augment.augment(None, jnp.asarray(x), train=False, crop_size=self.crop)
        ids = np.asarray(self._generate(self.variables, pixels, jnp.asarray(mask)))
        return self.tokenizer.decode(ids)[0]


@cli_main
def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description="Translate a signed video (frames folder or video file).")
    p.add_argument("--workdir", required=True, help="a fine-tuning workdir (config.json + best/)")
    p.add_argument("--frames", required=True, help="folder of frames (sorted by name) or a video file")
    args = p.parse_args(argv)
    tr = Translator(args.workdir)
    sentence = tr.translate(read_frames(args.frames, tr.size))
    print(sentence)
    return sentence


if __name__ == "__main__":
    main(sys.argv[1:])
