import numpy as np
import pytest

from afov_ray.teachers.simulated import SimTeacherConfig, simulate_image, simulated_text_embeddings

TEXTS = ["car", "sedan", "truck", "road", "walkway", "sky", "bonnet under the picture", "car"]
T2C = np.array([0, 0, 1, 2, 3, 4, 5, 0])
C2R = np.array([17, 23, 24, 26, 29, 31])   # category -> raw lidarseg


def _scene():
    h, w = 40, 60
    sem = np.full((h, w), 24, dtype=np.uint8)      # road
    sem[:10] = 0                                   # sky
    sem[10:20, :] = 26                             # sidewalk band
    inst = np.zeros((h, w), dtype=np.int32)
    sem[22:34, 5:25] = 17; inst[22:34, 5:25] = 1   # big car
    sem[25:30, 40:55] = 23; inst[25:30, 40:55] = 2  # truck
    sem[36:38, 50:52] = 17; inst[36:38, 50:52] = 3  # tiny car (4 px): missed
    depth = np.full((h, w), 10.0); depth[:10] = np.inf
    return sem, inst, depth


def test_embeddings_structure():
    e = simulated_text_embeddings(TEXTS, T2C, dim=64, seed=1)
    assert e.shape == (8, 64) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    assert np.array_equal(e[0], e[7])                       # same text, same embedding
    same, other = e[0] @ e[1], e[0] @ e[3]
    assert same > 0.7 and abs(other) < 0.5


def test_clean_semantic_teacher_reproduces_ground_truth():
    sem, inst, depth = _scene()
    e = simulated_text_embeddings(TEXTS, T2C, dim=32)
    cfg = SimTeacherConfig(boundary_px=0, confusion_prob=0, min_area_px=5, random_text_prob=0,
                           feature_noise=0.0, feature_dim=32)
    mm, mt, f, thing = simulate_image(sem, inst, depth, TEXTS, T2C, C2R, e, cfg, key="cam0")
    assert mm.shape == sem.shape and mm.min() >= 1               # semantic style covers every pixel
    assert sorted(mt.values()) == [0, 2, 3, 4, 5]                 # ascending text order
    assert list(mt) == [1, 2, 3, 4, 5]
    tmap = np.vectorize(mt.get)(mm)
    raw = C2R[T2C[tmap]]
    raw[tmap == 5] = 0
    expect = sem.copy(); expect[36:38, 50:52] = 24                # tiny car absorbed by road
    assert np.array_equal(raw, expect)
    assert f.dtype == np.float16 and f.shape == (5, 32)
    assert np.allclose(f.astype(np.float32), e[[mt[i] for i in range(1, 6)]], atol=2e-3)


def test_noisy_teacher_is_seeded_and_corrupts():
    sem, inst, depth = _scene()
    e = simulated_text_embeddings(TEXTS, T2C, dim=32)
    cfg = SimTeacherConfig(boundary_px=2, confusion_prob=1.0, feature_dim=32, seed=3)
    a = simulate_image(sem, inst, depth, TEXTS, T2C, C2R, e, cfg, key="cam0")
    b = simulate_image(sem, inst, depth, TEXTS, T2C, C2R, e, cfg, key="cam0")
    assert all(np.array_equal(x, y) for x, y in zip(a[:1] + a[2:], b[:1] + b[2:])) and a[1] == b[1]
    tmap = np.vectorize(a[1].get)(a[0])
    # confusion_prob=1: the truck becomes a car, the sidewalk becomes road
    assert (T2C[tmap[26:29, 42:53]] == 0).mean() > 0.9
    assert (T2C[tmap[12:18, 5:55]] == 2).mean() > 0.9


def test_instance_style_keeps_instances_and_leaves_sky_uncovered():
    sem, inst, depth = _scene()
    sem[22:34, 30:38] = 17; inst[22:34, 30:38] = 4               # second car
    e = simulated_text_embeddings(TEXTS, T2C, dim=16)
    cfg = SimTeacherConfig(mask_style="instance", boundary_px=0, confusion_prob=0, random_text_prob=0,
                           feature_dim=16)
    mm, mt, f, thing = simulate_image(sem, inst, depth, TEXTS, T2C, C2R, e, cfg, key="k")
    assert (mm[:10] == 0).all()
    cars = [i for i, t in mt.items() if t == 0]
    assert len(cars) == 2 and thing[[c - 1 for c in cars]].all()
    assert len(f) == len(mt)
    with pytest.raises(ValueError):
        simulate_image(sem, inst, depth, TEXTS, T2C, C2R, e, SimTeacherConfig(mask_style="x"), key="k")
