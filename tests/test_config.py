import pytest

from common.config import Flag, flatten, parse_cli
from pipeline.config import BuildConfig

FLAGS = [
    Flag("--source", "sources", "", kind="append"),
    Flag("--output", "output", ""),
    Flag("--captions-only", "captions_only", "", kind="true"),
]


def test_toml_then_cli_overrides(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('output = "/a"\n[captions]\nmin_words = 5\n[download]\nimage_size = 128\n')
    cfg = parse_cli(
        BuildConfig,
        [
            "--config",
            str(toml),
            "--captions.min_words",
            "7",
            "--source",
            "cc3m:x.tsv",
            "--source",
            "laion:y.parquet",
            "--download.allow_private_networks=true",
        ],
        flags=FLAGS,
    )
    assert cfg.output == "/a"
    assert cfg.captions.min_words == 7  # CLI beats TOML
    assert cfg.download.image_size == 128  # TOML beats default
    assert cfg.download.allow_private_networks is True
    assert cfg.sources == ["cc3m:x.tsv", "laion:y.parquet"]
    assert cfg.run.shard_size == 10_000  # untouched default


def test_unknown_keys_are_errors(tmp_path):
    with pytest.raises(SystemExit):
        parse_cli(BuildConfig, ["--captions.min_wrods", "3"], flags=FLAGS)
    toml = tmp_path / "bad.toml"
    toml.write_text("[captions]\nnope = 1\n")
    with pytest.raises(SystemExit):
        parse_cli(BuildConfig, ["--config", str(toml)], flags=FLAGS)


def test_every_field_is_documented():
    from common.config import _field_docs

    for name, _, help_text, _ in _field_docs(BuildConfig):
        assert help_text.strip(), f"{name} has no documentation"
    assert "captions.min_words" in flatten(BuildConfig())
