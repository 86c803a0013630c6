"""Which earlier run a new `raycat train` resumes, starts over from, or refuses (no Ray needed)."""

import json
import os

import pytest

from raycat.config import Recipe, TrainConfig, TrainResources
from raycat.errors import BadInput
from raycat.shell import resume

CLASSES = ["cat", "dog"]
SPLIT = "0123456789abcdef"


def cfg(tmp_path, workers=1, address=None, **kw):
    return TrainConfig(data=str(tmp_path / "data"), out=str(tmp_path / "out"), recipe=Recipe(**kw),
                       resources=TrainResources(workers=workers, address=address))


def fake_checkpoint(c):
    os.makedirs(os.path.join(resume.run_dir(c.out, "train"), "checkpoint_2026-11-26_00-00-00.000000"))


def test_a_fresh_out_starts_a_run_and_notes_its_settings(tmp_path):
    c = cfg(tmp_path, lr=0.01)
    assert resume.prepare(c, CLASSES, SPLIT) == ""
    note = json.load(open(os.path.join(resume.run_dir(c.out, "train"), resume.MARKER)))
    assert note["finished"] is False and note["settings"]["lr"] == 0.01 and note["settings"]["classes"] == CLASSES


def test_an_unfinished_run_with_the_same_settings_is_resumed_and_says_so(tmp_path):
    c = cfg(tmp_path, lr=0.01)
    resume.prepare(c, CLASSES, SPLIT)
    fake_checkpoint(c)
    # other resources are fine: the run may go on on another cluster
    again = cfg(tmp_path, lr=0.01, workers=4, address="ray://elsewhere:10001")
    assert "resuming the unfinished run" in resume.prepare(again, CLASSES, SPLIT)
    assert os.listdir(resume.run_dir(c.out, "train")) != [resume.MARKER]  # the checkpoint is still there


def test_an_unfinished_run_with_other_settings_is_refused_naming_them(tmp_path):
    c = cfg(tmp_path, lr=0.01)
    resume.prepare(c, CLASSES, SPLIT)
    fake_checkpoint(c)
    with pytest.raises(resume.ResumeError, match=r"lr: 0\.01 -> 0\.02.*remove") as e:
        resume.prepare(cfg(tmp_path, lr=0.02), CLASSES, SPLIT)
    assert isinstance(e.value, BadInput)  # exit 2, before any cluster time
    with pytest.raises(resume.ResumeError, match=r"classes: \['cat', 'dog'\] -> \['cat', 'emu'\]"):
        resume.prepare(c, ["cat", "emu"], SPLIT)
    assert any(n.startswith("checkpoint_") for n in os.listdir(resume.run_dir(c.out, "train")))  # nothing lost


def test_a_finished_run_is_cleared_and_a_new_one_starts(tmp_path):
    c = cfg(tmp_path, lr=0.01)
    resume.prepare(c, CLASSES, SPLIT)
    fake_checkpoint(c)
    resume.mark_finished(c, CLASSES, SPLIT)
    assert "finished; starting a new one" in resume.prepare(cfg(tmp_path, lr=0.5), CLASSES, SPLIT)
    assert os.listdir(resume.run_dir(c.out, "train")) == [resume.MARKER]


def test_a_run_cut_off_before_its_first_checkpoint_just_starts(tmp_path):
    c = cfg(tmp_path, lr=0.01)
    resume.prepare(c, CLASSES, SPLIT)
    assert resume.prepare(cfg(tmp_path, lr=0.02), CLASSES, SPLIT) == ""


def test_checkpoints_raycat_did_not_write_are_left_alone(tmp_path):
    c = cfg(tmp_path)
    fake_checkpoint(c)
    with pytest.raises(resume.ResumeError, match="did not write"):
        resume.prepare(c, CLASSES, SPLIT)


def test_lr_find_always_sweeps_afresh(tmp_path):
    c = cfg(tmp_path)
    os.makedirs(os.path.join(resume.run_dir(c.out, "lr_find"), "checkpoint_x"))
    assert resume.prepare(c, CLASSES, SPLIT, "lr_find") == ""
    assert not os.path.exists(resume.run_dir(c.out, "lr_find"))


def test_a_rerun_on_another_split_is_refused(tmp_path):
    """Another --valid-pct, or another --labels file, is another split: resuming would validate on
    images the checkpoints trained on."""
    from raycat.edge.layout import scan_layout

    root = tmp_path / "data"
    for c in ("cat", "dog"):
        (root / "train" / c).mkdir(parents=True)
        for i in range(10):
            (root / "train" / c / f"{i}.jpg").write_bytes(b"")
    a = resume.split_digest(scan_layout(str(root), valid_pct=0.2, seed=0))
    assert a == resume.split_digest(scan_layout(str(root), valid_pct=0.2, seed=0))  # a digest, not a nonce
    c = TrainConfig(data=str(root), out=str(tmp_path / "out"), valid_pct=0.2, recipe=Recipe(lr=0.01))
    resume.prepare(c, CLASSES, a)
    fake_checkpoint(c)
    other_pct = TrainConfig(data=str(root), out=c.out, valid_pct=0.3, recipe=Recipe(lr=0.01))
    with pytest.raises(resume.ResumeError, match=r"split: the images in train and valid .*valid_pct: 0\.2 -> 0\.3"):
        resume.prepare(other_pct, CLASSES, resume.split_digest(scan_layout(str(root), valid_pct=0.3, seed=0)))
    # The same --valid-pct with another draw (as another labels file would give): refused too.
    moved = resume.split_digest(scan_layout(str(root), valid_pct=0.2, seed=1))
    assert moved != a
    with pytest.raises(resume.ResumeError, match="split: the images in train and valid differ"):
        resume.prepare(c, CLASSES, moved)
    # The same split from a copy of DATA elsewhere resumes.
    import shutil

    shutil.copytree(root, tmp_path / "copy")
    assert resume.split_digest(scan_layout(str(tmp_path / "copy"), valid_pct=0.2, seed=0)) == a
    assert "resuming" in resume.prepare(c, CLASSES, a)


def test_resuming_with_workers_that_change_the_global_batch_or_the_steps_is_refused(tmp_path):
    """ants/bees (245 images) with --workers 1 trains at 16 a step, 16 steps an epoch; resumed with
    --workers 4 it would take 32 a step (8 a worker), 8 steps: the schedule and steps.csv's step
    numbers would change mid-run. The same global batch and steps on another group size go on."""
    one, four = cfg(tmp_path, workers=1), cfg(tmp_path, workers=4)
    assert one.recipe.stepping(245, 1) == {"global_batch": 16, "steps_per_epoch": 16}
    resume.prepare(one, CLASSES, SPLIT, stepping=one.recipe.stepping(245, 1))
    fake_checkpoint(one)
    with pytest.raises(resume.ResumeError, match=r"global_batch: 16 -> 32; steps_per_epoch: 16 -> 8"):
        resume.prepare(four, CLASSES, SPLIT, stepping=four.recipe.stepping(245, 4))
    elastic = cfg(tmp_path, workers="1-1")  # the same MAX: the same batch and steps
    assert "resuming" in resume.prepare(elastic, CLASSES, SPLIT, stepping=elastic.recipe.stepping(245, 1))


def test_a_note_written_before_the_steps_were_recorded_still_resumes(tmp_path):
    c = cfg(tmp_path)
    resume.prepare(c, CLASSES, SPLIT)  # an older raycat's note: no global_batch, no steps_per_epoch
    fake_checkpoint(c)
    assert "resuming" in resume.prepare(c, CLASSES, SPLIT, stepping=c.recipe.stepping(245, 1))
