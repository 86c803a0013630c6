import os

import pytest
from images import encode, gradient_rgb

from raycat.edge.layout import LayoutError, is_image_name, scan_layout

JPG = encode(gradient_rgb(), "JPEG")


def make(root, files):
    for rel in files:
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(JPG)
    return str(root)


def test_classes_sorted_and_labels_follow_them(tmp_path):
    root = make(tmp_path, ["train/dog/1.jpg", "train/cat/1.jpg", "train/cat/2.PNG", "valid/dog/1.jpg",
                           "valid/cat/1.jpg", "train/cat/notes.txt", "test/a.jpg", "test/sub/b.jpeg"])
    lay = scan_layout(root)
    assert lay.classes == ["cat", "dog"]
    assert [os.path.basename(p) for p in lay.train.paths] == ["1.jpg", "2.PNG", "1.jpg"]
    assert lay.train.labels == [0, 0, 1] and lay.valid.labels == [0, 1]
    assert len(lay.test) == 2 and lay.train.counts(2) == [2, 1]


@pytest.mark.parametrize("files,message", [
    (["valid/a/1.jpg", "valid/b/1.jpg"], r"no train/ folder"),
    (["train/a/1.jpg", "train/b/1.jpg"], r"no valid/ folder"),
    (["train/a/1.jpg", "train/b/1.jpg", "valid/a/1.jpg", "valid/c/1.jpg"],
     r"different classes \(only in train/: b; only in valid/: c\)"),
    (["train/a/1.jpg", "valid/a/1.jpg"], r"only one class \(a\)"),
    (["train/a/1.jpg", "train/b/1.jpg", "valid/a/1.jpg", "valid/b/x.txt"], r"valid/b: empty class folder"),
    (["train/a/x.txt", "valid/a/y.txt"], r"no images found"),
])
def test_layout_errors_name_the_problem(tmp_path, files, message):
    root = make(tmp_path, files)
    with pytest.raises(LayoutError, match=message):
        scan_layout(root)


def test_missing_root_is_named(tmp_path):
    with pytest.raises(LayoutError, match="nowhere: no such folder"):
        scan_layout(str(tmp_path / "nowhere"))


def test_image_extensions_any_case():
    assert all(is_image_name(n) for n in ["a.jpg", "a.JPEG", "a.Png", "a.bmp", "a.gif", "a.webp", "a.TIF", "a.tiff"])
    assert not any(is_image_name(n) for n in ["a.txt", "jpg", "a.jpg.bak"])


def test_class_names_with_spaces_and_unicode(tmp_path):
    root = make(tmp_path, ["train/golden retriever/1.jpg", "train/chat noir é/1.jpg",
                           "valid/golden retriever/1.jpg", "valid/chat noir é/1.jpg"])
    assert scan_layout(root).classes == ["chat noir é", "golden retriever"]


def test_symlink_loop_does_not_hang(tmp_path):
    root = make(tmp_path, ["train/a/1.jpg", "train/b/1.jpg", "valid/a/1.jpg", "valid/b/1.jpg"])
    os.symlink(os.path.join(root, "train"), os.path.join(root, "train", "a", "loop"))
    lay = scan_layout(root)
    assert lay.train.counts(2)[1] == 1


def test_a_relative_root_reads_like_an_absolute_one(tmp_path, monkeypatch):
    """The demo's default OUT is relative (raycat-demo/): its dataset must scan, and predict must
    label its images (a relative root once left every class folder looking empty)."""
    from test_listing import listed

    make(tmp_path / "d", ["train/cat/1.jpg", "train/dog/1.jpg", "valid/cat/1.jpg", "valid/dog/1.jpg"])
    monkeypatch.chdir(tmp_path)
    lay = scan_layout("d")
    assert lay.classes == ["cat", "dog"] and lay.train.labels == [0, 1]
    assert [y for _, y in listed("d/valid", ["cat", "dog"])] == [0, 1]
    assert [y for _, y in listed("./d/valid/", ["cat", "dog"])] == [0, 1]


# ---- a folder of images and a labels file; --valid-pct ------------------------------------------

def test_a_labels_csv_with_a_split_column_and_kaggle_ids_without_extensions(tmp_path):
    make(tmp_path, ["imgs/a.jpg", "imgs/b.jpg", "imgs/c.png", "imgs/d.jpg", "imgs/e.jpg"])
    (tmp_path / "labels.csv").write_text("id,label,is_valid\nimgs/a,cat,0\nimgs/b.jpg,dog,False\n"
                                         "imgs/c,cat,1\nimgs/d,dog,true\nimgs/gone,cat,0\nimgs/e,,0\n")
    lay = scan_layout(str(tmp_path), labels=str(tmp_path / "labels.csv"))
    assert lay.classes == ["cat", "dog"]
    name = lambda s: [os.path.basename(p) for p in s.paths]  # noqa: E731
    assert name(lay.train) == ["a.jpg", "b.jpg"] and lay.train.labels == [0, 1]
    assert name(lay.valid) == ["c.png", "d.jpg"] and lay.valid.labels == [0, 1]
    reasons = sorted(r for _, r in lay.bad)
    assert len(lay.bad) == 2 and "empty label" in reasons[0] and "not found under DATA" in reasons[1]


def test_valid_pct_makes_a_seeded_stratified_split(tmp_path):
    files = [f"train/{c}/{i}.jpg" for c in ("cat", "dog") for i in range(10)]
    make(tmp_path, files)
    a = scan_layout(str(tmp_path), valid_pct=0.2, seed=3)
    b = scan_layout(str(tmp_path), valid_pct=0.2, seed=3)
    c = scan_layout(str(tmp_path), valid_pct=0.2, seed=4)
    assert a.valid.paths == b.valid.paths and a.valid.paths != c.valid.paths  # seeded
    assert a.valid.counts(2) == [2, 2] and a.train.counts(2) == [8, 8]  # stratified: 20% of each class
    assert not set(a.valid.paths) & set(a.train.paths)
    with pytest.raises(LayoutError, match="--valid-pct"):
        make(tmp_path, ["valid/cat/x.jpg", "valid/dog/y.jpg"])
        scan_layout(str(tmp_path), valid_pct=0.2)


def test_a_labels_file_without_a_split_needs_valid_pct_and_one_without_columns_is_refused(tmp_path):
    make(tmp_path, ["a.jpg", "b.jpg", "c.jpg", "d.jpg"])
    (tmp_path / "labels.csv").write_text("fname,label\na.jpg,x\nb.jpg,x\nc.jpg,y\nd.jpg,y\n")
    with pytest.raises(LayoutError, match="no split or is_valid column; add --valid-pct"):
        scan_layout(str(tmp_path), labels=str(tmp_path / "labels.csv"))
    lay = scan_layout(str(tmp_path), labels=str(tmp_path / "labels.csv"), valid_pct=0.5)
    assert lay.valid.counts(2) == [1, 1] and lay.train.counts(2) == [1, 1]
    (tmp_path / "bad.csv").write_text("picture,class\na.jpg,x\n")
    with pytest.raises(LayoutError, match="needs a header with an image column"):
        scan_layout(str(tmp_path), labels=str(tmp_path / "bad.csv"))
    with pytest.raises(LayoutError, match="--labels .*missing.csv: no such file"):
        scan_layout(str(tmp_path), labels=str(tmp_path / "missing.csv"))


def test_a_labels_header_with_spaces_and_an_excel_bom_reads_every_column(tmp_path):
    make(tmp_path, ["a.jpg", "b.jpg", "c.jpg", "d.jpg"])
    # Excel's UTF-8 CSV: a byte-order mark first; and a header written with spaces after commas.
    (tmp_path / "labels.csv").write_bytes("\ufefffname, label , split\na.jpg, cat, train\nb.jpg,dog ,train\n"
                                          "c.jpg , cat, valid\n\nd.jpg,dog,valid\n".encode("utf-8"))
    lay = scan_layout(str(tmp_path), labels=str(tmp_path / "labels.csv"))
    assert lay.classes == ["cat", "dog"] and not lay.bad
    assert [os.path.basename(p) for p in lay.train.paths] == ["a.jpg", "b.jpg"] and lay.train.labels == [0, 1]
    assert [os.path.basename(p) for p in lay.valid.paths] == ["c.jpg", "d.jpg"] and lay.valid.labels == [0, 1]


@pytest.mark.parametrize("label", ["a/b", ".", "..", "x\\y"])
def test_labels_that_could_not_be_folder_names_are_refused_before_training(tmp_path, label):
    make(tmp_path, ["a.jpg", "b.jpg", "c.jpg", "d.jpg"])
    (tmp_path / "labels.csv").write_text(f"fname,label,split\na.jpg,cat,train\nb.jpg,{label},train\n"
                                         f"c.jpg,cat,valid\nd.jpg,{label},valid\n")
    with pytest.raises(LayoutError, match="labels must be usable as folder names"):
        scan_layout(str(tmp_path), labels=str(tmp_path / "labels.csv"))


def test_a_split_column_with_a_class_only_in_valid_or_only_in_train_is_refused(tmp_path):
    make(tmp_path, ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"])
    (tmp_path / "labels.csv").write_text("fname,label,split\na.jpg,cat,train\nb.jpg,dog,train\n"
                                         "c.jpg,cat,valid\nd.jpg,dog,valid\ne.jpg,fox,valid\n")
    with pytest.raises(LayoutError, match="different classes \\(only in valid: fox\\)"):
        scan_layout(str(tmp_path), labels=str(tmp_path / "labels.csv"))
    (tmp_path / "labels.csv").write_text("fname,label,split\na.jpg,cat,train\nb.jpg,dog,train\n"
                                         "c.jpg,cat,valid\ne.jpg,fox,train\nd.jpg,dog,valid\n")
    with pytest.raises(LayoutError, match="only in train: fox"):
        scan_layout(str(tmp_path), labels=str(tmp_path / "labels.csv"))


def test_valid_pct_with_a_split_column_is_refused(tmp_path):
    make(tmp_path, ["a.jpg", "b.jpg", "c.jpg", "d.jpg"])
    (tmp_path / "labels.csv").write_text("fname,label,is_valid\na.jpg,cat,0\nb.jpg,dog,0\nc.jpg,cat,1\nd.jpg,dog,1\n")
    with pytest.raises(LayoutError, match=r"--valid-pct: --labels .*labels.csv splits the images already"):
        scan_layout(str(tmp_path), labels=str(tmp_path / "labels.csv"), valid_pct=0.2)


def test_an_unreadable_folder_is_skipped_and_reported_not_a_class_and_not_a_crash(tmp_path, monkeypatch):
    from unreadable import unreadable_folder

    root = make(tmp_path, ["train/cat/1.jpg", "train/dog/1.jpg", "valid/cat/1.jpg", "valid/dog/1.jpg",
                           "train/dog/more/2.jpg"])
    with unreadable_folder(tmp_path / "train" / "lost+found", monkeypatch) as lost, \
            unreadable_folder(tmp_path / "train" / "dog" / "more", monkeypatch) as more:
        lay = scan_layout(root)
    assert lay.classes == ["cat", "dog"]  # lost+found is no class
    assert [os.path.basename(p) for p in lay.train.paths] == ["1.jpg", "1.jpg"]
    assert sorted(p for p, _ in lay.bad) == sorted([lost, more])
    assert all("unreadable folder" in r and "Permission denied" in r for _, r in lay.bad)


def test_a_labels_file_that_lists_an_image_twice_is_refused_naming_the_lines(tmp_path):
    make(tmp_path, ["img1.jpg", "img2.jpg", "img3.jpg", "img4.jpg"])
    # `img1` and `img1.jpg` are one file: it would be in train and in valid at once
    (tmp_path / "labels.csv").write_text("fname,label,split\nimg1,cat,train\nimg2,dog,train\nimg3,cat,valid\n"
                                         "img4,dog,valid\nimg1.jpg,cat,valid\n")
    with pytest.raises(LayoutError, match=r"listed more than once: .*img1.jpg \(lines 2, 6\)"):
        scan_layout(str(tmp_path), labels=str(tmp_path / "labels.csv"))
