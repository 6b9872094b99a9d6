"""Tiny trained models and real encoded video for the application tests.

``write_with_pts``: a small video whose frames claim any timestamps.
``free_port``, ``save_screenshot``: for the page tests (a local server, its pictures in docs/).
``make_clips``: four SynthSign test clips (210x260 PNG folders at 25 fps) and their sentences.
``make_workdirs``: a pretraining workdir (pseudo-gloss head + prototypes, random) and a
fine-tuning workdir whose tiny model (the demo's ``:smoke`` sizes) was trained for a few hundred
cheap steps (all but the ViT, on its frame features) to tell these four clips apart, each with
its own sentence. Its outputs differ between the clips (the tests check at least three distinct
token sequences for the four), so "an encode gives the same tokens as its PNG folder" says the
decoded frames carry what the model reads. Both workdirs are written as the training loop writes
them (``config.json``, an orbax ``best/`` checkpoint with the train-state layout).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hfa_jax.data import augment
from hfa_jax.data import video as video_lib
from hfa_jax.models import hfa
from hfa_jax.models.heads import PseudoGlossHead
from hfa_jax.text import pseudo_glosses as pg_lib
from hfa_jax.text import tokenizer as text_lib
from hfa_jax.train import checkpoint as ckpt_lib
from hfa_jax.train.trainer import model_config
from hfa_jax.model_folder import training_preprocessing

RES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "resources", "text")
TOKENIZER = os.path.join(RES, "mbart-trimmed-gfslt")
TRAIN_STEPS = 600


def make_clips(root: str, n: int = 4) -> list[tuple[str, str]]:
    """(frame folder, sentence) of ``n`` SynthSign test clips under ``root``."""
    from data_prep.synthsign import generate
    from hfa_jax.data.annotations import read_phoenix14t

    generate(root, seed=0, max_per_split=n, splits=("test",), max_glosses=3, workers=1, progress=False)
    recs = read_phoenix14t(root, "test", check_frames=False)
    frames = {os.path.basename(d): d for d in glob.glob(os.path.join(root, "features", "*", "test", "*"))}
    return [(frames[r.name], r.translation) for r in recs][:n]


def tiny_config(tokenizer_dir: str, stage: str = "finetune2", init_from: str = ""):
    from configs import demo

    c = demo.get_config("smoke")
    c.unlock()
    del c["demo"]
    c.job = "train"
    c.train.stage = stage
    c.train.init_from = init_from
    c.data.tokenizer_dir = tokenizer_dir
    c.data.dataset_dir = ""  # no dataset on disk: the stored frame size follows crop_size * 256 / 224
    c.data.buckets = (32,)
    c.eval.max_new_tokens = 16
    c.eval.num_beams = 2
    return c


def _save(workdir: str, config, state: dict, step: int) -> None:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    ck = ckpt_lib.Checkpointer(workdir, keep=1, use_async=False, best_mode="max")
    ck.save_best(step, state, {"step": step, "stage": config.train.stage})
    ck.close()


def make_workdirs(root: str, clips: list[tuple[str, str]]) -> dict[str, str]:
    """Writes ``root/pretrain`` and ``root/finetune2`` (+ ``root/tokenizer``); returns their paths."""
    tok_dir = os.path.join(root, "tokenizer")
    shutil.copytree(TOKENIZER, tok_dir, dirs_exist_ok=True)
    tok = text_lib.load_tokenizer(tok_dir)
    pre_dir, ft_dir = os.path.join(root, "pretrain"), os.path.join(root, "finetune2")
    config = tiny_config(tok_dir, init_from=pre_dir)
    prep = training_preprocessing(config)
    cfg = model_config(config, tokenizer=tok)
    model = hfa.build_model(cfg, "translate")

    frames = [video_lib.select_frames(video_lib.read_clip(d, prep).frames, prep) for d, _ in clips]
    t = max(config.data.buckets)
    x = np.zeros((len(frames), t, prep.size, prep.size, 3), np.uint8)
    mask = np.zeros((len(frames), t), bool)
    for i, f in enumerate(frames):
        x[i, : len(f)], mask[i, : len(f)] = f, True
    tgt = tok.encode_targets([s for _, s in clips], 24)
    pixels = augment.augment(None, jnp.asarray(x), train=False, crop_size=prep.crop_size)
    variables = jax.jit(model.init)({"params": jax.random.key(0), "dropout": jax.random.key(1)}, pixels, jnp.asarray(mask),
                           jnp.asarray(tgt["decoder_input_ids"]), jnp.asarray(tgt["target_mask"]))
    # The ViT stays as initialised (its frame features are computed once); the rest trains on
    # them: a small program to compile, and the sentence still depends on the frames. BatchNorm
    # gets the features' own statistics, as a trained one would have.
    params = jax.device_get(variables["params"])
    fmask = jnp.asarray(mask)
    cls = model.apply(variables, pixels.reshape(-1, *pixels.shape[2:]), True, cls_only=True,
                      method=lambda m, p, d, cls_only: m.frame_encoder(p, d, cls_only=cls_only))
    feats = cls[:, 0].reshape(*pixels.shape[:2], -1)
    proj = model.apply(variables, feats, method=lambda m, f: m.frame_proj(f))
    valid = np.asarray(proj)[np.asarray(mask)]
    others = {k: v for k, v in variables.items() if k != "params"}
    others["batch_stats"] = {"frame_bn": {"mean": jnp.asarray(valid.mean(0)), "var": jnp.asarray(valid.var(0))}}
    dec_in, dec_mask = jnp.asarray(tgt["decoder_input_ids"]), jnp.asarray(tgt["target_mask"])
    labels = jnp.asarray(tgt["labels"])
    train = {k: v for k, v in params.items() if k != "frame_encoder"}
    tx = optax.adam(1e-2)
    opt = tx.init(train)

    def decode(m, f, fm, d, dm):  # HFATranslate.__call__ from the frame features on
        x = m.frame_bn(m.frame_proj(f), fm, use_running_average=True)
        y, tm = m.temporal(x, fm, True)[:2]
        return m.mbart.decode_full(d, m.mbart.encode(None, tm, inputs_embeds=m.mapper(y)), tm, dm)

    @jax.jit
    def step(train, opt):
        def loss_fn(tp):
            # deterministic: no dropout, so the trained function is the one translation runs
            logits = model.apply({"params": {**params, **tp}, **others}, feats, fmask, dec_in, dec_mask,
                                 method=decode)
            nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[..., None], -1)[..., 0]
            return (nll * dec_mask).sum() / dec_mask.sum()

        loss, g = jax.value_and_grad(loss_fn)(train)
        updates, opt = tx.update(g, opt, train)
        return optax.apply_updates(train, updates), opt, loss

    for _ in range(TRAIN_STEPS):
        train, opt, _ = step(train, opt)
    params = {**params, **jax.device_get(train)}
    others = jax.device_get(others)
    state = {"step": np.int32(TRAIN_STEPS), "trainable": params, "frozen": {},
             "batch_stats": others.get("batch_stats", {}),
             "buffers": {k: v for k, v in others.items() if k != "batch_stats"}}
    _save(ft_dir, config, state, TRAIN_STEPS)

    # The pretraining stage it descends from: the same visual side, a (random) pseudo-gloss head.
    vocab = sorted(["regen", "sonne", "wind", "schnee", "wolke", "nord"])
    pg_path = os.path.join(root, "pseudo_glosses.json")
    pg_lib.save_pseudo_glosses(pg_path, vocab, {}, {"source": "tests"})
    head = PseudoGlossHead(proto_dim=cfg.proto_dim)
    protos = jax.random.normal(jax.random.key(3), (len(vocab), cfg.proto_dim))
    full = jnp.concatenate([jnp.zeros((1, cfg.proto_dim)), protos], 0)
    y = jnp.zeros((1, 2, cfg.mbart.d_model))  # the head's input: temporal features [B, T', D]
    head_params = head.init({"params": jax.random.key(4)}, y, jnp.ones((1, 2), bool), full, True)["params"]
    trunk = {k: v for k, v in params.items() if k in ("frame_encoder", "frame_proj", "frame_bn", "temporal")}
    pre_cfg = tiny_config(tok_dir, stage="pretrain")
    pre_cfg.data.pseudo_glosses = pg_path
    pre_state = {"step": np.int32(1), "trainable": {"pg_head": jax.device_get(head_params),
                                                    "prototypes": np.asarray(protos)},
                 "frozen": trunk, "batch_stats": others.get("batch_stats", {}), "buffers": {}}
    _save(pre_dir, pre_cfg, pre_state, 1)
    return {"finetune2": ft_dir, "pretrain": pre_dir, "tokenizer": tok_dir}


def encode(folder: str, path: str, *, fps: float = 25.0, canvas: tuple[int, int] | None = None) -> str:
    """A PNG frame folder (25 fps) -> a video file. ``fps``: the file's rate (frames repeated by
    nearest timestamp); ``canvas (W, H)``: the clip scaled to the canvas height and centred on
    a grey background (a landscape webcam-like frame)."""
    from PIL import Image

    imgs = [Image.open(f).convert("RGB") for f in video_lib.frame_files(folder)]
    if canvas is not None:
        cw, ch = canvas
        w = int(round(imgs[0].width * ch / imgs[0].height))
        out = []
        for im in imgs:
            bg = Image.new("RGB", (cw, ch), (128, 128, 128))
            bg.paste(im.resize((w, ch), Image.Resampling.BICUBIC), ((cw - w) // 2, 0))
            out.append(bg)
        imgs = out
    arr = np.stack([np.asarray(i) for i in imgs])
    if fps != 25.0:
        n = int(np.floor((len(arr) - 1) / 25.0 * fps + 0.5)) + 1
        src = np.minimum(np.floor(np.arange(n) * 25.0 / fps + 0.5).astype(int), len(arr) - 1)
        arr = arr[src]
    video_lib.write_video(path, arr, fps, crf="18") if path.endswith(".mp4") else video_lib.write_video(path, arr, fps)
    return path


def write_with_pts(path: str, pts: list[int], tb: Fraction = Fraction(1, 1000), size: tuple[int, int] = (64, 48)) -> str:
    """Frames (a different grey each) whose packets claim the given presentation times (in
    ``tb`` units, in any order), as MJPEG in Matroska: every frame is a key frame, so the
    timestamps are the container's to claim (the decoding times stay 0, 1, 2, ...)."""
    import av

    with av.open(path, "w") as out:
        s = out.add_stream("mjpeg", rate=25)
        s.width, s.height, s.pix_fmt, s.time_base = size[0], size[1], "yuvj420p", tb
        for i, p in enumerate(pts):
            f = av.VideoFrame.from_ndarray(np.full((size[1], size[0], 3), (i * 37) % 256, np.uint8), format="rgb24")
            f.pts, f.time_base = i, Fraction(1, 25)
            for packet in s.encode(f):
                packet.time_base, packet.pts, packet.dts = tb, int(p), min(i, int(p))
                out.mux(packet)
        for packet in s.encode():
            out.mux(packet)
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def save_screenshot(page, tmp_path, name: str) -> None:
    """A full-page screenshot of a Playwright ``page`` (checked to hold a picture); with
    ``HFA_SCREENSHOT_DIR`` set, also copied there (how docs/images/<name> is refreshed)."""
    page.wait_for_timeout(500)
    shot = tmp_path / name
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("HFA_SCREENSHOT_DIR"):
        shutil.copy(shot, os.path.join(os.environ["HFA_SCREENSHOT_DIR"], name))
