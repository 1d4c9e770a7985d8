"""DocumentEncoder: the sentencepiece fast path gives the teacher tokenizer's ids."""
from pathlib import Path

import pytest

from mdist.data.encoding import DocumentEncoder
from mdist.data.synthetic import SyntheticCorpus
from mdist.tokenizer import train_xlmr_tokenizer

REAL_TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "text"


def test_fast_path_matches_the_tokenizer(tmp_path):
    docs = SyntheticCorpus().monolingual("en", 100) + ["<s> literal </s> 123 ünïcödé"]
    tokenizer = train_xlmr_tokenizer(docs, 300, tmp_path)
    encoder = DocumentEncoder(tokenizer)
    assert encoder.sp is not None
    assert encoder(docs[:-1]) == tokenizer(docs[:-1], add_special_tokens=False)["input_ids"]
    assert tokenizer.cls_token_id not in encoder(docs[-1:])[0]  # markup in web text stays text


@pytest.mark.skipif(not REAL_TEXT.is_dir(), reason="shared real text not present")
def test_fast_path_on_real_text_differs_only_in_tied_segmentations(tmp_path):
    """Where two segmentations score exactly the same, sentencepiece and the tokenizer may pick differently."""
    lines = [line for path in sorted(REAL_TEXT.glob("*/*.txt")) for line in path.read_text().splitlines()[:200]]
    tokenizer = train_xlmr_tokenizer(lines, 1000, tmp_path)
    encoder = DocumentEncoder(tokenizer)
    fast, slow = encoder(lines), tokenizer(lines, add_special_tokens=False)["input_ids"]
    differ = [i for i in range(len(lines)) if fast[i] != slow[i]]
    assert encoder.sp is not None and len(differ) <= len(lines) // 200
    for i in differ:
        assert "".join(tokenizer.convert_ids_to_tokens(fast[i])) == "".join(tokenizer.convert_ids_to_tokens(slow[i]))
