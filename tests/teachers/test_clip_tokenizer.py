"""CLIP BPE tokenizer on a tiny hand-made merges file (ids computed by hand below)."""

from __future__ import annotations

import gzip

import pytest

from afov_ray.errors import DataError
from afov_ray.teachers.clip_tokenizer import CLIPTokenizer, bytes_to_unicode, split_pretokens

MERGES = [("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o</w>"), ("c", "a"), ("ca", "r</w>")]
# ids: byte symbols 0..255 (printable ASCII '!'..'~' first: id = ord(c) - 33), the same + '</w>' at
# +256, merges from 512 in file order, then <start_of_text>, <end_of_text>.
HE, LL, HELL, HELLO_W, CA, CAR_W = 512, 513, 514, 515, 516, 517
SOT, EOT = 518, 519


def _sym(c: str) -> int:
    return ord(c) - 33


def _sym_w(c: str) -> int:
    return 256 + ord(c) - 33


@pytest.fixture(scope="module")
def bpe_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("bpe") / "tiny_bpe.txt.gz"
    text = "#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in MERGES) + "\n"
    path.write_bytes(gzip.compress(text.encode("utf-8")))
    return path


def test_byte_symbols_match_clip():
    enc = bytes_to_unicode()
    assert len(enc) == 256 and len(set(enc.values())) == 256
    assert enc[ord("a")] == "a" and enc[ord(" ")] == chr(256 + 32)
    # in the real vocabulary "a</w>" is id 320 = 256 + ('a' - 33)
    assert _sym_w("a") == 320


def test_vocab_and_special_tokens(bpe_file):
    tok = CLIPTokenizer(bpe_file, context_length=8)
    assert tok.vocab_size == 512 + len(MERGES) + 2
    assert (tok.sot_token_id, tok.eot_token_id) == (SOT, EOT)
    assert tok.encoder["hello</w>"] == HELLO_W and tok.encoder["ca"] == CA


def test_known_strings(bpe_file):
    tok = CLIPTokenizer(bpe_file)
    # "hello": h e l l o</w> -> he l l o</w> -> he ll o</w> -> hell o</w> -> hello</w>
    assert tok.encode("hello") == [HELLO_W]
    # upper case and whitespace runs are cleaned
    assert tok.encode("  Hello \t\n CAR ") == [HELLO_W, CAR_W]
    # "hell!": he l l</w> (no merge "l l</w>"), then "!" alone
    assert tok.encode("hell!") == [HE, _sym("l"), _sym_w("l"), _sym_w("!")]
    # contraction split
    assert tok.encode("it's") == [_sym("i"), _sym_w("t"), _sym("'"), _sym_w("s")]
    # non-ASCII: UTF-8 bytes C3 A9 -> byte symbols with ids 127 ('\xc3') and 102 ('\xa9') + 256
    assert tok.encode("é") == [127, 256 + 102]
    # HTML entities are unescaped
    assert tok.encode("&amp;") == [_sym_w("&")]
    assert tok.decode(tok.encode("hello car")) == "hello car"


def test_call_pads_and_truncates(bpe_file):
    tok = CLIPTokenizer(bpe_file, context_length=6)
    out = tok(["hello car", "car"])
    assert out.dtype.is_floating_point is False and tuple(out.shape) == (2, 6)
    assert out[0].tolist() == [SOT, HELLO_W, CAR_W, EOT, 0, 0]
    assert out[1].tolist() == [SOT, CAR_W, EOT, 0, 0, 0]
    # 5 ids into 4 places: cut, then the last kept id becomes EOT
    assert tok("hello car hello", context_length=4)[0].tolist() == [SOT, HELLO_W, CAR_W, EOT]


def test_pretoken_scanner():
    assert split_pretokens("it's 12 cats!! ok") == ["it", "'s", "1", "2", "cats", "!!", "ok"]
    assert split_pretokens("<start_of_text>a-b") == ["<start_of_text>", "a", "-", "b"]
    assert split_pretokens("x'LL ²") == ["x", "'LL", "²"]   # IGNORECASE contractions; No numerals are numbers


def test_pretoken_scanner_equals_regex():
    regex = pytest.importorskip("regex")
    pat = regex.compile(r"<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
                        regex.IGNORECASE)
    for text in ["a photo of a car.", "It's the driver's bus!!", "12km/h ½ Ⅻ ٣abc", "naïve café — über",
                 "'' 'd'd x'S \t\u00a0y", "<end_of_text>stop", "traffic-cone, pushable/pullable object"]:
        assert split_pretokens(text) == pat.findall(text), text


def test_missing_file_names_it(tmp_path):
    with pytest.raises(DataError, match="nope.txt.gz"):
        CLIPTokenizer(tmp_path / "nope.txt.gz")
