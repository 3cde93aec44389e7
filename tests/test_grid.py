"""grid.py on a tiny random model: a two-job grid through `--launcher local --jobs 2` and through submitit's local
executor gives the serial grid's readings, and a job preempted mid-run is requeued and continues via --resume. The
love persona without statements or vignettes, so it runs on a bare clone. The grid's own rules (state, commands,
a grid file) first, in seconds."""
import json, os, shutil, signal, sys, time
from pathlib import Path

import pytest

import grid
from lib import runio

HERE = Path(__file__).resolve().parent.parent  # the repository root
from test_smoke import TINY_FLAGS  # noqa: E402

SKIP = {"time", "seconds", "ref_pass_s", "read_seconds"}  # wall-clock fields: the rest must be equal


def write_grid(path, tiny_dir, rounds=1, settings=("a", "b"), seeds=(0,)):
    """Settings a (the default barrier) and b (λ=0) x seeds: 2 jobs."""
    flags = ["--model", tiny_dir, *TINY_FLAGS, "--persona", "love", "--statements", "none", "--vignettes", "none",
             "--no-baselines"]
    g = dict(out=str(path.parent / "runs"), seeds=list(seeds), rounds=rounds, flags=flags,
             settings={k: dict(flags=dict(a=[], b=["--lam", "0"])[k]) for k in settings})
    path.write_text(json.dumps(g))
    return path


def readings(d):
    """Every numeric field of the run's lines (a heal's stats one level down), by (kind, round): not its times."""
    out = {}
    for x in runio.read_lines(d):
        flat = {k: v for k, v in x.items() if k not in SKIP}
        for k, v in x.items():
            if isinstance(v, dict) and k not in SKIP:
                flat.update({f"{k}.{j}": w for j, w in v.items() if j not in SKIP})
        out[(x["kind"], x["round"])] = {k: v for k, v in flat.items()
                                        if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return out


@pytest.fixture(scope="module")
def serial(tiny_dir, tmp_path_factory):
    """The reference: the two-job grid run serially, one thread a job."""
    f = write_grid(tmp_path_factory.mktemp("serial") / "grid.json", tiny_dir)
    assert grid.main([str(f), "--threads", "1"]) == 0
    return f.parent / "runs"


def test_a_run_is_new_half_done_or_done_and_its_command_says_so(tmp_path):
    d = tmp_path / "s" / "seed0"
    job = dict(name="s/seed0", dir=d, seed=0, rounds=2, script="x.py", flags=["--lam", "0"])
    state, cmd = grid.command(job)
    assert state == "new" and cmd[1:] == ["x.py", "--lam", "0", "--seed", "0", "--rounds", "2", "--out",
                                          str(d.parent), "--name", "seed0"]
    d.mkdir(parents=True)
    (d / "stale.txt").write_text("")  # a run that never wrote its config.json: nothing to keep
    assert grid.command(job)[1][-1] == "--overwrite"
    (d / "config.json").write_text(json.dumps(dict(config=dict(rounds=1))))
    (d / "rounds.jsonl").write_text(json.dumps(dict(kind="round", round=0, status="ok")) + "\n")
    assert grid.command(job)[1][1:] == ["x.py", "--resume", str(d), "--rounds", "2"]
    assert grid.command(dict(job, rounds=None)) == ("done", None)  # without the grid's rounds: the run's own (1)
    assert grid.run_state(d, 1) == "done"


def test_a_grid_file_is_checked_before_anything_runs(tmp_path, capsys):
    f = tmp_path / "g.json"
    f.write_text(json.dumps(dict(out="o", seeds=[0])))
    assert grid.main([str(f)]) == 2 and "a grid needs settings" in capsys.readouterr().out
    f.write_text(json.dumps(dict(out="o", seeds=[0], settings=dict(a={}))))
    assert grid.main([str(f), "--settings", "nope"]) == 2 and "--settings nope: not in the grid" in capsys.readouterr().out
    assert not (tmp_path / "o").exists()


def test_the_methods_grid_keeps_run_sh_s_runs():
    """results/methods/grid.json: the four methods x seeds 0 1 2, each through its script, with the flags run.sh gave."""
    jobs = grid.jobs_of(grid.load_grid(HERE / "results" / "methods" / "grid.json"))
    assert len(jobs) == 12 and jobs[1]["name"] == "prompt-bake/seed0"
    new = {j["name"]: grid.command(dict(j, dir=Path("/nonexistent") / j["name"]))[1] for j in jobs}
    assert Path(new["online-12steps/seed2"][1]).name == "rivals.py"
    assert new["online-12steps/seed2"][2:] == ["--line-cache", "results/methods/line_cache", "--persona", "love",
                                               "--statements", "none", "--method", "online", "--online-steps", "12",
                                               "--no-baselines", "--seed", "2", "--out", "/nonexistent/online-12steps",
                                               "--name", "seed2"]  # every job: the grid's one cache of lines
    assert Path(new["steer-heal/seed0"][1]).name == "steer_heal.py" and "--no-baselines" not in new["steer-heal/seed0"]


def test_serial_runs_each_job_once_then_skips_them(serial, tiny_dir, capsys):
    for name in ("a", "b"):
        kinds = [x["kind"] for x in runio.read_lines(serial / name / "seed0")]
        assert kinds.count("round") == 1 and "resume" not in kinds
        assert (serial / name / "seed0" / "report.md").exists() and not (serial / name / "seed0" / ".lock").exists()
    assert json.loads((serial / "b" / "seed0" / "config.json").read_text())["config"]["lam"] == 0
    assert "round 0" in (serial / "grid_logs" / "a.seed0.log").read_text()  # its output, kept
    capsys.readouterr()
    assert grid.main([str(serial.parent / "grid.json")]) == 0
    assert capsys.readouterr().out.count("done, skipped") == 2


@pytest.mark.parametrize("launcher", ["local", "submitit-local"])
def test_a_parallel_grid_reads_the_same_as_the_serial_one(serial, tiny_dir, tmp_path, capsys, monkeypatch, launcher):
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))  # submitit-local adds grid.py's folder
    f = write_grid(tmp_path / "grid.json", tiny_dir)
    assert grid.main([str(f), "--launcher", launcher, "--jobs", "2", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "2 done" in out
    if launcher == "submitit-local":
        assert "submitted 2 job(s)" in out and (tmp_path / "runs" / "grid_logs" / "submitit").is_dir()
    for name in ("a", "b"):
        got, want = readings(tmp_path / "runs" / name / "seed0"), readings(serial / name / "seed0")
        assert got.keys() == want.keys() and ("round", 0) in got
        for k in want:
            assert got[k] == want[k], (name, k)


def parent_of(pid):
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the job's process through /proc")
def test_a_preempted_job_is_requeued_and_resumes(serial, tiny_dir, tmp_path, monkeypatch):
    """submitit's local executor; the preemption signal (USR2) sent to the job once round 0 is on disk: the job
    stops its run (SIGTERM: exit 130, lock released), requeues itself, and the next attempt --resume's the run.
    Round 0 reads as the uninterrupted serial run's."""
    import submitit
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
    f = write_grid(tmp_path / "grid.json", tiny_dir, rounds=2, settings=("a",))
    job = grid.jobs_of(grid.load_grid(f))[0]
    ex = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="local")
    ex.update_parameters(timeout_min=10, gpus_per_node=0)
    sub = ex.submit(grid.SubmititRun(threads=1), job)
    d, deadline = job["dir"], time.time() + 120
    while time.time() < deadline and not any(x.get("kind") == "round" for x in runio.read_lines(d)):
        assert sub.state == "RUNNING", sub.stderr()
        time.sleep(0.2)
    run_pid = json.loads((d / ".lock").read_text())["pid"]  # the run, whose parent is the submitit job
    os.kill(parent_of(run_pid), signal.SIGUSR2)
    assert sub.result() == "done"
    kinds = [(x["kind"], x["round"]) for x in runio.read_lines(d)]
    assert ("resume", -1) in kinds and kinds.count(("round", 0)) == 1
    assert [k for k in kinds if k[0] == "round"] == [("round", 0), ("round", 1)]
    log = sub.stdout() + (sub.stderr() or "")
    assert "preempted" in log and "resume" in log and not (d / ".lock").exists()
    assert readings(d)[("round", 0)] == readings(serial / "a" / "seed0")[("round", 0)]


def test_a_run_asked_for_more_rounds_resumes(serial, tiny_dir, tmp_path):
    """A run that did 1 round, in a grid that asks 2: the job continues it with --resume, not a new run."""
    f = write_grid(tmp_path / "grid.json", tiny_dir, rounds=2, settings=("b",))
    shutil.copytree(serial / "b" / "seed0", tmp_path / "runs" / "b" / "seed0")
    assert grid.main([str(f), "--threads", "1"]) == 0
    lines = runio.read_lines(tmp_path / "runs" / "b" / "seed0")
    assert [x["kind"] for x in lines].count("resume") == 1 and [x["round"] for x in lines if x["kind"] == "round"] == [0, 1]
    assert readings(tmp_path / "runs" / "b" / "seed0")[("round", 0)] == readings(serial / "b" / "seed0")[("round", 0)]
