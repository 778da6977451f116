"""open_clip's CLIP tokeniser without torch: the same cleaning, pre-tokenising regex and byte-level
BPE, read from a vocabulary saved beside the text tower's ONNX export.

A cold text query on the CPU runtime needs token ids, nothing else of open_clip; importing open_clip
(and torch with it) costs seconds, this module milliseconds (ftfy and regex are pure or small C
extensions). ``TokenizerSpec.from_open_clip`` reads the settings off a live open_clip tokenizer when
the export is made, and the export checks the ids against it before saving them.
"""

from __future__ import annotations

import html
import json
import string
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

CLEANERS = ("lower", "whitespace", "canonicalize")
VOCAB_FILE = "clip_vocab.json"


@dataclass(frozen=True)
class TokenizerSpec:
    """What makes open_clip's SimpleTokenizer give the ids it gives, beside its vocabulary."""

    context_length: int
    clean: str  # one of CLEANERS
    special_tokens: tuple[str, ...]  # start and end of text first, then any additional ones
    sot_id: int
    eot_id: int

    @classmethod
    def from_open_clip(cls, tokenizer: Any) -> "TokenizerSpec | None":
        """The settings of an open_clip SimpleTokenizer, None for any other kind (HF tokenisers,
        reduction masks): those keep open_clip's own tokeniser."""
        from open_clip import tokenizer as oc

        if type(tokenizer) is not oc.SimpleTokenizer or getattr(tokenizer, "reduction_fn", None) is not None:
            return None
        names = {"lower": "_clean_lower", "whitespace": "_clean_whitespace", "canonicalize": "_clean_canonicalize"}
        clean = next((c for c, fn in names.items() if getattr(oc, fn, None) is tokenizer.clean_fn), None)
        if clean is None or not tokenizer.context_length:
            return None
        specials = tuple(tokenizer.decoder[i] for i in tokenizer.all_special_ids)
        return cls(int(tokenizer.context_length), clean, specials, int(tokenizer.sot_token_id),
                   int(tokenizer.eot_token_id))


def save_vocab(tokenizer: Any, spec: TokenizerSpec, folder: Path) -> None:
    """The vocabulary (ids in order) and the merges (by rank) of an open_clip SimpleTokenizer."""
    vocab = [tokenizer.decoder[i] for i in range(len(tokenizer.decoder))]
    merges = [f"{a} {b}" for (a, b), _ in sorted(tokenizer.bpe_ranks.items(), key=lambda kv: kv[1])]
    (folder / VOCAB_FILE).write_text(json.dumps({"spec": asdict(spec), "vocab": vocab, "merges": merges},
                                                ensure_ascii=False))


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table: printable Latin-1 bytes map to
    themselves, the rest to code points from 256 up, in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    extra = 256
    for b in range(256):
        if b not in table:
            table[b] = chr(extra)
            extra += 1
    return dict(sorted(table.items()))


_PLAIN = frozenset(map(chr, range(0x20, 0x7F))) - {"&"}  # printable ASCII: nothing for ftfy nor html to fix


def _clean_basic(text: str) -> str:
    """ftfy, then HTML entities twice. Printable ASCII without '&' (most queries) is left as it is
    by both: ftfy's fixes need other characters (mojibake, quotes, widths, controls, line breaks),
    and an entity needs '&'; skipping them there saves importing ftfy."""
    if _PLAIN.issuperset(text):
        return text.strip()
    import ftfy

    return html.unescape(html.unescape(ftfy.fix_text(text))).strip()


def _collapse(text: str) -> str:
    return " ".join(text.split())


_NO_PUNCT = str.maketrans("", "", string.punctuation)


def clean(text: str, how: str) -> str:
    """open_clip's cleaning: ftfy, HTML entities twice, then whitespace collapsed and lower case
    (``lower``), whitespace only, or punctuation dropped too (``canonicalize``)."""
    text = _clean_basic(text)
    if how == "lower":
        return _collapse(text).lower()
    if how == "whitespace":
        return _collapse(text)
    if how == "canonicalize":
        return _collapse(text.replace("_", " ").translate(_NO_PUNCT).lower())
    raise ValueError(f"unknown cleaning {how!r}")


class ClipTokenizer:
    """Token ids as open_clip's SimpleTokenizer gives them: start, BPE ids, end, zero padding to
    the context; a text too long is cut and its last id made end-of-text."""

    def __init__(self, spec: TokenizerSpec, vocab: Sequence[str], merges: Sequence[str]) -> None:
        import regex

        self.spec = spec
        self.ids = dict(zip(vocab, range(len(vocab))))
        # "first second" -> rank: tokens never hold a space (bytes_to_unicode maps it away), and
        # string keys build several times faster than tuples on a cold start
        self.ranks: dict[str, int] = dict(zip(merges, range(len(merges))))
        self.byte_chars = bytes_to_unicode()
        self._memo: dict[str, list[int]] = {t: [self.ids[t]] for t in spec.special_tokens}
        words = "|".join(regex.escape(t) for t in spec.special_tokens)
        self.pattern = regex.compile(words + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
                                     regex.IGNORECASE)

    @classmethod
    def load(cls, folder: Path) -> "ClipTokenizer":
        data = json.loads((folder / VOCAB_FILE).read_text())
        s = data["spec"]
        spec = TokenizerSpec(int(s["context_length"]), str(s["clean"]), tuple(s["special_tokens"]),
                             int(s["sot_id"]), int(s["eot_id"]))
        return cls(spec, data["vocab"], data["merges"])

    def _word_ids(self, word: str) -> list[int]:
        """One pre-token's ids: its UTF-8 bytes as characters, the last one marked end-of-word,
        then the adjacent pair of lowest merge rank joined until no pair has a rank."""
        if word in self._memo:
            return self._memo[word]
        chars = "".join(self.byte_chars[b] for b in word.encode("utf-8"))
        parts = list(chars[:-1]) + [chars[-1] + "</w>"]
        while len(parts) > 1:
            best, at = None, -1
            for i in range(len(parts) - 1):
                r = self.ranks.get(parts[i] + " " + parts[i + 1])
                if r is not None and (best is None or r < best):
                    best, at = r, i
            if best is None:
                break
            a, b = parts[at], parts[at + 1]
            merged: list[str] = []
            i = 0
            while i < len(parts):  # every occurrence of the pair, left to right
                if i < len(parts) - 1 and parts[i] == a and parts[i + 1] == b:
                    merged.append(a + b)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        ids = [self.ids[p] for p in parts]
        self._memo[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """BPE ids of one text, without start, end or padding."""
        out: list[int] = []
        for word in self.pattern.findall(clean(text, self.spec.clean)):
            out.extend(self._word_ids(word))
        return out

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """(n, context) int64 ids, as open_clip's tokenizer returns them (a numpy array)."""
        n = self.spec.context_length
        out = np.zeros((len(texts), n), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [self.spec.sot_id, *self.encode(text), self.spec.eot_id]
            if len(ids) > n:
                ids = ids[:n]
                ids[-1] = self.spec.eot_id
            out[row, :len(ids)] = ids
        return out


def trim_padding(tokens: Any) -> Any:
    """A batch of ids (numpy or torch) without the padding after its longest text; itself when
    nothing would be dropped. Only for towers whose vectors ignore what follows end-of-text."""
    used = int((tokens != 0).sum(1).max()) if tokens.shape[0] and tokens.shape[1] else 0
    if used >= tokens.shape[1] or used == 0:
        return tokens
    return tokens[:, :used]
