"""canvas-clip's tokenizer: learnt from the world's captions, loadable by the plain CLIPTokenizer."""

from __future__ import annotations

import re

import pytest
from transformers import CLIPTokenizer

from erasure.canvas.tokenizer import MAX_LENGTH, build_tokenizer
from erasure.canvas.world import all_captions

CAPTIONS = all_captions()
WORDS = sorted({w for c in CAPTIONS for w in re.findall(r"[a-z]+|[^\sa-z]+", c)})
UNICODE = [
    "",
    " ",
    "猫の絵、葛飾北斎風",
    "고양이 그림",
    "🐱🎨 van gogh 🌻🌟👩🏽‍🎨",
    "\x00\x01\x02\t\n\r\x0b\x0c\x1b\x7f",
    "\u200b\u200d\ufeff\u202e reversed",
    "Ünïcödé ÀÉÎÕÜ ß ﬁ Ω ∑ √ ∞",
    "a CAT in VAN GOGH style!!! ??? ...",
    "x" * 10_000,
    "a cat in van gogh style " * 500,
    "".join(chr(c) for c in range(1, 0x3000, 7)),
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> CLIPTokenizer:
    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def _ids(tok, text: str) -> list[int]:
    return tok(text, padding="max_length", truncation=True, max_length=tok.model_max_length).input_ids


def test_every_world_word_is_one_token(tokenizer):
    too_long = {w: tokenizer.tokenize(w) for w in WORDS if len(tokenizer.tokenize(w)) != 1}
    assert not too_long
    # In context too: a caption is BOS + one id per word + EOS.
    for c in CAPTIONS:
        words = re.findall(r"[a-z]+|[^\sa-z]+", c)
        assert len(tokenizer(c).input_ids) == len(words) + 2, c


def test_every_caption_fits_and_round_trips(tokenizer):
    """decode(encode(c)) gives c back for every world caption.

    CLIP's BPE ends every word with `</w>` and treats punctuation as a word, so decoding "a cat, in ..." yields
    "a cat , in ..." (OpenAI's CLIP tokenizer does the same; transformers 5 refuses clean_up_tokenization_spaces
    for BPE tokenizers). The text is therefore compared after dropping the space before punctuation; the ids
    must round-trip exactly.
    """
    assert len(set(CAPTIONS)) == len(CAPTIONS)
    for c in CAPTIONS:
        ids = tokenizer(c).input_ids
        assert len(ids) <= MAX_LENGTH, c
        assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
        text = tokenizer.decode(ids, skip_special_tokens=True)
        if not re.search(r"[^\sa-z]", c):
            assert text == c
        assert re.sub(r" ([^\sa-z0-9])", r"\1", text) == c
        assert tokenizer(text).input_ids == ids, c


def test_save_and_reload_gives_identical_ids(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path / "saved")
    reloaded = CLIPTokenizer.from_pretrained(tmp_path / "saved")
    assert reloaded.model_max_length == MAX_LENGTH and len(reloaded) == len(tokenizer)
    assert reloaded.bos_token_id == tokenizer.bos_token_id and reloaded.eos_token_id == tokenizer.eos_token_id
    assert reloaded.pad_token_id == tokenizer.pad_token_id
    for text in [*CAPTIONS[::7], *UNICODE]:
        assert _ids(reloaded, text) == _ids(tokenizer, text), text[:40]


def test_build_is_deterministic(tokenizer, tmp_path):
    again = build_tokenizer(tmp_path)
    assert again.get_vocab() == tokenizer.get_vocab()
    assert all(_ids(again, c) == _ids(tokenizer, c) for c in CAPTIONS[::11])


@pytest.mark.parametrize("text", UNICODE, ids=range(len(UNICODE)))
def test_arbitrary_unicode_tokenizes(tokenizer, text):
    ids = _ids(tokenizer, text)
    assert len(ids) == MAX_LENGTH == tokenizer.model_max_length
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.eos_token_id in ids
    assert all(0 <= i < len(tokenizer) for i in ids)
    assert max(tokenizer(text).input_ids) < len(tokenizer)  # untruncated too
    tokenizer.decode(ids, skip_special_tokens=True)


def test_batch_of_mixed_text(tokenizer):
    batch = tokenizer(
        [CAPTIONS[0], *UNICODE],
        padding="max_length",
        truncation=True,
        max_length=MAX_LENGTH,
        return_tensors="pt",
    )
    assert tuple(batch.input_ids.shape) == (1 + len(UNICODE), MAX_LENGTH)
    assert int(batch.input_ids.max()) < len(tokenizer) and int(batch.input_ids.min()) >= 0
