#!/usr/bin/env python3
"""Make the release repository of the extension, and check its size as the Slicer Extensions Index does.

The Extensions Index (Slicer/ExtensionsIndex, ``scripts/check_description_files.py``) clones the
repository named by the description file's ``scm_url`` with its whole history, checks out
``scm_revision``, adds up the size of every file under the clone, ``.git`` included, and rejects
the extension above 100 MB. The development repository's history holds earlier model files and
training checkpoints; the release repository holds the tracked tree of one commit, under a fresh
history of one commit.

    python scripts/make_release.py --out ../SlicerProgressiveRegistration-release
    python scripts/make_release.py --out DIR --revision v0.1.0 --author "Name <email>" --date 2026-12-07T12:00:00Z
    python scripts/make_release.py --revision main \
        --check-only https://github.com/progressive-registration/SlicerProgressiveRegistration.git

What the release holds and why, and the steps that follow: docs/RELEASE.md. Only the standard
library and ``git``; the working repository is only read (``git archive``, ``git show``).
Exit status: 0 within the limit, 1 over the limit or a check failed, 2 the command could not run.
"""

from __future__ import annotations

import argparse
import fnmatch
import io
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

MB = 1024 * 1024  # the index divides bytes by 1024 * 1024
DEFAULT_LIMIT_MB = 100.0  # check_repository_size: size_limit_mb
#: The release branch (the scm_revision of ProgressiveRegistration.json and .s4ext): main for the
#: index's main branch (Slicer's preview), a Slicer release's name (e.g. "5.10") for the index's
#: branch of that release.
BRANCH = "main"

#: Left out of the release even when tracked: ``fnmatch`` patterns on the path or the file name; one
#: ending in "/" leaves out every folder whose path matches it, with all it holds. Training runs,
#: checkpoints and demo outputs are development artefacts: .gitignore keeps them untracked, this
#: keeps a force-added one out.
LEFT_OUT = (
    "runs/",  # progreg train --out runs/...
    "experiments/runs/",  # paper_cpu.py's arms: checkpoints, snapshots
    "demo-output/",  # demo.sh
    "*/snapshots/",  # train.keep_snapshots
    "*.ckpt",
    "*checkpoint*.pt",
)

#: Files larger than this must match LARGE_FILES_ALLOWED: the shipped model is the one large file a release carries.
LARGE_FILE_MB = 2.0
LARGE_FILES_ALLOWED = ("ProgressiveRegistration/Resources/Models/*.pt",)

LICENSE_NAMES = ("LICENSE", "LICENCE", "License.txt", "license.txt", "LICENSE.txt", "COPYING", "COPYING.txt")


class ReleaseError(RuntimeError):
    """The command cannot run (exit status 2)."""


class ReleaseRejected(ReleaseError):
    """The release breaks a rule the index or this script checks (exit status 1)."""


@dataclass
class Measurement:
    """A repository measured as check_repository_size measures it."""

    source: str
    revision: str | None
    total_bytes: int
    git_bytes: int
    limit_mb: float
    largest_history: list[tuple[str, int]] = field(default_factory=list)  # (path, bytes packed) over all refs

    @property
    def total_mb(self) -> float:
        return self.total_bytes / MB

    @property
    def ok(self) -> bool:
        return self.total_mb <= self.limit_mb  # the index fails only above the limit

    def report(self) -> str:
        where = f"{self.source}" + (f" at {self.revision}" if self.revision else "")
        lines = [f"Repository size as the Extensions Index measures it (git clone {where}, every file of the clone, "
                 f".git included): {self.total_mb:.1f} MB of the {self.limit_mb:g} MB limit "
                 f"(checked-out files {(self.total_bytes - self.git_bytes) / MB:.1f} MB, .git {self.git_bytes / MB:.1f} MB)."]
        if not self.ok:
            lines.append(f"FAILED: {self.total_mb:.1f} MB exceeds the {self.limit_mb:g} MB limit: "
                         "the index rejects this repository.")
            if self.largest_history:
                lines.append("What its history holds most of (every version of a path, over all branches and tags, packed):")
                lines += [f"  {size / MB:8.1f} MB  {path}" for path, size in self.largest_history]
        return "\n".join(lines)


# --- git ---------------------------------------------------------------------------------------

def git(*args: str, cwd: Path | str | None = None, env: dict | None = None, binary: bool = False):
    """``git ARGS`` with output captured; ReleaseError with git's message when it fails."""
    if shutil.which("git") is None:
        raise ReleaseError("git is not installed (or not on PATH)")
    result = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True)
    if result.returncode != 0:
        raise ReleaseError(f"git {' '.join(args)} failed: {result.stderr.decode('utf-8', 'replace').strip()}")
    return result.stdout if binary else result.stdout.decode("utf-8", "replace").strip()


def _isolated_env(extra: dict | None = None) -> dict:
    """An environment in which the user's global git configuration cannot change the release commit."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update({"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_TERMINAL_PROMPT": "0"})
    env.update(extra or {})
    return env


# --- measuring -----------------------------------------------------------------------------------

def measure_folder(folder: Path | str) -> int:
    """Bytes of every file under ``folder``: check_repository_size's sum, line for line."""
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


def _largest_history_objects(clone: Path, count: int = 8) -> list[tuple[str, int]]:
    """The paths whose blobs take most room in the clone's packs, over every ref it fetched."""
    objects = git("rev-list", "--objects", "--all", cwd=clone)
    lines = [ln for ln in objects.splitlines() if ln]
    result = subprocess.run(["git", "cat-file", "--batch-check=%(objecttype) %(objectsize:disk) %(rest)"],
                            cwd=clone, input="\n".join(ln.split(" ", 1)[0] for ln in lines) + "\n",
                            capture_output=True, text=True, encoding="utf-8", errors="replace")
    by_path: dict[str, int] = {}
    for line, checked in zip(lines, result.stdout.splitlines()):
        kind, size, _ = (checked.split(" ", 2) + [""])[:3]
        if kind == "blob":
            path = line.split(" ", 1)[1] if " " in line else "?"
            by_path[path] = by_path.get(path, 0) + int(size)
    return sorted(by_path.items(), key=lambda kv: -kv[1])[:count]


def check_size(source: str | Path, revision: str | None = None, limit_mb: float = DEFAULT_LIMIT_MB) -> Measurement:
    """Clone ``source`` as the index does (full history, all branches and tags, then ``git checkout
    revision``), measure the clone as the index does, remove it.

    A local path is cloned with ``--no-local``: through git's transport, as from GitHub, so the
    clone holds one pack of what its refs reach, not hard links to every object of the source.
    """
    tmp = Path(tempfile.mkdtemp(prefix="release_size_check_"))
    clone = tmp / "clone"
    try:
        url = str(Path(source).resolve()) if Path(source).exists() else str(source)
        env = dict(os.environ, GIT_TERMINAL_PROMPT="0")
        git("clone", "--quiet", "--no-local", "-c", "core.autocrlf=false", url, str(clone), env=env)
        if revision:
            try:
                git("checkout", "--quiet", revision, cwd=clone, env=env)
            except ReleaseError as exc:
                raise ReleaseRejected(f"the index would fail to check out {revision}: {exc}") from None
        total = measure_folder(clone)
        m = Measurement(str(source), revision, total, measure_folder(clone / ".git"), limit_mb)
        if not m.ok:
            m.largest_history = _largest_history_objects(clone)
        return m
    finally:
        _rmtree(tmp)


def _rmtree(path: Path) -> None:
    """shutil.rmtree that also removes read-only files (git's pack files on Windows)."""
    def force(func, p, _exc):
        try:
            os.chmod(p, stat.S_IWRITE)
            func(p)
        except OSError:
            pass

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=force)
    else:
        shutil.rmtree(path, onerror=force)


# --- the release tree ----------------------------------------------------------------------------

def left_out(path: str) -> bool:
    """Whether a tracked path stays out of the release (LEFT_OUT)."""
    for pattern in LEFT_OUT:
        if pattern.endswith("/"):
            folder = pattern.rstrip("/")
            parents = [str(p) for p in PurePosixPath(path).parents if str(p) != "."]
            if any(fnmatch.fnmatchcase(p, folder) for p in parents):
                return True
        elif fnmatch.fnmatchcase(path, pattern) or fnmatch.fnmatchcase(PurePosixPath(path).name, pattern):
            return True
    return False


def preflight(tree: Path) -> list[str]:
    """The index's offline checks of the tree (the rest need the network): CMakeLists.txt with a
    project(), a licence file, an icon URL and screenshot URLs, and every raw.githubusercontent.com
    URL naming a file the tree has. And the build's: every file a scripted module's CMakeLists.txt
    lists (MODULE_PYTHON_SCRIPTS, MODULE_PYTHON_RESOURCES) is in the tree."""
    problems = []
    cmake = tree / "CMakeLists.txt"
    if not cmake.is_file():
        return ["CMakeLists.txt file not found in repository root"]
    text = cmake.read_text(encoding="utf-8", errors="ignore")
    if not re.findall(r"project\s*\(\s*([^\s\)\n\r]+)", text, re.IGNORECASE | re.MULTILINE):
        problems.append("No project() declaration found in CMakeLists.txt")
    if not any((tree / name).is_file() for name in LICENSE_NAMES):
        problems.append("No license file found in repository root.")
    urls = []
    icon = re.findall(r'set\s*\(EXTENSION_ICONURL\s*"([^"]+)"[ ]*\)', text, re.IGNORECASE | re.MULTILINE)
    shots = re.findall(r'set\s*\(EXTENSION_SCREENSHOTURLS\s*"([^"]+)"\)', text, re.IGNORECASE | re.MULTILINE)
    if icon:
        urls.append(icon[0].strip())
    else:
        problems.append("No EXTENSION_ICONURL found in CMakeLists.txt.")
    if shots:
        urls += shots[0].split()
    else:
        problems.append("No EXTENSION_SCREENSHOTURLS found in CMakeLists.txt.")
    for url in urls:
        m = re.match(r"https://raw\.githubusercontent\.com/[^/]+/[^/]+/[^/]+/(.+)$", url)
        if m and not (tree / m.group(1)).is_file():
            problems.append(f"{url} names {m.group(1)}, which the release tree does not have")
    for module_cmake in sorted(tree.glob("*/CMakeLists.txt")):
        problems += _missing_module_files(module_cmake)
    return problems


def _missing_module_files(cmake: Path) -> list[str]:
    text = re.sub(r"#[^\n]*", "", cmake.read_text(encoding="utf-8", errors="ignore"))
    name = re.search(r"set\(\s*MODULE_NAME\s+([^\s)]+)\s*\)", text)
    missing = []
    for variable in ("MODULE_PYTHON_SCRIPTS", "MODULE_PYTHON_RESOURCES"):
        listed = re.search(rf"set\(\s*{variable}\s+(.*?)\)", text, re.S)
        for item in listed.group(1).split() if listed else []:
            path = item.replace("${MODULE_NAME}", name.group(1)) if name else item
            if "$" not in path and not (cmake.parent / path).is_file():
                missing.append(f"{cmake.parent.name}/CMakeLists.txt lists {path}, which the release tree does not have")
    return missing


@dataclass
class Release:
    out: Path
    commit: str
    source_commit: str
    files: int
    tree_bytes: int
    measurement: Measurement
    branch: str = BRANCH

    def report(self) -> str:
        return (f"Release repository {self.out}: one commit {self.commit[:12]} on {self.branch} (the tree of "
                f"{self.source_commit[:12]}), {self.files} files, {self.tree_bytes / MB:.1f} MB.\n"
                + self.measurement.report())


def _author(source: Path, author: str | None) -> tuple[str, str]:
    if author:
        m = re.fullmatch(r"\s*(.+?)\s*<([^<>]+)>\s*", author)
        if not m:
            raise ReleaseError(f"--author must read 'Name <email>', not {author!r}")
        return m.group(1), m.group(2)
    try:
        return git("config", "user.name", cwd=source), git("config", "user.email", cwd=source)
    except ReleaseError:
        raise ReleaseError("no author: pass --author 'Name <email>' or set git config user.name and user.email") from None


def _version(source: Path, revision: str) -> str | None:
    try:
        text = git("show", f"{revision}:ProgressiveRegistration/ProgressiveRegistrationLib/__init__.py", cwd=source)
    except ReleaseError:
        return None
    m = re.search(r"^__version__\s*=\s*[\"']([^\"']+)[\"']", text, re.M)
    return m.group(1) if m else None


def _check_out_folder(out: Path, source_top: Path) -> None:
    out_r, top = out.resolve(), source_top.resolve()
    if out_r == top or top in out_r.parents:
        raise ReleaseError(f"--out {out} is inside the working repository {top}: choose a folder outside it")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ReleaseError(f"--out {out} exists and is not an empty folder")


def build_release(source: Path | str, out: Path | str, revision: str = "HEAD", author: str | None = None,
                  date: str | None = None, limit_mb: float = DEFAULT_LIMIT_MB,
                  large_file_mb: float = LARGE_FILE_MB, log=print, branch: str = BRANCH) -> Release:
    """Write the release repository into ``out`` (a new or empty folder) from ``revision`` of the
    repository at ``source``: its tracked tree less LEFT_OUT, one commit on ``branch`` with no parent
    (its description files' scm_revision set to ``branch``: :func:`set_revision`),
    by ``author`` ('Name <email>'; default: git config user.name/user.email) at ``date`` (any
    date git reads; default: the source commit's date, so the same inputs give the same commit).
    Then clone it and measure the clone as the index does; ``Release.measurement.ok`` says
    whether it is within ``limit_mb``. ReleaseError when the release cannot be made (nothing
    left in ``out``); ReleaseRejected when it breaks a rule (large files, the index's offline checks)."""
    source, out = Path(source), Path(out)
    top = Path(git("rev-parse", "--show-toplevel", cwd=source))
    _check_out_folder(out, top)
    source_commit = git("rev-parse", "--verify", f"{revision}^{{commit}}", cwd=top)
    name, email = _author(top, author)
    date = date or git("log", "-1", "--format=%cI", source_commit, cwd=top)
    if git("status", "--porcelain", "--untracked-files=no", cwd=top):
        log(f"Note: {top} has uncommitted changes; the release holds the committed tree of {revision} only.")

    archive = git("archive", "--format=tar", source_commit, cwd=top, binary=True)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
        dropped = [m.name for m in tar.getmembers() if not m.isdir() and left_out(m.name)]
        members = [m for m in tar.getmembers() if not m.isdir() and not left_out(m.name)]
        large = [m for m in members if m.isfile() and m.size > large_file_mb * MB
                 and not any(fnmatch.fnmatchcase(m.name, p) for p in LARGE_FILES_ALLOWED)]
        if large:
            listed = "\n".join(f"  {m.size / MB:8.1f} MB  {m.name}" for m in sorted(large, key=lambda m: -m.size))
            raise ReleaseRejected(f"files over {large_file_mb:g} MB that are not the shipped model "
                               f"({', '.join(LARGE_FILES_ALLOWED)}):\n{listed}\n"
                               "keep them out of the tracked tree, or add them to LEFT_OUT or LARGE_FILES_ALLOWED in "
                               "scripts/make_release.py (docs/RELEASE.md)")
        if dropped:
            log(f"Left out ({len(dropped)} tracked files): " + ", ".join(dropped[:10]) + (" ..." if len(dropped) > 10 else ""))
        created = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        try:
            kwargs = {"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}
            tar.extractall(out, members=members, **kwargs)
            set_revision(out, branch)
            problems = preflight(out)
            if problems:
                raise ReleaseRejected("the release tree fails the index's checks:\n  " + "\n  ".join(problems))
            commit = _commit(out, top, source_commit, name, email, date, branch)
        except BaseException:
            _clear(out, created)  # nothing half-made stays behind
            raise
    files = [m for m in members if m.isfile() or m.issym()]
    measurement = check_size(out, branch, limit_mb)
    return Release(out, commit, source_commit, len(files), sum(m.size for m in files), measurement, branch)


def set_revision(tree: Path, branch: str) -> None:
    """Make the description files in ``tree`` name ``branch`` as their revision: ``scm_revision``
    of the ``.json`` (ExtensionsIndex, Slicer 5.8 and later) and ``scmrevision`` of the ``.s4ext``
    (Slicer 5.6 and earlier), so that the files a release carries are what its index entry says."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/-]*", branch) or ".." in branch:
        raise ReleaseError(f"--branch {branch!r}: not a branch name")
    for path in tree.glob("*.json"):
        text = path.read_text(encoding="utf-8")
        if '"scm_revision"' in text:
            path.write_text(re.sub(r'("scm_revision"\s*:\s*)"[^"]*"', lambda m: f'{m.group(1)}"{branch}"', text),
                            encoding="utf-8")
    for path in tree.glob("*.s4ext"):
        text = path.read_text(encoding="utf-8")
        path.write_text(re.sub(r"(?m)^scmrevision .*$", f"scmrevision {branch}", text), encoding="utf-8")


def _commit(out: Path, top: Path, source_commit: str, name: str, email: str, date: str, branch: str = BRANCH) -> str:
    """``out``'s files as the one commit of a new repository; its id."""
    version = _version(top, source_commit)
    message = (f"ProgressiveRegistration{' ' + version if version else ''}\n\n"
               f"The tree of commit {source_commit} of the development repository, with a history of its own "
               "(scripts/make_release.py, docs/RELEASE.md).\n")
    env = _isolated_env({"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email, "GIT_AUTHOR_DATE": date,
                         "GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email, "GIT_COMMITTER_DATE": date})
    git("init", "--quiet", str(out), env=env)
    git("symbolic-ref", "HEAD", f"refs/heads/{branch}", cwd=out, env=env)
    git("-c", "core.autocrlf=false", "add", "--force", "--all", cwd=out, env=env)
    git("-c", "commit.gpgsign=false", "commit", "--quiet", "--no-verify", "-m", message, cwd=out, env=env)
    return git("rev-parse", "HEAD", cwd=out)


def _clear(out: Path, created: bool) -> None:
    """Remove ``out`` (when this run made it) or what this run put in it (it was empty)."""
    if created:
        _rmtree(out)
    elif out.is_dir():
        for child in out.iterdir():
            if child.is_dir() and not child.is_symlink():
                _rmtree(child)
            else:
                child.unlink()


# --- command line ---------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Make the release repository (the extension's tree under a fresh one-commit history) and check "
                    "its size as the Slicer Extensions Index does; or, with --check-only, check an existing repository.",
        epilog="docs/RELEASE.md describes the release steps.")
    parser.add_argument("--out", type=Path, help="folder for the release repository (new or empty, outside this repository)")
    parser.add_argument("--check-only", metavar="REPO", help="only clone REPO (a path or URL) and measure it as the index does")
    parser.add_argument("--source", type=Path, default=Path(__file__).resolve().parent.parent,
                        help="the development repository (default: the one holding this script)")
    parser.add_argument("--revision", help="the commit to release (default HEAD); with --check-only, the scm_revision "
                                           "to check out (default: the clone's default branch)")
    parser.add_argument("--author", help="'Name <email>' of the release commit (default: git config user.name/user.email)")
    parser.add_argument("--date", help="date of the release commit, any format git reads (default: the released commit's date)")
    parser.add_argument("--branch", default=BRANCH,
                        help=f"the release branch, and the scm_revision of the released description files (default "
                             f"{BRANCH}, for the index's main branch; a Slicer release's name, e.g. 5.10, for the "
                             "index's branch of that release)")
    parser.add_argument("--limit-mb", type=float, default=DEFAULT_LIMIT_MB,
                        help=f"size limit in MB of 1024*1024 bytes (default {DEFAULT_LIMIT_MB:g}, the index's)")
    args = parser.parse_args(argv)
    if (args.out is None) == (args.check_only is None):
        parser.error("give either --out DIR or --check-only REPO")
    try:
        if args.check_only:
            measurement = check_size(args.check_only, args.revision, args.limit_mb)
            print(measurement.report())
            return 0 if measurement.ok else 1
        release = build_release(args.source, args.out, args.revision or "HEAD", args.author, args.date, args.limit_mb,
                                branch=args.branch)
    except ReleaseRejected as exc:
        print(f"make_release: FAILED: {exc}", file=sys.stderr)
        return 1
    except ReleaseError as exc:
        print(f"make_release: error: {exc}", file=sys.stderr)
        return 2
    print(release.report())
    if not release.measurement.ok:
        print(f"The repository stays in {release.out} for inspection; do not push it.", file=sys.stderr)
        return 1
    print(f"Next: push {release.branch} of {release.out} to the release repository, then update the index entry "
          f"(docs/RELEASE.md).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
