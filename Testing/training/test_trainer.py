"""Training runs: smoke run, resume bit for bit, channels-last, headless Slicer, DDP, errors."""

from __future__ import annotations

import os
import shutil
import sys

import numpy as np
import torch
from conftest import TRAIN, read_log, run_process, run_train

from ProgressiveRegistrationLib.model.modelfile import load_model
from ProgressiveRegistrationLib.training.checkpoint import read_checkpoint
from ProgressiveRegistrationLib.training.trainset import collect_images


def test_smoke_run_learns_and_writes_everything(tmp_path):
    out = tmp_path / "smoke"
    r = run_train(out)
    assert r.returncode == 0, r.stderr
    for name in ("log.csv", "checkpoint.pt", "model.pt", "model_baseline.pt", "config.json",
                 "schedule_and_validation.png", "progressive_vs_baseline.png", "level_outputs.png"):
        assert (out / name).is_file(), name
    log = read_log(out)
    assert len(log) >= 3
    levels = [int(row["level"]) for row in log]
    assert levels[-1] == 2  # reached the finest level: every transition passed
    first, last = float(log[0]["progressive_loss"]), float(log[-1]["progressive_loss"])
    assert last < first, (first, last)
    model = load_model(out / "model.pt", fold_bn=False)  # a model file, loadable without the trainer
    assert model.size == 32 and model.meta["arm"] == "progressive"


def test_resume_equals_uninterrupted(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    common = ["--set", "train.snapshot_every=15", "train.mode=both"]
    # a also keeps every 2nd snapshot's models (iteration 30 of 15, 30, 45); that must not change its training.
    assert run_train(a, *common, "train.iterations=45", "train.keep_snapshots=2").returncode == 0
    assert sorted(p.name for p in (a / "snapshots").iterdir()) == ["model_000030.pt", "model_baseline_000030.pt"]
    r = run_train(b, *common, "train.iterations=30")
    assert r.returncode == 0, r.stderr
    # A snapshot of a run still training exports like a finished run.
    snap = tmp_path / "snap"
    snap.mkdir()
    shutil.copy(b / "checkpoint.pt", snap)
    r = run_train(snap, "--export")
    assert r.returncode == 0, r.stderr
    at30 = read_checkpoint(b / "checkpoint.pt")["models"]
    for name, kept, arm in (("model.pt", "model_000030.pt", "progressive"),
                            ("model_baseline.pt", "model_baseline_000030.pt", "baseline")):
        for exported in (load_model(snap / name, fold_bn=False), load_model(a / "snapshots" / kept, fold_bn=False)):
            assert exported.meta["iterations"] == 30 and exported.meta["arm"] == arm and exported.size == 32
            for k, v in exported.net.state_dict().items():
                torch.testing.assert_close(v, at30[arm][f"unet.{k}"], rtol=0, atol=0)
    r = run_train(b, "--resume", "--set", "train.iterations=45")
    assert r.returncode == 0, r.stderr
    wa = read_checkpoint(a / "checkpoint.pt")
    wb = read_checkpoint(b / "checkpoint.pt")
    assert wa["iteration"] == wb["iteration"] == 45
    for arm in ("progressive", "baseline"):
        for k, v in wa["models"][arm].items():
            torch.testing.assert_close(v, wb["models"][arm][k], rtol=0, atol=0, msg=f"{arm} {k}")
    assert [r["progressive_loss"] for r in read_log(a)] == [r["progressive_loss"] for r in read_log(b)]


def test_channels_last_trains_the_same_network(tmp_path):
    """The channels-last layout changes the convolutions' summation order only: same losses and
    weights to float32 rounding, resumable bit for bit, and exported in the default layout."""
    runs = {name: tmp_path / name for name in ("default", "cl", "cl_resumed")}
    common = ["--set", "train.snapshot_every=10", "train.mode=both"]
    assert run_train(runs["default"], *common, "train.iterations=20").returncode == 0
    assert run_train(runs["cl"], *common, "train.iterations=20", "train.channels_last=true").returncode == 0
    r = run_train(runs["cl_resumed"], *common, "train.iterations=10", "train.channels_last=true")
    assert r.returncode == 0, r.stderr
    r = run_train(runs["cl_resumed"], "--resume", "--set", "train.iterations=20")
    assert r.returncode == 0, r.stderr
    default, cl, resumed = (read_checkpoint(runs[n] / "checkpoint.pt")["models"] for n in runs)
    weights = cl["progressive"]["unet.enc.2.0.weight"]
    assert weights.is_contiguous(memory_format=torch.channels_last_3d) and not weights.is_contiguous()
    for arm in ("progressive", "baseline"):
        for k, v in cl[arm].items():
            torch.testing.assert_close(v, resumed[arm][k], rtol=0, atol=0, msg=f"{arm} {k}")
            torch.testing.assert_close(v, default[arm][k], rtol=1e-3, atol=1e-4, msg=f"{arm} {k}")
    losses = {n: [float(r["progressive_loss"]) for r in read_log(runs[n])] for n in ("default", "cl")}
    np.testing.assert_allclose(losses["cl"], losses["default"], rtol=1e-3)
    exported = read_checkpoint(runs["cl"] / "model.pt")["state_dict"]  # as stored (load_model changes the layout)
    assert all(v.is_contiguous() for v in exported.values())
    for k, v in exported.items():
        torch.testing.assert_close(v, cl["progressive"][f"unet.{k}"], rtol=0, atol=0)


def test_existing_run_needs_resume(tmp_path):
    out = tmp_path / "r"
    assert run_train(out, "--set", "train.iterations=2", "train.snapshot_every=1").returncode == 0
    r = run_train(out, "--set", "train.iterations=2")
    assert r.returncode == 2 and "--resume" in r.stderr


def test_headless_slicer_command_line(tmp_path):
    """`Slicer --python-script train.py -- ARGS` gives the script ["--", *ARGS]: a leading `--`
    is accepted; errors end the process with a non-zero code instead of leaving it running."""
    out = tmp_path / "headless"
    r = run_process([sys.executable, str(TRAIN), "--", "--smoke", "--quiet", "--out", str(out), "--set",
                        "train.iterations=2", "train.snapshot_every=1"], capture_output=True, text=True,
                       encoding="utf-8")
    assert r.returncode == 0, r.stderr
    assert len(read_log(out)) == 2 and (out / "model.pt").is_file()
    r = run_process([sys.executable, str(TRAIN), "--", "--smoke", "--out", str(tmp_path / "bad"), "--set",
                        "train.bogus=1"], capture_output=True, text=True, encoding="utf-8")
    assert r.returncode == 2 and "unknown key" in r.stderr
    r = run_process([sys.executable, str(TRAIN), "--", "--out", str(tmp_path / "o"), "--no-such-option"],
                       capture_output=True, text=True, encoding="utf-8")
    assert r.returncode == 2 and "unrecognized arguments: --no-such-option" in r.stderr
    # An unexpected failure (the output path is a file) is exit code 1 with its traceback.
    (tmp_path / "file").write_text("x", encoding="utf-8")
    r = run_process([sys.executable, str(TRAIN), "--", "--smoke", "--quiet", "--out", str(tmp_path / "file" / "run")],
                       capture_output=True, text=True, encoding="utf-8")
    assert r.returncode != 0 and r.stderr.strip(), r.stderr


def test_training_errors_are_clear(tmp_path):
    r = run_train(tmp_path / "x", "--set", "train.bogus=1")
    assert r.returncode == 2 and "unknown key" in r.stderr
    r = run_train(tmp_path / "y", "--images", tmp_path / "none.nii.gz")
    assert r.returncode == 2 and "no such file" in r.stderr
    (tmp_path / "bad.nii.gz").write_text("garbage", encoding="utf-8")
    r = run_train(tmp_path / "z", "--images", tmp_path / "bad.nii.gz")
    assert r.returncode == 2 and "not a readable image" in r.stderr
    # A diverging run stops with a clear message and keeps its last good checkpoint.
    out = tmp_path / "nan"
    r = run_train(out, "--set", "train.lr=1e20", "train.snapshot_every=1", "train.iterations=50")
    assert r.returncode == 1 and "loss is" in r.stderr, r.stderr
    if (out / "checkpoint.pt").exists():
        state = read_checkpoint(out / "checkpoint.pt")
        assert all(torch.isfinite(v).all() for v in state["models"]["progressive"].values() if v.is_floating_point())


def test_landmark_validation_and_image_folders(tmp_path):
    import json

    import SimpleITK as sitk
    from conftest import SAMPLE

    from ProgressiveRegistrationLib.io.landmarks import write_markups_json
    from ProgressiveRegistrationLib.simulation.breathing import simulate

    p = simulate(sitk.ReadImage(str(SAMPLE)), n_landmarks=20)
    sitk.WriteImage(p.inhale, str(tmp_path / "f.nrrd"))
    sitk.WriteImage(p.exhale, str(tmp_path / "m.nrrd"))
    write_markups_json(tmp_path / "f.mrk.json", p.fixed_points_lps)
    write_markups_json(tmp_path / "m.mrk.json", p.moving_points_lps)
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    sitk.WriteImage(p.inhale, str(tmp_path / "imgs" / "a.nii.gz"))
    sitk.WriteImage(p.exhale, str(tmp_path / "imgs" / "sub" / "b.mha"))
    assert [x.split("/")[-1] for x in collect_images([str(tmp_path / "imgs")])] == ["a.nii.gz", "b.mha"]
    lm = [{"fixed": str(tmp_path / "f.nrrd"), "moving": str(tmp_path / "m.nrrd"),
           "fixed_landmarks": str(tmp_path / "f.mrk.json"), "moving_landmarks": str(tmp_path / "m.mrk.json")}]
    out = tmp_path / "run"
    r = run_train(out, "--images", tmp_path / "imgs", "--set", "train.iterations=20", "train.snapshot_every=10",
                  "train.validation_landmarks=" + json.dumps(lm))
    assert r.returncode == 0, r.stderr
    log = read_log(out)
    assert len(log) == 2 and float(log[-1]["progressive_landmark_tre_mm"]) > 0
    assert "baseline_landmark_tre_mm" in log[-1]


def test_two_process_distributed_run(tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = run_process([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(TRAIN), "--smoke", "--quiet", "--out", str(out), "--set", "train.iterations=6",
                        "train.snapshot_every=3", "train.threads=1"],
                       capture_output=True, text=True, encoding="utf-8", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(read_log(out)) == 2 and (out / "model.pt").is_file()


def test_a_run_starts_from_a_model_files_weights(tmp_path, tiny_model):
    """train.init_model: every arm starts from the file's network (fine-tuning); with a learning rate
    of zero the exported model holds those weights still. A file of another network is refused."""
    out = tmp_path / "finetune"
    r = run_train(out, "--set", f"train.init_model={tiny_model}", "train.mode=baseline", "train.lr=0",
                  "train.iterations=2", "train.snapshot_every=2")
    assert r.returncode == 0, r.stderr
    start = dict(load_model(tiny_model, fold_bn=False).net.named_parameters())
    trained = dict(load_model(out / "model.pt", fold_bn=False).net.named_parameters())
    assert start.keys() == trained.keys()
    for name, weight in start.items():
        torch.testing.assert_close(trained[name], weight, rtol=0, atol=0, msg=name)
    r = run_train(tmp_path / "other", "--set", f"train.init_model={tiny_model}", "network.base_channels=8")
    assert r.returncode == 2 and "train.init_model" in r.stderr, r.stderr
    assert not (tmp_path / "other" / "model.pt").exists()
