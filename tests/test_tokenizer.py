"""The caption BPE: lowercase, byte-level, trained on dataset captions, dropout only on request."""

import json
import os

from orchestration.train_tokenizer import main as train_tokenizer_cli
from tokenize_images.synthetic import write_dataset
from tokenize_images.text_tokenizer import load_text_tokenizer


def test_train_tokenizer_command_and_dropout(tmp_path):
    dataset, out = str(tmp_path / "ds"), str(tmp_path / "tokens")
    write_dataset(dataset, shards=2, rows_per_shard=30, size_range=(16, 24))
    train_tokenizer_cli(
        ["--dataset", dataset, "--output", out, "--tokenizer.vocab_size", "400", "--tokenizer.min_frequency", "1"]
    )
    path = os.path.join(out, "tokenizer.json")
    saved = json.load(open(path))
    assert saved["model"]["type"] == "BPE" and saved["model"]["dropout"] is None  # evaluation: no dropout

    tok = load_text_tokenizer(out)
    assert 256 < tok.get_vocab_size() <= 400
    caption = "A RED Circle on a Blue background"
    ids = tok.encode(caption).ids
    assert tok.decode(ids).strip() == caption.lower()
    assert len(ids) < len(caption.split()) * 2  # learned merges: roughly a token per known word
    assert tok.encode(caption.lower()).ids == ids
    assert tok.decode(tok.encode("ünïcode ✓ 猫").ids).strip() == "ünïcode ✓ 猫"  # byte level: nothing unknown
    assert all(tok.encode(caption).ids == ids for _ in range(20))  # deterministic

    train = load_text_tokenizer(out, dropout=0.1)
    variants = {tuple(train.encode(caption).ids) for _ in range(50)}
    assert len(variants) > 1  # BPE dropout at training time
    assert all(train.decode(list(v)).strip() == caption.lower() for v in variants)
