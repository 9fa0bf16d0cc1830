"""CLIP BPE tokenizer from a diffusers ``tokenizer/`` dir (vocab.json + merges.txt).

Built with the ``tokenizers`` library the same way transformers' CLIPTokenizerFast is:
NFC + whitespace squeeze + lowercase, CLIP's word regex, byte-level alphabet, ``</w>`` word
ends; then ``<|startoftext|> ... <|endoftext|>`` padded to 77.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edged.errors import ModelLoadError

MAX_LENGTH = 77
BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
_WORDS = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


class ClipTokenizer:
    """``encode(prompt) -> int64 [77]`` with CLIP's special tokens and padding."""

    def __init__(self, directory: Path, max_length: int = MAX_LENGTH) -> None:
        from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
        from tokenizers.models import BPE

        vocab, merges = directory / "vocab.json", directory / "merges.txt"
        if not vocab.is_file() or not merges.is_file():
            raise ModelLoadError(f"{directory}: needs vocab.json and merges.txt (a CLIP tokenizer)")
        model = BPE.from_file(
            str(vocab), str(merges), continuing_subword_prefix="", end_of_word_suffix="</w>"
        )
        tok = Tokenizer(model)
        tok.normalizer = normalizers.Sequence(
            [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
        )
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_WORDS), behavior="removed", invert=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False),
            ]
        )
        tok.decoder = decoders.ByteLevel()
        self._tok = tok
        self.max_length = max_length
        ids: dict[str, int] = json.loads(vocab.read_text("utf-8"))
        self.bos_id, self.eos_id = ids[BOS], ids[EOS]
        self.pad_id = ids.get(_pad_token(directory), self.eos_id)

    def encode(self, prompt: str) -> npt.NDArray[np.int64]:
        """Token ids of ``prompt``, truncated to fit, with BOS/EOS, padded to ``max_length``."""
        body = self._tok.encode(prompt, add_special_tokens=False).ids[: self.max_length - 2]
        ids = [self.bos_id, *body, self.eos_id]
        ids += [self.pad_id] * (self.max_length - len(ids))
        return np.asarray(ids, dtype=np.int64)

    def tokens(self, prompt: str) -> list[str]:
        """The BPE pieces (for debugging and tests)."""
        pieces: list[str] = self._tok.encode(prompt, add_special_tokens=False).tokens
        return pieces


def _pad_token(directory: Path) -> str:
    """SD 2.x pads with ``!`` (OpenCLIP); SD 1.x with EOS: read it from the tokenizer config."""
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = directory / name
        if path.is_file():
            data: dict[str, Any] = json.loads(path.read_text("utf-8"))
            pad = data.get("pad_token")
            if isinstance(pad, dict):
                pad = pad.get("content")
            if isinstance(pad, str):
                return pad
    return EOS
