"""Checkpoint ranking: the best checkpoint is the one with the highest validation mIoU, not the last one."""

from types import SimpleNamespace

from afov_ray.train.runner import NO_SCORE, SCORE, best_of


def _result(scores, last="last"):
    cps = [(f"ckpt{i}", {SCORE: s, "epoch": i, "step": 10 * (i + 1)}) for i, s in enumerate(scores)]
    return SimpleNamespace(best_checkpoints=cps, checkpoint=last, metrics={"epoch": len(scores) - 1})


def test_best_is_highest_score_not_last():
    ckpt, m = best_of(_result([0.20, 0.35, 0.31]))
    assert ckpt == "ckpt1" and m["epoch"] == 1


def test_ties_keep_the_earliest_and_unscored_rank_last():
    assert best_of(_result([0.3, 0.3, NO_SCORE]))[0] == "ckpt0"
    assert best_of(_result([NO_SCORE, 0.1]))[0] == "ckpt1"


def test_no_scored_checkpoint_falls_back_to_the_last():
    ckpt, m = best_of(SimpleNamespace(best_checkpoints=[], checkpoint="last", metrics={"epoch": 2}))
    assert ckpt == "last" and m == {"epoch": 2}
