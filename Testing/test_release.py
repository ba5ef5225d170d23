"""The release repository stays within the Slicer Extensions Index's size limit (scripts/make_release.py,
docs/RELEASE.md): the tracked tree is small, the release of this repository measures under 100 MB as
the index measures it, and the script does what it says on small repositories made here."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, run_process

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed: the release checks clone repositories")

SCRIPT = ROOT / "scripts" / "make_release.py"
MB = 1024 * 1024
TRACKED_LIMIT_MB = 30  # the index counts a release about twice (checked out, and packed in .git): 2 × 30 < 100
AUTHOR = "Release Test <release-test@example.invalid>"
DATE = "2026-01-02T03:04:05+00:00"
QUIET = {"log": lambda *_: None}


@pytest.fixture(scope="module")
def mr():
    spec = importlib.util.spec_from_file_location("make_release", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_release"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def git(*args, cwd) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull, GIT_AUTHOR_NAME="Dev",
               GIT_AUTHOR_EMAIL="dev@example.invalid", GIT_COMMITTER_NAME="Dev", GIT_COMMITTER_EMAIL="dev@example.invalid")
    r = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env=env)
    assert r.returncode == 0, f"git {' '.join(args)}: {r.stderr}"
    return r.stdout.strip()


def run_script(*args) -> subprocess.CompletedProcess:
    return run_process([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True)


def state(repo: Path) -> tuple[str, str, str]:
    """What a release must leave as it was: status (untracked files included), refs, HEAD."""
    return (git("status", "--porcelain", "--untracked-files=all", cwd=repo), git("for-each-ref", cwd=repo),
            git("rev-parse", "HEAD", cwd=repo))


# --- this repository ---------------------------------------------------------------------------

def test_tracked_tree_stays_under_30_mb():
    inside = subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], cwd=ROOT, capture_output=True, text=True)
    if inside.stdout.strip() != "true":
        pytest.skip(f"{ROOT} is not a git checkout: no tracked tree to measure")
    names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    sizes = {n: (ROOT / n).lstat().st_size for n in names if n and os.path.lexists(ROOT / n)}
    total = sum(sizes.values())
    largest = "\n".join(f"  {size / MB:6.1f} MB  {name}" for name, size in sorted(sizes.items(), key=lambda kv: -kv[1])[:8])
    assert total <= TRACKED_LIMIT_MB * MB, (
        f"the tracked tree is {total / MB:.1f} MB, over {TRACKED_LIMIT_MB} MB: a release counts it about twice against the "
        f"Extensions Index's 100 MB (docs/RELEASE.md). Largest tracked files:\n{largest}")


def test_release_of_this_repository_is_within_the_index_limit(mr, tmp_path):
    release = mr.build_release(ROOT, tmp_path / "release", author=AUTHOR, date=DATE, **QUIET)
    assert release.measurement.ok, release.report()
    assert release.measurement.limit_mb == 100
    out = tmp_path / "release"
    assert git("rev-list", "--count", "--all", cwd=out) == "1"
    shipped = set(git("ls-files", cwd=out).splitlines())
    tracked = {n for n in git("ls-tree", "-r", "--name-only", "HEAD", cwd=ROOT).splitlines() if not mr.left_out(n)}
    assert shipped == tracked
    assert {"CMakeLists.txt", "ProgressiveRegistration.s4ext", "LICENSE", "ProgressiveRegistration/CMakeLists.txt",
            "ProgressiveRegistration/Resources/Models/progreg_cpu64.pt"} <= shipped


# --- the script, on small repositories ----------------------------------------------------------

def _write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


@pytest.fixture
def toy(tmp_path) -> Path:
    """An extension repository whose history holds a 1 MB file its tree no longer has, with a
    force-added checkpoint, a model, an executable script, an untracked file and an uncommitted change."""
    repo = tmp_path / "dev"
    raw = "https://raw.githubusercontent.com/example/SlicerToy/main"
    _write(repo / "CMakeLists.txt", f'project(Toy)\nset(EXTENSION_ICONURL "{raw}/Resources/Icons/Toy.png")\n'
                                    f'set(EXTENSION_SCREENSHOTURLS "{raw}/Resources/Screenshots/1.png")\n')
    _write(repo / "LICENSE", "Apache-2.0\n")
    _write(repo / "README.md", "# Toy\n")
    _write(repo / "Resources" / "Icons" / "Toy.png", b"\x89PNG icon")
    _write(repo / "Resources" / "Screenshots" / "1.png", b"\x89PNG shot")
    _write(repo / "ProgressiveRegistration" / "Resources" / "Models" / "model.pt", os.urandom(300_000))
    _write(repo / "ProgressiveRegistration" / "CMakeLists.txt",
           "set(MODULE_NAME ProgressiveRegistration)\nset(MODULE_PYTHON_SCRIPTS\n  )\n"
           "set(MODULE_PYTHON_RESOURCES\n  Resources/Models/model.pt # the model\n  )\n")
    _write(repo / "run.sh", "#!/bin/sh\necho ok\n")
    (repo / "run.sh").chmod(0o755)
    _write(repo / "old_model.pt", os.urandom(MB))
    git("init", "--quiet", cwd=repo)
    git("add", ".", cwd=repo)
    git("commit", "--quiet", "-m", "with the old model", cwd=repo)
    git("rm", "--quiet", "old_model.pt", cwd=repo)
    _write(repo / "experiments" / "runs" / "a" / "checkpoint.pt", b"checkpoint")
    git("add", "--force", "experiments/runs/a/checkpoint.pt", cwd=repo)
    git("commit", "--quiet", "-m", "without it", cwd=repo)
    _write(repo / "README.md", "# Toy, edited and not committed\n")
    _write(repo / "notes.txt", "untracked\n")
    return repo


def test_release_is_one_new_commit_of_the_committed_tree(mr, toy, tmp_path):
    before = state(toy)
    out = tmp_path / "release"
    release = mr.build_release(toy, out, author=AUTHOR, date=DATE, large_file_mb=0.1, **QUIET)
    assert state(toy) == before, "the working repository changed"
    assert release.measurement.ok and release.files == 8
    assert git("ls-files", cwd=out).splitlines() == sorted(
        ["CMakeLists.txt", "LICENSE", "README.md", "Resources/Icons/Toy.png", "Resources/Screenshots/1.png",
         "ProgressiveRegistration/CMakeLists.txt", "ProgressiveRegistration/Resources/Models/model.pt", "run.sh"])
    assert (out / "README.md").read_text() == "# Toy\n"  # committed, not the working copy
    assert os.stat(out / "run.sh").st_mode & stat.S_IXUSR
    assert git("rev-parse", "--abbrev-ref", "HEAD", cwd=out) == "main"
    assert git("rev-list", "--count", "--all", cwd=out) == "1" and git("log", "--format=%P", cwd=out) == ""
    assert git("log", "--format=%an <%ae>|%aI|%cn <%ce>|%cI", cwd=out) == f"{AUTHOR}|{DATE}|{AUTHOR}|{DATE}"
    assert git("rev-parse", "HEAD", cwd=toy) in git("log", "--format=%B", cwd=out)
    assert git("status", "--porcelain", cwd=out) == ""
    again = mr.build_release(toy, tmp_path / "again", author=AUTHOR, date=DATE, large_file_mb=0.1, **QUIET)
    assert again.commit == release.commit, "the same inputs must give the same release commit"


def test_a_release_for_a_slicer_release_branch_names_it_in_its_description_files(mr, toy, tmp_path):
    """The Extensions Index keeps a branch per Slicer release (5.8, 5.10, ...): its entry there
    names a branch of the release repository, and the released description files say the same."""
    _write(toy / "Toy.json", '{\n  "scm_revision": "main",\n  "scm_type": "git"\n}\n')
    _write(toy / "Toy.s4ext", "scm git\nscmrevision main\ncategory Registration\n")
    git("add", "Toy.json", "Toy.s4ext", cwd=toy)
    git("commit", "--quiet", "-m", "description files", cwd=toy)
    out = tmp_path / "release-5.10"
    release = mr.build_release(toy, out, author=AUTHOR, date=DATE, large_file_mb=0.1, branch="5.10", **QUIET)
    assert git("rev-parse", "--abbrev-ref", "HEAD", cwd=out) == "5.10" and " on 5.10 " in release.report()
    assert json.loads((out / "Toy.json").read_text())["scm_revision"] == "5.10"
    assert "scmrevision 5.10\n" in (out / "Toy.s4ext").read_text() and "category Registration" in (out / "Toy.s4ext").read_text()
    assert git("status", "--porcelain", cwd=out) == ""  # committed as rewritten
    assert json.loads(git("show", "HEAD:Toy.json", cwd=toy))["scm_revision"] == "main"  # the source is untouched
    with pytest.raises(mr.ReleaseError, match="not a branch name"):
        mr.build_release(toy, tmp_path / "bad", author=AUTHOR, date=DATE, large_file_mb=0.1, branch="a b", **QUIET)
    assert not (tmp_path / "bad").exists()


def test_history_counts_and_over_the_limit_fails_clearly(mr, toy, tmp_path):
    # The tree is 0.3 MB, the history 1.3 MB: the index counts the history.
    r = run_script("--check-only", toy, "--limit-mb", "0.8")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAILED" in r.stdout and "exceeds the 0.8 MB limit" in r.stdout and "old_model.pt" in r.stdout
    r = run_script("--source", toy, "--out", tmp_path / "release", "--author", AUTHOR, "--date", DATE, "--limit-mb", "0.8")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "of the 0.8 MB limit" in r.stdout
    r = run_script("--check-only", tmp_path / "release", "--revision", "main", "--limit-mb", "0.8")
    assert r.returncode == 0 and "FAILED" not in r.stdout, r.stdout + r.stderr
    r = run_script("--source", toy, "--out", tmp_path / "tight", "--author", AUTHOR, "--limit-mb", "0.05")
    assert r.returncode == 1 and "exceeds the 0.05 MB limit" in r.stdout and "do not push it" in r.stderr


def test_measured_as_the_index_measures(mr, toy, tmp_path):
    """check_repository_size: every file under a full clone, .git included, after checking out scm_revision."""
    m = mr.check_size(toy, "HEAD~1")
    clone = tmp_path / "clone"
    git("clone", "--quiet", "--no-local", str(toy), str(clone), cwd=tmp_path)
    git("checkout", "--quiet", "HEAD~1", cwd=clone)
    expected = sum(f.stat().st_size for f in clone.rglob("*") if f.is_file())
    assert abs(m.total_bytes - expected) < 4096
    assert m.git_bytes > MB and m.total_bytes - m.git_bytes > MB  # the old model counts twice: packed, and checked out
    with pytest.raises(mr.ReleaseRejected, match="check out no-such-branch"):
        mr.check_size(toy, "no-such-branch")


def test_large_files_and_missing_files_are_refused(mr, toy, tmp_path):
    _write(toy / "docs" / "figure.png", os.urandom(200_000))
    git("add", "docs/figure.png", cwd=toy)
    git("commit", "--quiet", "-m", "a large figure", cwd=toy)
    with pytest.raises(mr.ReleaseRejected, match=r"(?s)not the shipped model.*docs/figure\.png"):
        mr.build_release(toy, tmp_path / "a", author=AUTHOR, large_file_mb=0.1, **QUIET)
    assert not (tmp_path / "a").exists()
    git("rm", "--quiet", "LICENSE", cwd=toy)
    cmake = toy / "ProgressiveRegistration" / "CMakeLists.txt"
    cmake.write_text(cmake.read_text().replace("model.pt", "model.pt\n  Resources/Models/checkpoint_best.pt"))
    _write(toy / "ProgressiveRegistration" / "Resources" / "Models" / "checkpoint_best.pt", b"weights")  # left out
    git("add", "--force", ".", cwd=toy)
    git("commit", "--quiet", "-m", "no licence, a model the release leaves out", cwd=toy)
    (tmp_path / "b").mkdir()
    with pytest.raises(mr.ReleaseRejected, match=r"(?s)No license file.*lists Resources/Models/checkpoint_best\.pt"):
        mr.build_release(toy, tmp_path / "b", author=AUTHOR, **QUIET)
    assert list((tmp_path / "b").iterdir()) == [], "a refused release leaves nothing behind"


def test_output_folder_must_be_new_or_empty_and_outside(toy, tmp_path):
    r = run_script("--source", toy, "--out", toy / "release", "--author", AUTHOR)
    assert r.returncode == 2 and "inside the working repository" in r.stderr
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    r = run_script("--source", toy, "--out", tmp_path / "full", "--author", AUTHOR)
    assert r.returncode == 2 and "not an empty folder" in r.stderr
    assert not (toy / "release").exists()
    r = run_script("--out", tmp_path / "o", "--check-only", toy)
    assert r.returncode == 2 and "either --out DIR or --check-only REPO" in r.stderr
