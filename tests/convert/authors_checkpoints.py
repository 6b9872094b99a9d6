"""Lightning checkpoints in the HFA authors' exact layout, for the conversion tests.

The modules are ``bench/reference_authors.py``: the authors' classes (elsobhano/MLLM ``psp-dino``:
``models/Pretrain_Model.py`` PreTrainModel.model = SLRCLIP, ``models/Finetune_Model.py``
FineTuneModel.model = gloss_free_model, ``models/clip_models.py``, ``psp_head.py``,
``models/spatial_models/frame_models/dino_adaptor_model.py``, ``models/dinov2/layers/*``) rebuilt
with their attribute names, and the real Hugging Face mBART under the real ``peft.get_peft_model``,
so ``state_dict()`` has their keys. Every learned tensor and BatchNorm statistic is then
overwritten with seeded values (LoRA B included, so the adapters matter); the buffers the code
computes (position tables, zero prototype, step counter) keep their computed values.

The BeyondGloss classes (elsobhano/BeyondGloss ``slt_framework/models/``: ``Pretrain_Model.py``
PreTrainModel.model = SLRCLIP, ``Pretrain_desc.py`` PreTrainModel.model = Desc_Clip,
``Finetune_Model.py`` FineTuneModel.model = gloss_free_model, all on ``clip_models.py``
FeatureExtracter) are built the same way; ``SLRCLIP.logit_scale_desc`` keeps its initial value
(it is never used, so never updated).

The checkpoint dict is what ``Trainer.save_checkpoint`` writes: ``epoch``, ``global_step``,
``pytorch-lightning_version``, ``state_dict``, ``hyper_parameters`` (with the ``argparse.Namespace``
FineTuneModel saves), ``optimizer_states``, ``lr_schedulers``, ``loops`` and ``callbacks``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import torch

from hfa_jax.models import hfa
from hfa_jax.train import checkpoint as ckpt_lib
from hfa_jax.train.state import variables_from_state

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from bench import reference_authors as ra  # noqa: E402

# Buffers the authors' code computes rather than learns (kept as computed).
COMPUTED = ("pos_embedding.pe", "rotary_emb.", "zero_embedding", "temperature", "num_batches_tracked",
            "logit_scale_desc")

TOKENIZER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "resources", "text",
                         "mbart-trimmed-gfslt")
TOKENIZER_VOCAB = 2454  # that tokenizer's vocabulary size


def randomise(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    seen = set()
    with torch.no_grad():
        for k, v in model.state_dict(keep_vars=True).items():
            if any(c in k for c in COMPUTED) or id(v) in seen:
                continue
            seen.add(id(v))  # tied embeddings: one draw
            v.data.copy_(torch.randn(v.shape, generator=g) * 0.2)
            if k.endswith("running_var"):
                v.data.abs_().add_(0.5)


def lightning_dict(model: torch.nn.Module, hyper_parameters: dict, step: int) -> dict:
    return {
        "epoch": 3,
        "global_step": step,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": model.state_dict(),
        "hyper_parameters": hyper_parameters,
        "optimizer_states": [{"state": {0: {"step": torch.tensor(5.0), "exp_avg": torch.zeros(3),
                                            "exp_avg_sq": torch.zeros(3)}},
                              "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "weight_decay": 0.01,
                                                "foreach": None, "params": [0]}]}],
        "lr_schedulers": [{"_anneal_func_type": "cos", "total_steps": 10, "last_epoch": 5}],
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 3, "completed": 3}}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'val_total_loss', 'mode': 'min'}":
                      {"best_model_score": torch.tensor(0.964), "dirpath": "outputs", "best_k_models": {}}},
    }


def pretrain_checkpoint(path: str, sizes: ra.Sizes, seed: int = 1) -> ra.PreTrainModel:
    """Writes a PreTrainModel checkpoint (class temperature 0.2, time temperature 0.3, logit scale 2)."""
    torch.manual_seed(seed)
    model = ra.PreTrainModel(sizes).eval()
    randomise(model, seed)
    head = model.model.model_images.head_model
    with torch.no_grad():
        head.class_temperature.fill_(0.2)
        head.time_temperature.fill_(0.3)
        model.model.logit_scale.fill_(2.0)
    torch.save(lightning_dict(model, {"config": "configs/config.yaml", "lr": 3e-4}, 120), path)
    return model


def finetune_checkpoint(path: str, sizes: ra.Sizes, seed: int = 2) -> ra.FineTuneModel:
    torch.manual_seed(seed)
    model = ra.FineTuneModel(sizes).eval()
    randomise(model, seed)
    hp = {"config": "configs/config.yaml", "args": argparse.Namespace(lr=1e-4, model_ckpt="pretrain.ckpt"),
          "eval_freq": 10, "csv_dire": None}
    torch.save(lightning_dict(model, hp, 77), path)
    return model


def beyondgloss_checkpoint(path: str, kind: str, sizes: ra.Sizes, seed: int = 3, sign_proj: bool = False):
    """Writes a BeyondGloss checkpoint: ``kind`` "pretrain" (Pretrain_Model.py), "pretrain_desc"
    (Pretrain_desc.py) or "finetune" (Finetune_Model.py; ``sign_proj`` as their config key)."""
    torch.manual_seed(seed)
    if kind == "finetune":
        model = ra.BeyondGlossFineTuneModel(sizes, sign_proj)
    else:
        model = (ra.BeyondGlossPreTrainModel if kind == "pretrain" else ra.BeyondGlossPretrainDesc)(sizes)
    model.eval()
    randomise(model, seed)
    if kind != "finetune":
        with torch.no_grad():
            model.model.logit_scale.fill_(2.0)
    hp = {"config": "configs/config.yaml", "lr": 3e-4, "landa_desc": 0.5, "landa_hamer": 0.3}
    torch.save(lightning_dict(model, hp, 40 + seed), path)
    return model


# ---------------------------------------------------------------------------------------------
# What the HFA and BeyondGloss conversion tests check the same way

TOL = 1e-4  # fp32 at reduced widths (the bar; measured differences are ~1e-7)


def load_workdir(wd: str):
    """(config dict, variables, checkpoint metadata) of a converted workdir."""
    with open(os.path.join(wd, "config.json")) as f:
        config = json.load(f)
    state, meta = ckpt_lib.load_state_arrays(wd)
    return config, variables_from_state(state), meta


def inputs(seed: int, b: int, t: int, lengths: list[int], size: int = 42):
    """(rng, pixels [b, t, size, size, 3] float32, frame mask [b, t] from ``lengths``)."""
    rng = np.random.default_rng(seed)
    pixels = rng.standard_normal((b, t, size, size, 3)).astype(np.float32)
    mask = np.arange(t)[None] < np.asarray(lengths)[:, None]
    return rng, pixels, mask


def assert_translation_logits_match(workdir: str, authors_model, vocab: int) -> None:
    """Teacher-forced logits of the converted workdir equal the authors' module's (``TOL``), on two
    clips of 6 and 3 frames and a decoder batch with padding."""
    config, variables, _ = load_workdir(workdir)
    model = hfa.build_model(hfa.HFAConfig.from_config(config["model"]), "translate")
    rng, pixels, mask = inputs(2, 2, 6, [6, 3])
    dec = rng.integers(3, vocab, (2, 5))
    dec_mask = np.ones((2, 5), bool)
    dec_mask[1, 3:] = False
    dec[~dec_mask] = 1
    frames, lengths = ra.frames_to_authors(pixels, mask)
    with torch.no_grad():
        theirs = authors_model(frames, lengths, torch.as_tensor(dec), torch.as_tensor(dec_mask.astype(np.int64))).numpy()
    ours = np.asarray(jax.jit(model.apply)(variables, jnp.asarray(pixels), jnp.asarray(mask),
                                           jnp.asarray(dec, jnp.int32), jnp.asarray(dec_mask)))
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, atol=TOL, rtol=0)


def assert_translates(workdir: str, tmp_path) -> None:
    """``hfa_jax.translate`` reads the converted workdir and translates a folder of 5 frames
    (short greedy decoding keeps it fast)."""
    from PIL import Image

    from hfa_jax import translate

    with open(os.path.join(workdir, "config.json")) as f:
        config = json.load(f)
    config["eval"].update(max_new_tokens=4, num_beams=1)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(config, f)
    rng = np.random.default_rng(3)
    clip = tmp_path / "clip"
    clip.mkdir()
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (60, 60, 3), dtype=np.uint8)).save(clip / f"{i:03d}.png")
    (name, sentence), = translate.main(["--workdir", workdir, "--frames", str(clip)])
    assert name == "clip" and isinstance(sentence, str) and len(sentence.split()) <= 4
