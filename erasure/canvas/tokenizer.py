"""A small byte-level BPE vocabulary for canvas-clip, learnt from the world's captions.

CLIP's tokenizer format (vocab.json + merges.txt, byte-to-unicode symbols, `</w>` word ends) so that the plain
`transformers.CLIPTokenizer` loads it. Merges are learnt by ordinary BPE on every world caption until each world
word is one token; all 256 bytes stay in the vocabulary, so any other text (any unicode) still tokenizes.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from itertools import pairwise
from pathlib import Path

from transformers import CLIPTokenizer

from erasure.canvas.world import all_captions

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 32
# CLIP's pre-tokenisation pattern, restricted to what the world's captions contain.
_WORD = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\sa-z0-9]+")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP's reversible map from bytes to printable unicode characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, map(chr, chars)))


def learn_bpe(texts: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges: byte symbols, byte symbols + `</w>`, then merges until every word is one symbol."""
    byte_map = bytes_to_unicode()
    words = Counter(w for text in texts for w in _WORD.findall(text.lower()))
    split = {
        w: tuple(byte_map[b] for b in w.encode("utf-8")[:-1]) + (byte_map[w.encode("utf-8")[-1]] + "</w>",)
        for w in words
    }
    merges: list[tuple[str, str]] = []
    while True:
        pairs: Counter = Counter()
        for w, symbols in split.items():
            for a, b in pairwise(symbols):
                pairs[a, b] += words[w]
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(best)
        for w, symbols in split.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            split[w] = tuple(out)
    base = list(byte_map.values())
    tokens = base + [c + "</w>" for c in base] + ["".join(m) for m in merges]
    tokens = list(dict.fromkeys(tokens)) + [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}, merges


def build_tokenizer(directory: str | Path) -> CLIPTokenizer:
    """Write vocab.json and merges.txt learnt from the world into `directory` and load them as a CLIPTokenizer."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab, merges = learn_bpe(all_captions())
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=EOS,
        pad_token=EOS,
        model_max_length=MAX_LENGTH,
    )
