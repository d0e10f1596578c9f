"""Official AFOV teacher files (section 4.2) written in their exact format, then imported."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from afov_ray.errors import DataError
from afov_ray.teachers.official import import_official_image, import_text_embedding, import_text_table

TOK = "e3d495d4ac534d54b321f50006683844"
H, W, D = 6, 8, 768


def _mask_map(n: int, with_zero: bool) -> np.ndarray:
    m = (np.arange(H * W).reshape(H, W) % n + 1).astype(np.uint8)
    if with_zero:
        m[0, :3] = 0
    return m


def _feats(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    f = torch.nn.functional.normalize(torch.randn(n + 1, D, generator=g), dim=1)
    f[0] = 0
    return f


def write_semantic(d: Path, n: int = 3, text_ids=(4, 96, 165)) -> tuple[np.ndarray, torch.Tensor]:
    """SAN / CAT-Seg: PNG without zeros, JSON {id, category_id, area}, .pt float32 [n+1, D]."""
    m = _mask_map(n, with_zero=False)
    Image.fromarray(m).save(d / f"{TOK}.png")
    areas = np.bincount(m.ravel(), minlength=n + 1)
    js = [{"id": j + 1, "category_id": int(text_ids[j]), "area": int(areas[j + 1])} for j in range(n)]
    (d / f"{TOK}.json").write_text(json.dumps(js))
    f = _feats(n, 0)
    torch.save(f, d / f"{TOK}.pt")
    return m, f


def write_fcclip(d: Path, n: int = 4) -> tuple[np.ndarray, torch.Tensor, list[dict]]:
    """FC-CLIP: PNG with zeros, JSON {id, isthing, category_id}, .pt list [f_in, f_out]."""
    m = _mask_map(n, with_zero=True)
    Image.fromarray(m).save(d / f"{TOK}.png")
    js = [{"id": j + 1, "isthing": j < 2, "category_id": [0, 0, 100, 168][j]} for j in range(n)]
    (d / f"{TOK}.json").write_text(json.dumps(js))
    f_in, f_out = _feats(n, 1), _feats(n, 2) * 3.0  # f_out is not normalised
    torch.save([f_in, f_out], d / f"{TOK}.pt")
    return m, f_out, js


@pytest.mark.parametrize("teacher", ["san", "CAT-Seg"])
def test_import_semantic(tmp_path, teacher):
    m, f = write_semantic(tmp_path)
    im = import_official_image(tmp_path, TOK, teacher, sample_token="smp", camera="CAM_FRONT", scene_token="sc")
    assert (im.sample_token, im.camera, im.camera_token, im.scene_token) == ("smp", "CAM_FRONT", TOK, "sc")
    assert im.image_size == (H, W) and im.mask_map.dtype == np.uint8
    np.testing.assert_array_equal(im.mask_map, m)
    assert im.mask_ids.tolist() == [1, 2, 3] and im.text_index.tolist() == [4, 96, 165]
    assert im.area.tolist() == [16, 16, 16]
    assert im.features.dtype == np.float16 and im.features.shape == (3, D)
    np.testing.assert_array_equal(im.features, f[1:].numpy().astype(np.float16))  # row 0 dropped
    assert im.is_thing is None


def test_import_fcclip_uses_f_out(tmp_path):
    m, f_out, js = write_fcclip(tmp_path)
    im = import_official_image(tmp_path, TOK, "fc-clip", image_size=(H, W))
    np.testing.assert_array_equal(im.features, f_out[1:].numpy().astype(np.float16))
    assert im.is_thing.tolist() == [True, True, False, False]
    assert im.text_index.tolist() == [0, 0, 100, 168]
    assert im.area.tolist() == [np.sum(m == v) for v in (1, 2, 3, 4)]
    assert im.sample_token == TOK and (im.mask_map == 0).sum() == 3


def test_text_embedding_void_row_explicit(tmp_path):
    g = torch.Generator().manual_seed(0)
    torch.save(torch.randn(175, D, generator=g), tmp_path / "t175.pt")
    torch.save(torch.randn(176, D, generator=g), tmp_path / "t176.pt")
    emb, void = import_text_embedding(tmp_path / "t175.pt", "san")
    assert emb.shape == (175, D) and emb.dtype == np.float32 and void is False
    emb, void = import_text_embedding(tmp_path / "t176.pt", "fc-clip")
    assert emb.shape == (176, D) and void is True
    table = import_text_table(tmp_path / "t176.pt", "fc-clip")
    assert table.vocabulary_rows.shape == (175, D)
    np.testing.assert_array_equal(table.void, emb[175])
    with pytest.raises(DataError, match="176 rows"):
        import_text_embedding(tmp_path / "t176.pt", "cat-seg")  # never an implicit drop
    assert import_text_embedding(tmp_path / "t175.pt", "fc-clip")[1] is False


def _expect_error(tmp_path, teacher, match):
    with pytest.raises(DataError, match=match) as e:
        import_official_image(tmp_path, TOK, teacher)
    assert e.value.item == TOK


def test_bad_files_name_the_token(tmp_path):
    _expect_error(tmp_path, "san", "missing file")

    write_semantic(tmp_path)
    torch.save(_feats(2, 0), tmp_path / f"{TOK}.pt")  # 3 rows for 3 masks
    _expect_error(tmp_path, "san", "expected n\\+1 = 4")

    write_semantic(tmp_path, text_ids=(4, 175, 1))
    _expect_error(tmp_path, "san", "outside the vocabulary")

    write_semantic(tmp_path)
    (tmp_path / f"{TOK}.json").write_text(json.dumps([{"id": 1, "category_id": 0, "area": 1}]))
    torch.save(_feats(1, 0), tmp_path / f"{TOK}.pt")
    _expect_error(tmp_path, "san", "not in the mask table")  # PNG has ids 2, 3 without JSON entries

    write_semantic(tmp_path)
    (tmp_path / f"{TOK}.json").write_text("{not json")
    _expect_error(tmp_path, "san", "invalid JSON")

    write_semantic(tmp_path)
    _expect_error(tmp_path, "fc-clip", "keys")  # SAN JSON has no isthing

    write_fcclip(tmp_path)
    torch.save(_feats(4, 1), tmp_path / f"{TOK}.pt")  # tensor instead of [f_in, f_out]
    _expect_error(tmp_path, "fc-clip", "list")

    write_semantic(tmp_path)
    with pytest.raises(DataError, match="differs from the image size"):
        import_official_image(tmp_path, TOK, "san", image_size=(900, 1600))

    write_semantic(tmp_path)
    (tmp_path / f"{TOK}.pt").write_bytes(b"garbage")
    _expect_error(tmp_path, "san", "weights_only")


def test_weights_only_refuses_pickled_objects(tmp_path):
    write_semantic(tmp_path)
    torch.save({"x": object()}, tmp_path / f"{TOK}.pt")  # arbitrary pickled object
    _expect_error(tmp_path, "san", "weights_only")
