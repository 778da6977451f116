"""The CPU runtime's torch-free inputs: token ids and pixels exactly as open_clip makes them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open_clip
import pytest
from open_clip.tokenizer import SimpleTokenizer
from PIL import Image

from mmsearch.encoders.clip import _split_preprocess
from mmsearch.encoders.clip_tokenizer import ClipTokenizer, TokenizerSpec, save_vocab
from mmsearch.encoders.image_prep import ImagePrep
from tests.conftest import TUXPAINT, flickr_images

TEXTS = [
    "a dog", "", "   ", "\t\n", "A Dog Running On The BEACH", "Café crème brûlée, naïve façade — déjà vu",
    "&amp;lt;b&amp;gt;bold&amp;lt;/b&amp;gt; &quot;quoted&quot; &#39;single&#39; &eacute; &nbsp;x",
    "🐶🐱 dogs & cats 👨\u200d👩\u200d👧 👍🏽", "日本語のテキスト、中文字符和한국어", "Ελληνικά και русский текст",
    "numbers 0 12345 3.14159 1,000,000 2nd 10x", "it's we're they'll I'd you've she's DON'T",
    "tabs\tand\nnew lines\r\n   many    spaces  ", "Ã©tÃ© mojibake â€œquotesâ€\x9d", "<start_of_text> hi <end_of_text>",
    "punct!!! ??? ... --- ((())) [x] {y} @#$%^*", "\u00a0nbsp\u2003em\u200bzero width", "a_b-c/d\\e|f~g`h",
    "supercalifragilisticexpialidocious antidisestablishmentarianism", "x" * 500,
    "the quick brown fox jumps over the lazy dog " * 20, "ﬁne ligatures ＦＵＬＬＷＩＤＴＨ ①②", "e\u0301 combining",
]


def _ours(tok: SimpleTokenizer, folder: Path) -> ClipTokenizer:
    spec = TokenizerSpec.from_open_clip(tok)
    assert spec is not None
    save_vocab(tok, spec, folder)
    return ClipTokenizer.load(folder)


@pytest.mark.parametrize("clean", ["lower", "whitespace", "canonicalize"])
def test_token_ids_are_open_clips(tmp_path: Path, clean: str) -> None:
    ref = SimpleTokenizer(clean=clean)
    ours = _ours(ref, tmp_path)
    want = ref(TEXTS).numpy()
    np.testing.assert_array_equal(ours(TEXTS), want)
    assert (want[:, -1] == ref.eot_token_id).sum() >= 2  # texts too long were cut, ending in end-of-text
    short = SimpleTokenizer(context_length=16, clean=clean)  # the context length is read off the tokenizer
    (tmp_path / "short").mkdir()
    np.testing.assert_array_equal(_ours(short, tmp_path / "short")(TEXTS), short(TEXTS).numpy())


def test_plain_ascii_needs_no_ftfy() -> None:
    """The cleaning skips ftfy and html for printable ASCII without '&': they change none of it."""
    import html

    import ftfy

    from mmsearch.encoders.clip_tokenizer import _PLAIN, _clean_basic

    rng = np.random.default_rng(0)
    alphabet = sorted(_PLAIN)
    texts = ["".join(rng.choice(alphabet, size=int(n))) for n in rng.integers(0, 80, 3000)]
    texts += ["a dog on the beach", "  it's 3 o'clock  ", "<b>bold</b> #1 ;amp lt; x-y_z", "aÃ©" , "a&amp;b"]
    for t in texts:
        assert _clean_basic(t) == html.unescape(html.unescape(ftfy.fix_text(t))).strip(), t


def test_other_tokenizers_are_not_claimed() -> None:
    assert TokenizerSpec.from_open_clip(open_clip.get_tokenizer("ViT-B-32")) is not None
    assert TokenizerSpec.from_open_clip(SimpleTokenizer(reduction_mask="simple")) is None
    assert TokenizerSpec.from_open_clip(object()) is None


def _photos() -> list[Image.Image]:
    """Real photos and drawings: various sizes, aspect ratios and colour modes."""
    photos = [Image.open(p) for p in flickr_images(3)]
    drawings = [Image.open(p) for p in sorted((TUXPAINT / "images").glob("*.png"))]
    by_mode = {im.mode: im for im in drawings}  # RGBA, LA and P drawings
    tall = photos[0].resize((60, 500))
    return [*photos, *by_mode.values(), photos[1].convert("L"), photos[2].convert("CMYK"), tall,
            photos[0].resize((224, 224)), photos[0].resize((3, 2))]


@pytest.mark.filterwarnings("ignore:Palette images with Transparency")
@pytest.mark.parametrize("transform", [
    dict(image_size=224), dict(image_size=64, interpolation="bilinear", mean=0.5, std=0.25),
])
def test_pixels_are_open_clips(transform: dict) -> None:
    pre = open_clip.image_transform(is_train=False, **transform)
    prep = ImagePrep.from_transform(*_split_preprocess(pre))
    assert prep is not None
    images = _photos()
    assert {"RGB", "RGBA", "LA", "P", "L", "CMYK"} <= {im.mode for im in images}
    for im in images:
        want = pre(im).numpy()
        got = prep.normalise([prep(im)])[0]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_other_transforms_are_not_claimed() -> None:
    longest = open_clip.image_transform(224, is_train=False, resize_mode="longest")
    squash = open_clip.image_transform(224, is_train=False, resize_mode="squash")
    assert ImagePrep.from_transform(*_split_preprocess(longest)) is None
    assert ImagePrep.from_transform(*_split_preprocess(squash)) is None


@pytest.mark.parametrize(("mode", "size", "side"), [("shortest", 224, 224), ("squash", (384, 256), 384)])
def test_the_side_video_frames_are_decoded_at_needs_no_enlarging(mode: str, size: object, side: int) -> None:
    """Frames come out of the decoder at this short side: ``prepare`` then only crops them, or for
    a model that squashes to a fixed size shrinks them, and never enlarges them."""
    from mmsearch.encoders.clip import OpenClipEncoder

    pre = open_clip.image_transform(size, is_train=False, resize_mode=mode)
    enc = OpenClipEncoder.__new__(OpenClipEncoder)  # the transform is all image_side reads
    enc._pil_stage, enc._norm = _split_preprocess(pre)
    assert enc.image_side == side
    recipe = ImagePrep.from_transform(enc._pil_stage, enc._norm)
    assert recipe is None or recipe.side == side
