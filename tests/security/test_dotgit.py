"""The worktree's ``.git`` names the repository the daemon's own git works on. A model that
rewrites it to a gitdir with ``core.fsmonitor`` / ``core.hooksPath``, or to the user's
repository, would get its program run unconfined, or the user's branch moved. Confined, the
rewrite is refused (``.git`` is bound read-only); with the sandbox off it succeeds, and the
daemon's check of ``.git`` fails the batch before its git touches anything."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import pytest

from tests.security._lab import Feature, Lab, account, bash, edit, tool_results

TWO_FEATURES: list[Feature] = [("Storage", "database", [], ["app/db.py"]),
                ("Billing", "backend", [], ["app/billing.py"])]


def evil_gitdir(lab: Lab, name: str) -> str:
    """Shell that makes a gitdir (in the worktree, the one writable place) whose config runs
    a program on every status/add and whose hooks leave a marker."""
    marker = lab.markers / name
    hook = f"#!/bin/sh\\ntouch {marker}\\n"
    return (f"git init -q --bare evil.git && "
            f"git config -f evil.git/config core.bare false && "
            f"git config -f evil.git/config core.fsmonitor 'touch {marker}; false' && "
            f"git config -f evil.git/config core.hooksPath $PWD/evil.git/hooks && "
            "for h in pre-commit post-commit post-checkout reference-transaction "
            f"post-index-change; do printf '{hook}' > evil.git/hooks/$h; "
            "chmod +x evil.git/hooks/$h; done && "
            f"cp .git dotgit.orig 2>/dev/null; echo made-evil")


async def test_confined_model_cannot_rewrite_dotgit(lab_factory: Callable[..., Lab]) -> None:
    lab = lab_factory(account())
    nested_marker = lab.markers / "nested"
    turns: list[list[dict[str, Any]]] = [
        [bash(evil_gitdir(lab, "evil"))],
        [bash("printf 'gitdir: '$PWD/evil.git'\\n' > .git; echo write=$?; "
              "rm -f .git; echo rm=$?; mv .git moved.git; echo mv=$?; "
              f"ln -sfn {lab.repo}/.git .git; echo ln=$?; cat .git")],
        [edit(".git", f"gitdir: {lab.repo}/.git\n")],
        # Its own git configuration is not reachable either (the gitdir is not in the sandbox).
        [bash(f"git config core.fsmonitor 'touch {nested_marker}'; echo cfg=$?; "
              f"ls {lab.repo}/.git; echo repo=$?")],
        # A nested repository with an fsmonitor and hooks, for the daemon's `git add -A`.
        [bash(f"git init -q sub && git -C sub config core.fsmonitor 'touch {nested_marker}; "
              f"false' && printf '#!/bin/sh\\ntouch {nested_marker}\\n' > sub/.git/hooks/"
              "pre-commit && chmod +x sub/.git/hooks/pre-commit && echo x > sub/f && "
              "git -C sub add f && git -C sub -c user.name=m -c user.email=m@x commit -qm m "
              "--no-verify && echo nested-ok")],
    ]
    await lab.start(lab.responder({"app/db.py": turns}))
    run_id = await lab.submit()
    info = await lab.finish(run_id)
    shown = tool_results(lab.fake)
    assert "made-evil" in shown and "nested-ok" in shown, shown[-3000:]
    for step in ("write", "rm", "mv", "ln"):
        assert f"{step}=0" not in shown, shown[-3000:]
    assert "Read-only file system" in shown or "Device or resource busy" in shown
    assert "read-only" in shown  # the editor refuses .git
    assert "cfg=0" not in shown and "repo=0" not in shown
    # The batch went on as usual: nothing of it was allowed to matter.
    assert info["state"] == "succeeded", (info, lab.stderr()[-3000:])
    await lab.assert_contained(run_id)
    await lab.stop()


async def test_rewritten_dotgit_fails_the_batch_and_runs_nothing(
        lab_factory: Callable[..., Lab]) -> None:
    """With ``agent.sandbox = "off"`` the model can rewrite ``.git``: the daemon's check is
    what stands. One batch points it at a gitdir with an fsmonitor and hooks, the other at
    the user's own repository."""
    lab = lab_factory(account(), agent='sandbox = "off"\n', features=TWO_FEATURES)
    to_evil = [[bash(evil_gitdir(lab, "evil-off"))],
               [bash("printf 'gitdir: '$PWD/evil.git'\\n' > .git && cat .git")]]
    to_user = [[bash(f"printf 'gitdir: {lab.repo}/.git\\n' > .git && cat .git && "
                     "echo 'def pwned(): ...' > README.md")]]
    await lab.start(lab.responder({"app/db.py": to_evil, "app/billing.py": to_user}))
    run_id = await lab.submit()
    info = await lab.finish(run_id)
    assert info["state"] == "failed", info
    events = await lab.events(run_id)
    failed = [e for e in events if e["type"] in ("batch.failed", "task.failed")
              and "rewrote" in str(e.get("data"))]
    batches = {e.get("data", {}).get("batch_id") or e.get("batch_id") for e in failed}
    assert len(batches) >= 2 or len(failed) >= 2, [e["type"] for e in events]
    await lab.assert_contained(run_id)
    await lab.stop()


async def test_nested_repository_config_never_runs_when_a_worktree_is_reused(
        lab_factory: Callable[..., Lab]) -> None:
    """A batch commits a nested repository (a gitlink) whose own config defines a clean
    filter for its files, and leaves one of them modified. When the run reuses that worktree
    for the next batch, the daemon's git resets and checks it: it must not run the nested
    repository's filter (it would run unconfined, with the daemon's rights)."""
    lab = lab_factory(account())
    marker = lab.markers / "nested-filter"
    plant = (
        "git init -q sub && cd sub && printf '* filter=evil diff=evil\\n' > .gitattributes && "
        "echo a > f && git add . && git -c user.name=m -c user.email=m@x commit -qm m "
        f"--no-verify && git config filter.evil.clean 'touch {marker}; cat' && "
        f"git config filter.evil.smudge 'touch {marker}; cat' && "
        f"git config diff.evil.textconv 'touch {marker}; cat' && "
        f"git config core.fsmonitor 'touch {marker}; false' && "
        "echo b >> f && cd .. && echo planted")
    await lab.start(lab.responder({"app/db.py": [[bash(plant)]]}))
    run_id = await lab.submit()
    info = await lab.finish(run_id)
    assert "planted" in tool_results(lab.fake)
    events = await lab.events(run_id)
    assert info["state"] in ("succeeded", "failed"), info
    assert not marker.exists(), [e for e in events if "worktree" in json.dumps(e)]
    await lab.assert_contained(run_id)
    await lab.stop()


@pytest.mark.parametrize("planted", ["file_naming_the_repository", "repository_deep_down"])
async def test_a_dotgit_left_below_the_top_does_not_reach_the_next_batch(
        lab_factory: Callable[..., Lab], planted: str) -> None:
    """git never lists, cleans or commits an entry named ``.git`` below a worktree's top, so a
    ``.git`` a batch leaves in a tracked folder (a file naming the user's repository, or a
    repository whose config runs a program) used to outlive the reset of a reused worktree:
    every later batch (and the daemon's git in it) saw that folder as another repository. The
    next batch must find it gone (the reset looks at each folder of the index, however deep),
    the user's branches must stay as they were, and nothing the planted config names runs."""
    lab = lab_factory(account(), features=[
        ("Storage", "database", [], ["app/db.py"]),
        ("Billing", "backend", [], ["app/billing.py"])])
    marker = lab.markers / "planted-config"
    # Folders the user's repository tracks: git's clean never removes what holds tracked files.
    folder = "lib" if planted == "file_naming_the_repository" else "lib/deep/er"
    keep = lab.repo / folder / "keep.py"
    keep.parent.mkdir(parents=True)
    keep.write_text("KEEP = 1\n")
    for made in [keep, *keep.parents]:
        if made.is_relative_to(lab.repo / "lib"):
            os.chown(made, lab.user.uid, lab.user.gid)
    lab.git("add", "lib", as_user=True)
    lab.git("commit", "-qm", "lib", as_user=True)
    refs_before = lab.git("for-each-ref")
    if planted == "file_naming_the_repository":
        plant = f"printf 'gitdir: {lab.repo}/.git\\n' > {folder}/.git && cat {folder}/.git"
    else:
        plant = (f"git init -q {folder} && git -C {folder} config core.fsmonitor "
                 f"'touch {marker}; false' && test -d {folder}/.git")
    plant += " && echo planted"
    probe = f"test -e {folder}/.git && echo dotgit=present || echo dotgit=gone"
    await lab.start(lab.responder({"app/billing.py": [[bash(plant)]],
                                   "app/db.py": [[bash(probe)]]}))
    run_id = await lab.submit(workers=1)
    info = await lab.finish(run_id)
    shown = tool_results(lab.fake)
    assert "planted" in shown, shown[-3000:]
    assert "dotgit=gone" in shown and "dotgit=present" not in shown, (info, shown[-3000:])
    # One worker: the planting batch ran first, and the probing one after it, in the same
    # reused worktree.
    assert shown.index("planted") < shown.index("dotgit=gone"), shown[-3000:]
    assert info["state"] in ("succeeded", "failed"), info
    assert not marker.exists()
    # The run's own branch is new; every ref the user had is where it was.
    refs_after = lab.git("for-each-ref")
    assert set(refs_before.splitlines()) <= set(refs_after.splitlines())
    await lab.assert_contained(run_id)
    await lab.stop()
