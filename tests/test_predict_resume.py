"""Resuming `raycat predict`: which earlier shards a rerun may reuse, and a final write that can be
cut off at any step and finished by the same command. The scoring actor and the driver's final
write are plain Python: these run them without Ray (tests/test_predict_ray.py runs the command)."""

import filecmp
import json
import os
import shutil

import pyarrow.dataset as pads
import pytest
from predict_scale import CLASSES, make_images
from results import write_random_model

from raycat.config import PredictConfig
from raycat.edge import model_card, storage
from raycat.errors import BadInput
from raycat.shell import listing, predict_job
from raycat.shell.scoring import Scorer, ScoringSpec

SIZE = 32


@pytest.fixture(scope="module")
def model_and_images(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    model = write_random_model(str(root / "m"), CLASSES, SIZE)
    images = str(root / "images")
    make_images(images, 120)  # 4 class folders; every 100th image truncated
    return model, images


def shard_rows(images):
    """Three shards of the image folder, as the listing tasks cut them (labels by class folder)."""
    paths = sorted(storage.list_files(images))
    labels = [CLASSES.index(os.path.basename(os.path.dirname(p))) for p in paths]
    return [listing.shard_row(f"0-{i}", paths[i::3], labels[i::3], []) for i in range(3)]


def spec_for(model, run, done=frozenset()):
    folder, card = model_card.find(model)
    return ScoringSpec(model=folder, card=card.to_json(), tta=1, tta_beta=0.25, batch_size=16, gpu=False, cpus=1,
                       run=run, top=4, done=frozenset(done))


def score_run(model, images, run):
    """Every shard scored into `run` (parts and summaries), as the actors leave it; the tally."""
    folder, card = model_card.find(model)
    scorer = Scorer(spec_for(model, run))
    tally = predict_job.Tally(card.classes, 4, images=images)
    for row in shard_rows(images):
        tally.add(scorer.score_shard(row))
    return tally


def test_a_shard_summary_is_reused_only_for_the_same_images(model_and_images, tmp_path):
    model, images = model_and_images
    run = str(tmp_path / "run")
    row = shard_rows(images)[0]
    first = Scorer(spec_for(model, run)).score_shard(row)
    again = Scorer(spec_for(model, run, done={"0-0"})).score_shard(row)
    assert again.get("resumed") and {k: v for k, v in again.items() if k != "resumed"} == json.loads(json.dumps(first))
    # The same shard id now holding one image more (an image added under IMAGES): scored again.
    shard, paths, labels, bad = listing.shard_of(row)
    extra = os.path.join(images, CLASSES[0], "added.jpg")
    shutil.copy(paths[0], extra)
    grown = listing.shard_row(shard, [*paths, extra], [*labels, 0], bad)
    rescored = Scorer(spec_for(model, run, done={"0-0"})).score_shard(grown)
    assert not rescored.get("resumed") and rescored["n_scored"] == first["n_scored"] + 1
    os.unlink(extra)


def test_the_scoring_actor_runs_its_model_channels_last(model_and_images, tmp_path):
    """Its weights in the layout its batches come in (core.device.memory_format): in fp32 on a CPU
    an NCHW model ran at half the speed of the same network in model.pt2 (bench/channels_last.py)."""
    import torch

    model, _ = model_and_images
    scorer = Scorer(spec_for(model, str(tmp_path / "run")))
    convs = [m.weight for m in scorer.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)


def test_the_scoring_actor_scores_with_its_batchnorms_folded_and_the_same_probabilities(model_and_images, tmp_path):
    """core/fold_bn.py in the actor: no BatchNorm2d pass left in its body (Lite0 scores 1.5x faster
    folded on a CPU), and its probabilities those of the model as trained."""
    import torch

    from raycat.core.augment import normalize

    model, _ = model_and_images
    scorer = Scorer(spec_for(model, str(tmp_path / "run")))
    folder, card = model_card.find(model)
    trained = model_card.load(folder, card)
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in trained.modules())
    assert n_bn > 0 and scorer.folded_bn == n_bn
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in scorer.model.modules())
    x = normalize(torch.randint(0, 256, (4, 3, SIZE, SIZE), dtype=torch.uint8), card.augment_spec())
    with torch.no_grad():
        want, got = trained(x).softmax(1), scorer.model(x.contiguous(memory_format=torch.channels_last)).softmax(1)
    assert torch.allclose(got, want, atol=1e-4)


def test_a_model_retrained_into_the_same_folder_is_not_resumed(model_and_images, tmp_path, capsys):
    _, images = model_and_images
    model = write_random_model(str(tmp_path / "m"), CLASSES, SIZE, seed=0)
    cfg = PredictConfig(model=model, images=[images], out=str(tmp_path / "out"))
    run = str(tmp_path / "run")
    before = predict_job.run_settings(cfg, *model_card.find(model))
    predict_job.prepare_run(run, before)
    os.makedirs(os.path.join(run, "done"))
    open(os.path.join(run, "done", "0-0.json"), "w").write("{}")
    assert predict_job.prepare_run(run, before) == {"0-0"}  # the same model: resumed
    write_random_model(model, CLASSES, SIZE, seed=1)  # retrained into the same folder: other weights
    after = predict_job.run_settings(cfg, *model_card.find(model))
    assert after["model"] == before["model"] and after["model_digest"] != before["model_digest"]
    assert predict_job.prepare_run(run, after) == set()
    assert "other settings (model_digest" in capsys.readouterr().out
    assert not os.path.exists(os.path.join(run, "done"))


def _outputs(out):
    """OUT's files by name (predictions/ as its sorted rows), metrics.json without its timings."""
    got = {}
    for name in sorted(storage.list_dir(out)):
        uri = storage.join(out, name)
        if name == "predictions":
            fs, path = storage.filesystem(uri)
            got[name] = pads.dataset(path, filesystem=fs, format="parquet").to_table().to_pandas() \
                .sort_values("path").reset_index(drop=True)
        elif name == "metrics.json":
            m = json.loads(storage.read_text(uri))
            timing = ("seconds", "first_shard_seconds", "actors_ready_seconds", "resumed_shards", "resumed_images")
            got[name] = {k: v for k, v in m.items() if k not in timing}
        else:
            got[name] = storage.read_bytes(uri)
    return got


class Cut(Exception):
    pass


def _count_writes(monkeypatch, fail_at=None):
    """Wrap every storage call that changes OUT; raise Cut at call number `fail_at`. Returns the log."""
    log = []
    for name in ("write_bytes", "write_text", "delete_tree", "replace_tree", "copy_tree"):
        real = getattr(storage, name)

        def wrapped(*a, _real=real, _name=name, **k):
            log.append(f"{_name} {a[-1] if _name in ('replace_tree', 'copy_tree') else a[0]}")
            if fail_at is not None and len(log) == fail_at:
                raise Cut(log[-1])
            return _real(*a, **k)

        monkeypatch.setattr(storage, name, wrapped)
    return log


def _finish(model, images, out, run, tally, resumed=False):
    folder, card = model_card.find(model)
    cfg = PredictConfig(model=model, images=[images], out=out, tta=1, top=4)
    if resumed:  # what the rerun's actors hand back: each shard's stored summary
        tally = predict_job.Tally(card.classes, 4, images=images)
        for shard in sorted(storage.list_dir(storage.join(run, "done"))):
            tally.add({**json.loads(storage.read_text(storage.join(run, "done", shard))), "resumed": True})
    return predict_job.write_predict_outputs(cfg, folder, card, run, tally, 0.0, 1.0)


@pytest.mark.parametrize("where", ["local", pytest.param("s3", marks=pytest.mark.integration)])
def test_the_final_write_cut_at_any_step_is_finished_by_a_rerun(model_and_images, tmp_path, monkeypatch, where,
                                                                request):
    model, images = model_and_images
    base = str(tmp_path) if where == "local" else f"s3://{request.getfixturevalue('bucket')}/final-{os.getpid()}"
    scored = str(tmp_path / "scored")  # the run folder as the actors leave it, kept to start each try from
    tally = score_run(model, images, scored)
    clean_out, clean_run = storage.join(base, "clean"), storage.join(base, "clean", ".raycat-predict")
    storage.publish_tree(scored, clean_run)
    log = _count_writes(monkeypatch)
    _finish(model, images, clean_out, clean_run, tally)
    steps = list(log)
    monkeypatch.undo()
    clean = _outputs(clean_out)
    assert {"predictions", "metrics.json", "confusion_matrix.png", "top_losses.png", "skipped.csv"} <= set(clean)
    assert len(clean["predictions"]) == 119 and not storage.exists(clean_run)
    # Each step that changes OUT, cut in turn; but only the first of the stale files' deletions
    # (the rest are the same step) and not write_text's own write_bytes. On S3, which has no rename:
    # the parts' copy, the note that they were published, and a PNG after it (the case a review met).
    distinct = [i + 1 for i, st in enumerate(steps) if not (
        i > 1 and st.startswith("delete_tree") and steps[i - 1].startswith("delete_tree")
        and "raycat-predict" not in st)
        and not (i and st.startswith("write_bytes") and steps[i - 1] == "write_text" + st[len("write_bytes"):])]
    picks = distinct if where == "local" else [i + 1 for i, st in enumerate(steps) if st.startswith("copy_tree") or (
        st.startswith("write_text") and "published" in st) or st.endswith("top_losses.png")]
    assert len(distinct) >= 12 and any(steps[k - 1].endswith("top_losses.png") for k in distinct)
    for k in picks:
        out = storage.join(base, f"cut-{k}")
        run = storage.join(out, ".raycat-predict")
        storage.publish_tree(scored, run)
        log = _count_writes(monkeypatch, fail_at=k)
        with pytest.raises(Cut):
            _finish(model, images, out, run, tally)
        monkeypatch.undo()
        assert not storage.exists(storage.join(out, "metrics.json")) or k == len(steps), steps[k - 1]
        if storage.exists(run):
            _finish(model, images, out, run, tally, resumed=True)
        got = _outputs(out)
        assert set(got) == set(clean), (steps[k - 1], sorted(got))
        assert got["predictions"].equals(clean["predictions"]), steps[k - 1]
        assert got["metrics.json"] == {**clean["metrics.json"], "model": got["metrics.json"]["model"]}, steps[k - 1]
        for name in clean:
            if name.endswith(".csv"):
                assert got[name] == clean[name], (steps[k - 1], name)
    if where == "local":
        assert filecmp.cmp(os.path.join(base, "clean", "confusion_matrix.csv"),
                           os.path.join(base, f"cut-{len(steps)}", "confusion_matrix.csv"))


def test_images_changed_after_the_parts_were_published_start_afresh(model_and_images, tmp_path, monkeypatch):
    model, images = model_and_images
    run = str(tmp_path / "out" / ".raycat-predict")
    tally = score_run(model, images, run)
    log = _count_writes(monkeypatch)
    real_write_csv = predict_job.outputs.write_csv

    def fail_after_publishing(uri, *a, **k):
        raise Cut(uri)

    monkeypatch.setattr(predict_job.outputs, "write_csv", fail_after_publishing)
    with pytest.raises(Cut):
        _finish(model, images, str(tmp_path / "out"), run, tally)
    monkeypatch.undo()
    assert any("published" in s for s in log) and real_write_csv
    fewer = predict_job.Tally(tally.classes, 4, images=images)
    for shard in sorted(os.listdir(os.path.join(run, "done")))[:2]:
        fewer.add({**json.load(open(os.path.join(run, "done", shard))), "resumed": True})
    with pytest.raises(BadInput, match="changed while an earlier run"):
        _finish(model, images, str(tmp_path / "out"), run, fewer)
    assert not os.path.exists(run)


def test_a_run_cut_after_its_parts_moved_then_rerun_on_a_changed_listing_publishes_every_shard(
        model_and_images, tmp_path, monkeypatch):
    """Local OUT: killed after the parts folder became predictions/ and before the note said so;
    then one image added under IMAGES; then the same command. The rerun scores the one shard that
    changed (its part recreates the parts folder) and reuses the others, whose parts are already in
    predictions/: all of them must be published, not the one new part alone."""
    model, shared = model_and_images
    images = str(tmp_path / "images")
    shutil.copytree(shared, images)
    out = str(tmp_path / "out")
    run = storage.join(out, ".raycat-predict")

    def class_shards():  # one shard a class folder, as the listing cuts a labelled tree (a unit a folder)
        paths = sorted(storage.list_files(images))
        return [listing.shard_row(f"{i:05d}-000000", [p for p in paths if os.path.basename(os.path.dirname(p)) == c],
                                  [i] * sum(os.path.basename(os.path.dirname(p)) == c for p in paths), [])
                for i, c in enumerate(CLASSES)]

    def score(done):
        folder, card = model_card.find(model)
        scorer = Scorer(spec_for(model, run, done))
        tally = predict_job.Tally(card.classes, 4, images=images)
        for row in class_shards():
            tally.add(scorer.score_shard(row))
        return tally

    tally = score(frozenset())
    log = _count_writes(monkeypatch)
    real_write_text = storage.write_text

    def cut_at_the_note(uri, *a, **k):
        if uri.endswith(predict_job.PUBLISHED):
            raise Cut(uri)
        return real_write_text(uri, *a, **k)

    monkeypatch.setattr(storage, "write_text", cut_at_the_note)
    with pytest.raises(Cut):
        _finish(model, images, out, run, tally)
    monkeypatch.undo()
    assert any(s.startswith("replace_tree") for s in log)  # the parts had moved
    assert not storage.exists(storage.join(run, "parts"))
    added = os.path.join(images, CLASSES[0], "added.jpg")
    shutil.copy(sorted(storage.list_files(os.path.join(images, CLASSES[0])))[0], added)
    rerun = score(frozenset(s["shard"] for s in [json.loads(storage.read_text(storage.join(run, "done", n)))
                                                 for n in storage.list_dir(storage.join(run, "done"))]))
    assert rerun.resumed_shards == len(CLASSES) - 1  # only the grown shard was scored again
    m = _finish(model, images, out, run, rerun)
    got = _outputs(out)
    assert len(got["predictions"]) == m["n_images"] == tally.n_images + 1
    assert added in set(got["predictions"]["path"])


def test_an_actor_reads_ahead_a_bounded_number_of_files_whatever_the_shard(model_and_images, tmp_path, monkeypatch):
    """Reads run ahead of decoding, but an actor never holds a whole shard's bytes (512 large files
    would be gigabytes): at most read_ahead(batch) files are read and not yet decoded."""
    from raycat.core import decode
    from raycat.shell import scoring

    model, images = model_and_images
    paths = sorted(storage.list_files(images)) * 3  # 360 files in one shard
    row = listing.shard_row("0-0", paths, [0] * len(paths), [])
    scorer = Scorer(spec_for(model, str(tmp_path / "run")))
    reads, decoded, ahead = [0], [0], []
    real_read, real_decode = scorer._read, decode.decode_batch

    def counting_read(path):
        reads[0] += 1
        return real_read(path)

    def counting_decode(blobs, *a, **k):
        ahead.append(reads[0] - decoded[0])  # files read and not yet decoded when this batch decodes
        decoded[0] += len(blobs)
        return real_decode(blobs, *a, **k)

    monkeypatch.setattr(scorer, "_read", counting_read)
    monkeypatch.setattr(decode, "decode_batch", counting_decode)
    scorer.score_shard(row)
    assert reads[0] == len(paths)
    assert max(ahead) <= scoring.read_ahead(16), max(ahead)


def test_an_actor_reserves_the_memory_it_holds():
    """Its base, the files it reads ahead and a batch through the body: more for larger images."""
    from raycat.shell.scoring import BASE_BYTES, FILE_BYTES, actor_memory, read_ahead

    assert actor_memory(64, 224, 0) > actor_memory(64, 32, 0) > BASE_BYTES + read_ahead(64) * FILE_BYTES
    assert actor_memory(64, 224, 4) > actor_memory(64, 224, 0)
