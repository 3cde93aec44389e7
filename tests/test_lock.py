"""One writer per run folder (runio.lock): a second process on a folder being written is refused (exit 2, the holder
named), a lock left by a dead process is taken over, and a run releases its lock when it ends. Seconds, except the
last test's one tiny run."""
import json, os, socket, subprocess, sys
from pathlib import Path

import pytest

from lib import runio
import steer_heal as sh

HERE = Path(__file__).resolve().parent.parent  # the repository root
# a process that takes the lock on argv[1], says so, and holds it until its stdin closes, then exits normally
HOLDER = ("import sys; from lib import runio; runio.lock(sys.argv[1]); print('locked', flush=True); sys.stdin.read()")


@pytest.fixture
def holder(tmp_path):
    """(run folder, the live process holding its lock)."""
    d = tmp_path / "r"
    d.mkdir()
    (d / "config.json").write_text("{}")
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(d)], cwd=HERE, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    yield d, p
    p.kill()
    p.wait()


def exit_code(argv):
    with pytest.raises(SystemExit) as e:
        sh.main(argv)
    return e.value.code


@pytest.mark.parametrize("how", ["resume", "overwrite"])
def test_a_second_writer_is_refused_naming_the_first(holder, capsys, how):
    d, p = holder
    before = sorted(x.name for x in d.iterdir())
    argv = ["--resume", str(d)] if how == "resume" else ["--out", str(d.parent), "--name", d.name, "--overwrite"]
    assert exit_code(argv) == 2
    out = capsys.readouterr().out
    assert f"pid {p.pid} on this host" in out and "being written by another process" in out
    assert f"`-c {d}`" in out and f"kill {p.pid}" in out  # its command (python -c ...) and the way out
    assert sorted(x.name for x in d.iterdir()) == before  # nothing written: no log.txt, no resume line
    assert json.loads((d / ".lock").read_text())["pid"] == p.pid  # still the holder's


def test_a_holder_that_ends_releases_its_lock(holder):
    d, p = holder
    p.stdin.close()  # it exits normally: atexit releases the lock
    assert p.wait(timeout=30) == 0
    assert not (d / ".lock").exists()
    runio.lock(d)
    runio.unlock(d)


def dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_stale_lock_from_a_dead_process_is_taken_over(tmp_path, capsys):
    d = tmp_path / "r"
    d.mkdir()
    (d / "config.json").write_text("{}")  # not a real run: the resume fails on it after the lock, with exit 2
    pid = dead_pid()
    (d / ".lock").write_text(json.dumps(dict(pid=pid, host=socket.gethostname(), started="then", argv=["steer_heal.py"])))
    assert exit_code(["--resume", str(d)]) == 2
    out = capsys.readouterr().out
    assert f"taken over from pid {pid}" in out and "no longer running" in out
    assert "does not parse as a steer_heal config" in out  # it got past the lock
    assert not (d / ".lock").exists()  # and released it on the way out


def test_a_lock_from_another_host_is_refused_unless_it_is_this_slurm_jobs_earlier_attempt(tmp_path, monkeypatch):
    d = tmp_path / "r"
    d.mkdir()
    (d / ".lock").write_text(json.dumps(dict(pid=dead_pid(), host="node17", started="then", argv=["x"], job="42")))
    monkeypatch.setenv("SLURM_JOB_ID", "43")
    with pytest.raises(runio.Stop, match=r"another host, node17.*ssh node17 ps -p"):
        runio.lock(d)
    monkeypatch.setenv("SLURM_JOB_ID", "42")  # the same job, requeued onto another node: the old attempt is gone
    logged = []
    runio.lock(d, logged.append)
    assert "earlier attempt of this SLURM job (42)" in logged[0]
    assert json.loads((d / ".lock").read_text())["pid"] == os.getpid()
    runio.unlock(d)
    assert not (d / ".lock").exists() and d.exists()  # the folder was there before the lock: kept


def test_a_reused_pid_is_not_the_holder(tmp_path):
    """A holder that died and whose pid now runs another program (here: this test) is gone all the same."""
    d = tmp_path / "r"
    d.mkdir()
    (d / ".lock").write_text(json.dumps(dict(pid=os.getppid(), host=socket.gethostname(), started="then", argv=["x"],
                                             proc_start=1)))  # the parent's pid, with another start time
    if runio.proc_start(os.getppid()) is None:
        pytest.skip("no /proc: a reused pid cannot be told from its holder here")
    logged = []
    runio.lock(d, logged.append)
    assert "now belongs to another process" in logged[0]
    runio.unlock(d)


def test_a_run_holds_its_lock_while_it_runs_and_releases_it(tiny_dir, tmp_path, monkeypatch):
    from test_smoke import TINY_FLAGS
    seen = []
    real = sh.load_model

    def load(*a, **k):  # the lock is held by then (taken before the model loads), by this process
        seen.append(json.loads((tmp_path / "r" / ".lock").read_text())["pid"])
        return real(*a, **k)
    monkeypatch.setattr(sh, "load_model", load)
    sh.main(["--model", tiny_dir, "--out", str(tmp_path), "--name", "r", *TINY_FLAGS, "--persona", "love",
             "--statements", "none", "--vignettes", "none", "--no-baselines"])
    assert seen == [os.getpid()]
    assert (tmp_path / "r" / "report.md").exists() and not (tmp_path / "r" / ".lock").exists()
    assert not runio.LOCKS


def test_a_run_refused_before_it_starts_leaves_no_folder(tmp_path):
    assert exit_code(["--model", str(tmp_path / "no_such_model"), "--out", str(tmp_path), "--name", "r"]) != 0
    assert not (tmp_path / "r").exists() and not runio.LOCKS
