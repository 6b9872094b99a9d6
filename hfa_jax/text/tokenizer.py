"""mBART tokeniser wrapper: sentences -> fixed-shape id arrays, and ids -> sentences.

The model side of HFA uses mBART-large-cc25 (docs/text.md): `src_lang = tgt_lang = de_DE`
(`zh_CN` for CSL-Daily). The conventions, identical to transformers' `MBartTokenizer` and
`modeling_mbart.shift_tokens_right` that the reference code uses:

* labels            = tokens + [</s>, lang]                (then padded with <pad>)
* decoder_input_ids = [lang] + tokens + [</s>]             (labels shifted right; the last
                                                            non-pad label wraps to position 0)
* source input_ids  = tokens + [</s>, lang]                (mBART source convention)

Id layout is fairseq's: `<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3, then the SentencePiece pieces
(SentencePiece id + 1), then the 25 language codes, then `<mask>`. The folder is a transformers
mBART tokenizer folder (`sentencepiece.bpe.model` + json files): the real
`facebook/mbart-large-cc25`, a trimmed copy written by `data_prep.trim_vocab`, or a small
SentencePiece model trained by `data_prep.trim_vocab --train_sentencepiece` for offline use.

Text is NFKC-normalised before encoding. Why: the mBART SentencePiece model normalises with
`nmt_nfkc`, but transformers 5.x's `MBartTokenizer` (a `tokenizers` Unigram without a
normaliser) skips that step, so e.g. a decomposed umlaut `a + U+0308` would map to `<unk>`.
With NFKC first, the ids equal SentencePiece's own (+1 fairseq offset); tested on every
PHOENIX14T sentence.

This module never imports torch (transformers' tokenizer classes do not need it).
"""

from __future__ import annotations

import os
import unicodedata
from typing import Sequence

import numpy as np

from hfa_jax.errors import ConfigError, DataError

SPM_FILE = "sentencepiece.bpe.model"

# The 25 mBART-cc25 language codes, in fairseq order (appended after the pieces).
FAIRSEQ_LANGUAGE_CODES = (
    "ar_AR", "cs_CZ", "de_DE", "en_XX", "es_XX", "et_EE", "fi_FI", "fr_XX", "gu_IN", "hi_IN",
    "it_IT", "ja_XX", "kk_KZ", "ko_KR", "lt_LT", "lv_LV", "my_MM", "ne_NP", "nl_XX", "ro_RO",
    "ru_RU", "si_LK", "tr_TR", "vi_VN", "zh_CN",
)


def normalize_text(text: str) -> str:
    """NFKC, as SentencePiece's `nmt_nfkc` rule does before segmentation."""
    return unicodedata.normalize("NFKC", text)


def shift_right(labels: np.ndarray, pad_id: int) -> np.ndarray:
    """mBART's `shift_tokens_right` in NumPy: the last non-pad token of each row moves to
    position 0 and everything else shifts one step right.

    labels: [N, L] int -> [N, L] int32. For labels `tokens + </s> + lang` this gives
    `lang + tokens + </s>`; rows that end in padding keep their padding.
    """
    labels = np.asarray(labels)
    out = np.empty(labels.shape, np.int32)
    last = (labels != pad_id).sum(axis=1) - 1  # index of the last non-pad token
    out[:, 0] = labels[np.arange(labels.shape[0]), np.maximum(last, 0)]
    out[:, 1:] = labels[:, :-1]
    return out


class Tokenizer:
    """Thin, array-producing wrapper over transformers' `MBartTokenizer`.

    Attributes: `vocab_size` (all ids incl. language codes and `<mask>`), `pad_id`, `eos_id`,
    `bos_id`, `unk_id`, `lang_id` (the id of `lang`), `lang`, `special_ids` (frozenset).
    """

    def __init__(self, hf_tokenizer, lang: str = "de_DE", folder: str = ""):
        self.hf = hf_tokenizer
        self.folder = folder
        self.lang = lang
        self.vocab_size: int = len(hf_tokenizer)
        self.pad_id: int = int(hf_tokenizer.pad_token_id)
        self.eos_id: int = int(hf_tokenizer.eos_token_id)
        self.bos_id: int = int(hf_tokenizer.bos_token_id)
        self.unk_id: int = int(hf_tokenizer.unk_token_id)
        self.lang_id: int = int(hf_tokenizer.convert_tokens_to_ids(lang))
        lang_ids = {int(hf_tokenizer.convert_tokens_to_ids(c)) for c in FAIRSEQ_LANGUAGE_CODES}
        mask_id = int(hf_tokenizer.convert_tokens_to_ids("<mask>"))
        self.special_ids = frozenset({self.bos_id, self.pad_id, self.eos_id, self.unk_id, mask_id}
                                     | lang_ids)

    # ---------------------------------------------------------------- encoding
    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Piece ids of each text, without any special token."""
        texts = [normalize_text(t) for t in _check_texts(texts)]
        if not texts:
            return []
        return [list(ids) for ids in
                self.hf(texts, add_special_tokens=False)["input_ids"]]

    def _with_suffix(self, texts: Sequence[str], max_len: int) -> np.ndarray:
        """[N, max_len] int32: tokens (truncated to max_len - 2) + </s> + lang, padded."""
        if max_len < 3:
            raise ConfigError(f"max_len={max_len} is too small; it must hold at least one token "
                              "plus </s> and the language code (>= 3)")
        pieces = self.tokenize(texts)
        out = np.full((len(pieces), max_len), self.pad_id, np.int32)
        for i, ids in enumerate(pieces):
            # Truncate the pieces but keep the specials, as transformers' truncation does.
            row = ids[: max_len - 2] + [self.eos_id, self.lang_id]
            out[i, : len(row)] = row
        return out

    def encode_targets(self, texts: Sequence[str], max_len: int) -> dict[str, np.ndarray]:
        """Decoder targets for teacher forcing.

        Returns `labels [N, L] int32` (tokens + </s> + lang, padded with pad_id),
        `decoder_input_ids [N, L] int32` (lang + tokens + </s>: labels shifted right),
        `target_mask [N, L] bool` (True where labels are not padding).
        """
        labels = self._with_suffix(texts, max_len)
        return {
            "labels": labels,
            "decoder_input_ids": shift_right(labels, self.pad_id),
            "target_mask": labels != self.pad_id,
        }

    def encode_source(self, texts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """Encoder input (frozen text encoder): `input_ids [N, L] int32` = tokens + </s> + lang,
        `attention_mask [N, L] bool` (True = real token)."""
        ids = self._with_suffix(texts, max_len)
        return ids, ids != self.pad_id

    # ---------------------------------------------------------------- decoding
    def decode(self, ids) -> list[str]:
        """ids: [N, L] ints (NumPy/JAX array or list of lists) -> N sentences.

        Each row is cut at its first `</s>` after position 0 (generated rows start with the
        decoder start token and end in `</s>` + padding), then every special id (`<s>`, `<pad>`,
        `</s>`, `<unk>`, language codes, `<mask>`) is dropped, as
        `batch_decode(skip_special_tokens=True)` does in the reference code.
        """
        if not isinstance(ids, (list, tuple)):
            ids = np.asarray(ids).tolist()  # NumPy / JAX arrays
        rows = [list(map(int, r)) for r in ids]
        out = []
        for row in rows:
            kept: list[int] = []
            for pos, t in enumerate(row):
                if t == self.eos_id and pos > 0:
                    break
                if t not in self.special_ids:
                    kept.append(t)
            out.append(self.hf.decode(kept, skip_special_tokens=True,
                                      clean_up_tokenization_spaces=False).strip())
        return out


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise DataError("expected a list of sentences, got one string; wrap it in a list")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise DataError(f"sentence {i} is {type(t).__name__}, not str; pass decoded text")
    return out


def load_tokenizer(folder: str, lang: str = "de_DE") -> Tokenizer:
    """Load an mBART tokenizer folder (offline). `lang`: de_DE (PHOENIX14T) or zh_CN (CSL-Daily).

    Raises ConfigError if the folder or its `sentencepiece.bpe.model` is missing, or if `lang`
    is not an mBART-cc25 language code.
    """
    if lang not in FAIRSEQ_LANGUAGE_CODES:
        raise ConfigError(f"unknown mBART language code {lang!r}; use one of "
                          f"{', '.join(FAIRSEQ_LANGUAGE_CODES)}")
    if not os.path.isdir(folder):
        raise ConfigError(f"tokenizer folder {folder!r} does not exist; pass the mBART folder "
                          "(facebook/mbart-large-cc25, a trim_vocab output, or a trained demo one)")
    if not os.path.isfile(os.path.join(folder, SPM_FILE)):
        raise ConfigError(f"tokenizer folder {folder!r} has no {SPM_FILE}; it is not an mBART "
                          "tokenizer folder")
    from transformers import MBartTokenizer  # local: keeps `import hfa_jax.data` light

    try:
        hf = MBartTokenizer.from_pretrained(folder, src_lang=lang, tgt_lang=lang)
    except Exception as e:  # transformers raises many types for a broken folder
        raise ConfigError(f"cannot load mBART tokenizer from {folder!r}: "
                          f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    tok = Tokenizer(hf, lang=lang, folder=folder)
    if (tok.bos_id, tok.pad_id, tok.eos_id, tok.unk_id) != (0, 1, 2, 3):
        raise ConfigError(f"tokenizer in {folder!r} does not use fairseq's special ids "
                          "<s>=0 <pad>=1 </s>=2 <unk>=3; rebuild it with data_prep.trim_vocab")
    return tok
