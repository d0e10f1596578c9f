"""The CLIP byte-level BPE tokenizer (OpenAI CLIP / open_clip ``SimpleTokenizer``), without downloads.

The merges file ``bpe_simple_vocab_16e6.txt.gz`` is read from a local path given in the config. It
ships inside the ``open_clip_torch`` wheel (``open_clip/bpe_simple_vocab_16e6.txt.gz``) and in the
OpenAI CLIP repository (``clip/bpe_simple_vocab_16e6.txt.gz``); copy it from either. Gzipped or plain
text files are both accepted.

Vocabulary, as CLIP builds it: the 256 byte symbols (``bytes_to_unicode`` order), the same 256 with
the end-of-word marker ``</w>``, one entry per merge (lines 1 .. 48894 of the file; line 0 is a
version header), then ``<start_of_text>`` and ``<end_of_text>``: 49408 ids for the real file.

Encoding a text: clean it (``ftfy.fix_text`` when ``ftfy`` is installed, else nothing; HTML entities
unescaped twice; whitespace runs -> one space; stripped; lower-cased), split it into pre-tokens with
CLIP's pattern, map each pre-token's UTF-8 bytes to byte symbols, apply BPE (lowest-rank merge first;
the last symbol carries ``</w>``), and look the pieces up. ``__call__`` wraps each text as
``[<start_of_text>] + ids + [<end_of_text>]``, truncates to ``context_length`` (the last kept id then
becomes ``<end_of_text>``) and zero-pads: an int64 (N, context_length) tensor.

Pre-token pattern. CLIP uses the ``regex`` package::

    <start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+   (IGNORECASE)

When ``regex`` is installed that pattern is used as is. Otherwise :func:`split_pretokens` is an
equivalent scanner written with the standard library: the alternatives are tried in the same order
at each position, ``\\p{L}`` is "Unicode category starts with L" and ``\\p{N}`` "starts with N"
(``unicodedata.category``), ``\\s`` is ``str.isspace``; characters no alternative matches
(whitespace) are skipped, as ``re.findall`` skips them. (A plain ``re`` class such as ``[^\\W\\d_]``
is not equivalent: it also takes No/Nl numerals like "²" as letters.)
"""

from __future__ import annotations

import gzip
import html
import os
import re
import unicodedata
from functools import lru_cache
from typing import Iterable, Sequence

from afov_ray.errors import DataError

SOT = "<start_of_text>"
EOT = "<end_of_text>"
NUM_MERGES = 49152 - 256 - 2  # merges CLIP reads: lines 1 .. 48894 of the file
_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")
_REGEX_PATTERN = (r"<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+")


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable unicode symbol map (printable Latin-1 bytes map to
    themselves, the others to chr(256 + k) in byte order)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _is_letter(ch: str) -> bool:
    return unicodedata.category(ch).startswith("L")


def _is_number(ch: str) -> bool:
    return unicodedata.category(ch).startswith("N")


def split_pretokens(text: str) -> list[str]:
    """Standard-library equivalent of ``regex.findall(CLIP pattern, text)`` (module docstring)."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        matched = None
        for lit in (SOT, EOT) if ch == "<" else _CONTRACTIONS if ch == "'" else ():
            if text[i:i + len(lit)].lower() == lit:   # IGNORECASE, compared per slice
                matched = text[i:i + len(lit)]
                break
        if matched is None:
            if _is_letter(ch):
                j = i + 1
                while j < n and _is_letter(text[j]):
                    j += 1
                matched = text[i:j]
            elif _is_number(ch):
                matched = ch
            elif not ch.isspace():
                j = i + 1
                while j < n and not (text[j].isspace() or _is_letter(text[j]) or _is_number(text[j])):
                    j += 1
                matched = text[i:j]
        if matched is None:
            i += 1
            continue
        out.append(matched)
        i += len(matched)
    return out


def basic_clean(text: str) -> str:
    """``ftfy.fix_text`` (only when ftfy is installed), HTML-unescape twice, strip."""
    try:
        import ftfy
    except ImportError:
        ftfy = None
    if ftfy is not None:
        text = ftfy.fix_text(text)
    return html.unescape(html.unescape(text)).strip()


def whitespace_clean(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def read_merges(path: str | os.PathLike) -> list[tuple[str, str]]:
    """The merges CLIP uses from a (gzipped or plain) merges file: lines 1 .. 48894, as pairs."""
    p = os.fspath(path)
    try:
        with open(p, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise DataError(p, f"cannot read the CLIP BPE merges file: {exc} (it ships inside the open_clip_torch "
                           "wheel and the OpenAI CLIP repo as bpe_simple_vocab_16e6.txt.gz)") from exc
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    lines = raw.decode("utf-8").split("\n")[1:NUM_MERGES + 1]
    merges = []
    for k, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise DataError(f"{p}:{k + 1}", f"a merge line must hold two symbols, got {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


class CLIPTokenizer:
    """CLIP's BPE tokenizer over a local merges file (module docstring)."""

    def __init__(self, bpe_path: str | os.PathLike, context_length: int = 77):
        self.bpe_path = os.fspath(bpe_path)
        self.context_length = int(context_length)
        self.byte_encoder = bytes_to_unicode()
        merges = read_merges(bpe_path)
        vocab = list(self.byte_encoder.values())
        vocab = vocab + [v + "</w>" for v in vocab]
        vocab += ["".join(m) for m in merges]
        vocab += [SOT, EOT]
        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        self.decoder = {i: tok for tok, i in self.encoder.items()}
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}
        self.cache: dict[str, str] = {SOT: SOT, EOT: EOT}
        self.sot_token_id = self.encoder[SOT]
        self.eot_token_id = self.encoder[EOT]
        try:
            import regex
        except ImportError:
            self._findall = split_pretokens
        else:
            pat = regex.compile(_REGEX_PATTERN, regex.IGNORECASE)
            self._findall = pat.findall

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def bpe(self, token: str) -> str:
        """BPE of one pre-token (already byte symbols): pieces joined by spaces."""
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda pr: self.bpe_ranks.get(pr, float("inf")))
            if best not in self.bpe_ranks:
                break
            first, second = best
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        out = " ".join(word)
        self.cache[token] = out
        return out

    def clean(self, text: str) -> str:
        return whitespace_clean(basic_clean(text)).lower()

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without the start / end tokens."""
        ids: list[int] = []
        for tok in self._findall(self.clean(text)):
            sym = "".join(self.byte_encoder[b] for b in tok.encode("utf-8"))
            ids.extend(self.encoder[piece] for piece in self.bpe(sym).split(" "))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text (end-of-word markers become spaces; special tokens kept as text)."""
        inv = {v: k for k, v in self.byte_encoder.items()}
        return _decode("".join(self.decoder[int(i)] for i in ids), inv)

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None):
        """Texts -> int64 tensor (N, context_length): SOT + ids + EOT, truncated (last = EOT), zero-padded."""
        import torch

        if isinstance(texts, str):
            texts = [texts]
        ctx = int(context_length or self.context_length)
        out = torch.zeros(len(texts), ctx, dtype=torch.long)
        for r, text in enumerate(texts):
            ids = [self.sot_token_id] + self.encode(text) + [self.eot_token_id]
            if len(ids) > ctx:
                ids = ids[:ctx]
                ids[-1] = self.eot_token_id
            out[r, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out


def _decode(symbols: str, inv: dict[str, int]) -> str:
    """Byte symbols (with ``</w>`` markers and special tokens) back to text."""
    out = bytearray()
    for part in re.split(r"(</w>|<start_of_text>|<end_of_text>)", symbols):
        if part == "</w>":
            out += b" "
        elif part in (SOT, EOT):
            out += part.encode() + b" "
        else:
            out += bytes(inv[c] for c in part)
    return out.decode("utf-8", errors="replace").strip()
