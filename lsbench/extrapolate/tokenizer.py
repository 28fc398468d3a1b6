"""Byte-level tokenizer: token = byte value (0..255) plus a few specials, so nothing is
downloaded and any UTF-8 text round-trips exactly."""

from __future__ import annotations

import torch

N_BYTES = 256
EOS = 256  # separates documents (files) in a stream
PAD = 257  # reserved; never scored
VOCAB_SIZE = 258


class ByteTokenizer:
    vocab_size = VOCAB_SIZE
    eos_id = EOS
    pad_id = PAD

    def encode(self, text: str | bytes) -> torch.Tensor:
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        return torch.frombuffer(bytearray(data), dtype=torch.uint8).to(torch.int16)

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else ids
        return bytes(i for i in ids if 0 <= i < N_BYTES).decode("utf-8", errors="replace")

    def encode_documents(self, docs: list[bytes]) -> torch.Tensor:
        """Concatenate documents into one int16 stream, EOS after each."""
        if not docs:
            return torch.zeros(0, dtype=torch.int16)
        parts = []
        eos = torch.tensor([EOS], dtype=torch.int16)
        for doc in docs:
            parts += [self.encode(doc), eos]
        return torch.cat(parts)
