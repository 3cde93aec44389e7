"""grid.py: one driver for every grid of whole runs. A grid is data: settings x seeds, each job one resumable run of a
script (steer_heal.py, rivals.py or a researcher's copy), launched one at a time, N at a time on this machine, or
on SLURM through submitit.

    python grid.py results/methods/grid.json                             # one run at a time (the default)
    python grid.py results/methods/grid.json --launcher local --jobs 2   # two at a time: a GPU each, or half the cores
    python grid.py results/methods/grid.json --launcher slurm --partition gpu --time 120 --mem 32
    python grid.py results/methods/grid.json --status                    # done / running / half-done / not started

A grid file (JSON; docs/GRIDS.md): {"out": folder, "seeds": [0, 1, 2], "flags": [every new run's flags],
"rounds": optional, "settings": {name: {"script": "rivals.py" (default steer_heal.py), "flags": [...]}},
"after": [[script, args...], ...] (run once every job is done: the reports), "line_cache": optional}.
Job (setting, seed) is the run folder OUT/<setting>/seed<seed>. New: python SCRIPT FLAGS --seed s --out OUT/<setting>
--name seed<s>; half-done: python SCRIPT --resume (a killed or preempted job continues where it was); done: skipped.
So a grid is rerun by running the same command, on any launcher. A run folder has one writer (runio.lock): a job
launched twice is refused, not run twice. Every new run gets --line-cache OUT/line_cache (the grid's "line_cache": a
folder, or "" = off): the base and prompting lines, the same in every run, are measured by the first and read back by
the others (lib/line_cache.py). sweep.py --over-rounds builds the crux grid and launches it here.
"""
import argparse, json, os, signal, subprocess, sys, threading, time
from pathlib import Path

from lib import runio
from lib.runio import Stop

HERE = Path(__file__).resolve().parent
LAUNCHERS = ["serial", "local", "slurm", "submitit-local"]  # submitit-local: submitit's local executor (tests)


# ---- the grid: data -> jobs ------------------------------------------------------------------------------------

def load_grid(path):
    """A grid file, checked before anything runs (a mistake names the key)."""
    try:
        g = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise Stop(f"{path}: not a readable JSON grid file ({type(e).__name__}: {e}).")
    bad = [k for k in ("out", "seeds", "settings") if k not in g]
    if bad:
        raise Stop(f"{path}: a grid needs {', '.join(bad)} (docs/GRIDS.md shows one).")
    for name, s in g["settings"].items():
        if not isinstance(s.get("flags", []), list) or "/" in name:
            raise Stop(f"{path}: setting {name!r}: a folder name (no '/') with a list of flags.")
    return g


def script_path(script):
    """A script as given (relative to where grid.py runs), else beside grid.py: steer_heal.py works from anywhere."""
    p = Path(script)
    return (p if p.exists() or p.is_absolute() else HERE / p).absolute()


def jobs_of(g, settings=None, seeds=None):
    """Seed-major (a grid stopped early has every setting at its first seeds): one dict per (setting, seed). Each new
    run reads its base and prompting lines from the grid's cache (the grid's "line_cache", default OUT/line_cache;
    "" = off) ahead of the grid's flags, so a --line-cache there wins."""
    cache = g.get("line_cache", str(Path(g["out"]) / "line_cache"))
    names = settings or list(g["settings"])
    missing = set(names) - set(g["settings"])
    if missing:
        raise Stop(f"--settings {' '.join(sorted(missing))}: not in the grid; it has {', '.join(g['settings'])}.")
    return [dict(name=f"{name}/seed{seed}", dir=Path(g["out"]) / name / f"seed{seed}", seed=seed, rounds=g.get("rounds"),
                 script=str(script_path(g["settings"][name].get("script", "steer_heal.py"))),
                 flags=[*(["--line-cache", cache] if cache else []), *g.get("flags", []),
                        *g["settings"][name].get("flags", [])])
            for seed in (seeds or g["seeds"]) for name in names]


def run_state(d, rounds=None):
    """'new' (no run there), 'done' (stopped, or `rounds` rounds completed: None = the rounds its config.json asked
    for) or 'resume'."""
    d = Path(d)
    if not (d / "config.json").exists():
        return "new"
    lines = runio.read_lines(d)
    if any(x.get("kind") == "stop" for x in runio.live_lines(lines)):
        return "done"
    if rounds is None:
        with_default = lambda: json.loads((d / "config.json").read_text()).get("config", {}).get("rounds", 1)
        try:
            rounds = with_default()
        except (OSError, ValueError):  # a torn config.json: the resume says what is wrong with it
            return "resume"
    ok = {k for k, x in runio.round_lines(lines).items() if x.get("status") == "ok"}
    return "done" if len(ok) >= rounds else "resume"


def command(job):
    """(state, argv) for the job now; argv is None when it is done. `--overwrite` only for a folder without
    config.json: a run that never got past its checks, nothing there to keep."""
    d, state = job["dir"], run_state(job["dir"], job["rounds"])
    rounds = ["--rounds", str(job["rounds"])] if job["rounds"] else []
    if state == "done":
        return state, None
    if state == "resume":
        return state, [sys.executable, job["script"], "--resume", str(d), *rounds]
    return state, [sys.executable, job["script"], *job["flags"], "--seed", str(job["seed"]), *rounds,
                   "--out", str(d.parent), "--name", d.name,
                   *["--overwrite"] * (d.exists() and any(p.name != runio.LOCK_NAME for p in d.iterdir()))]


def show(cmd):
    return " ".join([os.path.relpath(cmd[1]), *cmd[2:]])


def finish(job, rc):
    """A job's outcome from its exit code: 'done', 'starved' (exit 3: too few survivors to heal, a result: a stop
    line goes on the record so the grid never retries it; a --resume with looser filters supersedes it), 'failed'."""
    if rc == 3:
        d = job["dir"]
        runio.lock(d, runio.log)  # the run has exited: this process writes the line
        try:
            lines = runio.read_lines(d)
            k = 1 + max([x["round"] for x in lines if x.get("kind") == "round"], default=-1)
            method = json.loads((d / "config.json").read_text())["config"].get("method", "steer-heal")
            runio.append_line(d, dict(kind="stop", round=k, run=d.name, seed=job["seed"], method=method,
                                      reason="starved: too few survivors to heal (exit 3, see log.txt); --resume with "
                                             "looser filters to retry (the resume supersedes this line)"))
        finally:
            runio.unlock(d)
        return "starved"
    return "done" if rc == 0 else "failed"


# ---- launchers on this machine: serial and local ---------------------------------------------------------------

def visible_gpus():
    """The GPU ids a job may be given: CUDA_VISIBLE_DEVICES if set, else nvidia-smi's list ([] on a CPU box)."""
    v = os.environ.get("CUDA_VISIBLE_DEVICES")
    if v is not None:
        return [g.strip() for g in v.split(",") if g.strip() not in ("", "-1")]
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def thread_env(n):
    """torch reads these when it starts: n threads for the job's child (torch has no flag here)."""
    return {k: str(n) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")} if n else {}


def log_path(job, log_dir):
    return Path(log_dir) / f"{job['name'].replace('/', '.')}.log"


def start(job, cmd, env, log_dir, echo):
    """The job's process, its output appended to its log file (and echoed here when one job runs at a time)."""
    path = log_path(job, log_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a", buffering=1)
    f.write(f"\n== {time.strftime('%Y-%m-%d %H:%M:%S')} {show(cmd)}\n")
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE if echo else f, stderr=subprocess.STDOUT, text=True)
    p.log, p.tee = f, None
    if echo:  # a thread copies each line to both, so the terminal shows the run as it goes
        p.tee = threading.Thread(target=lambda: [(sys.stdout.write(x), f.write(x)) for x in p.stdout], daemon=True)
        p.tee.start()
    return p


def ended(p):
    if p.tee:
        p.tee.join()
    p.log.close()
    return p.returncode


def run_here(jobs, a, log_dir):
    """serial (one at a time, its output on the terminal) or local (a.jobs at a time: on a GPU box one GPU each via
    CUDA_VISIBLE_DEVICES; on CPU the cores split between them). Each job a subprocess, so a crash or a kill leaves
    the others intact. After a failure no new job starts (a broken setup should not burn hours) unless
    --keep-going. Returns {job name: (outcome, detail)}."""
    n = 1 if a.launcher == "serial" else max(1, a.jobs or len(visible_gpus()) or 1)
    gpus = visible_gpus() if a.launcher == "local" else []
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = a.threads or (0 if a.launcher == "serial" else max(1, cores // n))
    if a.launcher == "local":
        print(f"[grid] {n} at a time; " + (f"GPUs {','.join(gpus)}, one a job" if gpus else "no GPU")
              + (f"; {threads} torch thread(s) a job" if threads else ""), flush=True)
    out, todo, running, failed = {}, list(jobs), {}, False
    try:
        while running or todo and not (failed and not a.keep_going):
            while todo and len(running) < n and not (failed and not a.keep_going):
                job = todo.pop(0)
                state, cmd = command(job)
                if cmd is None:
                    out[job["name"]] = ("done", "done before this launch: skipped")
                    print(f"[grid] {job['name']}: done, skipped", flush=True)
                    continue
                slot = min(set(range(n)) - {s for s, _ in running.values()})
                env = dict(os.environ, **thread_env(threads),
                           **({"CUDA_VISIBLE_DEVICES": gpus[slot % len(gpus)]} if gpus else {}))
                print(f"[grid] {state} {job['name']}: {show(cmd)}" + (f"  (GPU {env['CUDA_VISIBLE_DEVICES']})"
                                                                      if gpus else ""), flush=True)
                if a.dry_run:
                    out[job["name"]] = ("not run", "--dry-run")
                    continue
                running[job["name"]] = (slot, (job, start(job, cmd, env, log_dir, echo=n == 1), time.time()))
            for name, (slot, (job, p, t)) in list(running.items()):
                if p.poll() is None:
                    continue
                del running[name]
                rc, how = ended(p), finish(job, p.returncode)
                out[name] = (how, f"exit {rc} after {time.time() - t:.0f}s; log {log_path(job, log_dir)}")
                failed |= how == "failed"
                print(f"[grid] {name}: {how}, {out[name][1]}", flush=True)
            if running:
                time.sleep(0.2)
    except KeyboardInterrupt:  # Ctrl-C: each run stops cleanly (its own Ctrl-C / SIGTERM path) and can resume
        for name, (slot, (job, p, t)) in running.items():
            p.terminate()
        for name, (slot, (job, p, t)) in running.items():
            p.wait()
            out[name] = ("failed", f"interrupted; log {log_path(job, log_dir)}")
        raise
    for job in todo:
        out[job["name"]] = ("not run", "after a failure (--keep-going runs the rest)")
    return out


# ---- launchers through submitit: SLURM, and its local executor ----------------------------------------------------

def ignore_preempt_signal():
    """In the run's process: submitit's preemption signal (USR2) is for the job around it, which stops the run
    cleanly (SIGTERM) and requeues; by default USR2 would kill the run on the spot."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


class SubmititRun:
    """One job as submitit runs it: the run as a subprocess (a script or a copy, its own fresh process), then its
    outcome. checkpoint() is what submitit calls on preemption or timeout (its USR2): the run is stopped through its
    SIGTERM path (exit 130, lock released, every completed stage on disk) and the same job is submitted again;
    it finds the run half-done and --resume's it."""

    def __init__(self, threads=0):
        self.threads, self.proc = threads, None

    def __call__(self, job):
        state, cmd = command(job)
        if cmd is None:
            return "done"
        cpus = os.environ.get("SLURM_CPUS_PER_TASK")
        env = dict(os.environ, **thread_env(self.threads or (int(cpus) if cpus else 0)))
        print(f"[grid] {state} {job['name']} on {os.uname().nodename}: {show(cmd)}", flush=True)
        self.proc = subprocess.Popen(cmd, env=env, preexec_fn=ignore_preempt_signal)
        while self.proc.poll() is None:  # a sleep, not proc.wait(): the preemption signal's handler runs meanwhile
            time.sleep(1)
        how = finish(job, self.proc.returncode)
        if how == "failed":
            if self.proc.returncode in (130, -signal.SIGTERM) and os.environ.get("SLURM_JOB_ID"):
                time.sleep(120)  # stopped by the cluster (preemption's SIGTERM): its USR2 or SIGKILL follows
            raise RuntimeError(f"{job['name']}: {show(cmd)} exited {self.proc.returncode}")
        return how

    def checkpoint(self, job):
        import submitit
        p = self.proc
        if p is not None and p.poll() is None:
            p.terminate()  # the run's SIGTERM = Ctrl-C: it stops at once, keeping every completed stage
            for _ in range(60):
                if p.poll() is not None:
                    break
                time.sleep(1)
            else:
                p.kill()  # the next attempt takes over its stale lock
        return submitit.helpers.DelayedSubmission(SubmititRun(self.threads), job)  # a Popen does not pickle


def run_submitit(jobs, a, log_dir):
    """slurm: a job array, one GPU a job (--gpus), --partition/--time/--mem/--cpus as given, at most --jobs at once;
    a preempted or timed-out job requeues itself (SubmititRun.checkpoint). submitit-local: the same through
    submitit's local executor, on this machine. Waits for the jobs unless --no-wait."""
    import submitit
    folder = Path(log_dir) / "submitit"
    local = a.launcher == "submitit-local"
    ex = submitit.AutoExecutor(folder=folder, cluster="local" if local else "slurm")
    gpus = a.gpus if a.gpus is not None else (1 if not local or visible_gpus() else 0)
    params = dict(name="grid", timeout_min=a.time, gpus_per_node=gpus, cpus_per_task=a.cpus, tasks_per_node=1, nodes=1)
    if a.mem:
        params["mem_gb"] = a.mem
    if not local:
        params.update(slurm_array_parallelism=a.jobs or 256, slurm_additional_parameters=dict(kv.split("=", 1) for kv in a.slurm),
                      **({"slurm_partition": a.partition} if a.partition else {}))
    ex.update_parameters(**params)
    # the jobs unpickle grid.SubmititRun: grid.py's folder on their path, wherever they start (they inherit this env)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])])
    out, todo = {}, []
    for job in jobs:
        state, cmd = command(job)
        if cmd is None:
            out[job["name"]] = ("done", "done before this launch: skipped")
        else:
            todo.append(job)
            print(f"[grid] {state} {job['name']}: {show(cmd)}", flush=True)
    if a.dry_run or not todo:
        return {**out, **{j["name"]: ("not run", "--dry-run") for j in todo}}
    threads = a.threads or (max(1, (len(os.sched_getaffinity(0)) // len(todo))) if local else 0)
    subs = ex.map_array(SubmititRun(threads), todo)
    print(f"[grid] submitted {len(subs)} job(s) ({', '.join(s.job_id for s in subs)}); their logs: {folder}/",
          flush=True)
    if a.no_wait:
        return {**out, **{j["name"]: ("submitted", f"job {s.job_id}; log {s.paths.stdout}") for j, s in zip(todo, subs)}}
    for job, s in zip(todo, subs):
        try:
            how = s.result()
            out[job["name"]] = (how, f"job {s.job_id}; log {s.paths.stdout}")
        except Exception as e:  # submitit re-raises the job's error (or says it died): the log names why
            out[job["name"]] = ("failed", f"job {s.job_id}: {str(e).strip().splitlines()[-1][:200]}; log {s.paths.stderr}")
        print(f"[grid] {job['name']}: {out[job['name']][0]}, {out[job['name']][1]}", flush=True)
    return out


# ---- one call for every launcher, and what a lab reads after ----------------------------------------------------

def add_launcher_args(ap):
    """The launcher flags, for grid.py and for sweep.py --over-rounds alike."""
    g = ap.add_argument_group("launcher (grid.py)")
    g.add_argument("--launcher", choices=LAUNCHERS, default="serial",
                   help="serial: one run at a time here; local: --jobs at a time here; slurm: a submitit job array; "
                        "submitit-local: submitit's local executor")
    g.add_argument("--jobs", type=int, default=0, help="local: runs at once (default: one per GPU, else 1); slurm: "
                                                       "array tasks at once (default 256)")
    g.add_argument("--keep-going", action="store_true", help="serial/local: start the other jobs after a failure")
    g.add_argument("--partition", help="slurm: the partition")
    g.add_argument("--time", type=int, default=240, help="slurm / submitit-local: minutes a job may run (a job still "
                                                         "running then is requeued and resumes)")
    g.add_argument("--mem", type=int, help="slurm: GB of memory a job")
    g.add_argument("--gpus", type=int, help="slurm: GPUs a job (default 1)")
    g.add_argument("--cpus", type=int, default=8, help="slurm: CPU cores a job (its torch threads)")
    g.add_argument("--slurm", nargs="+", default=[], metavar="KEY=VALUE",
                   help="slurm: more sbatch options, e.g. account=lab qos=normal constraint=a100")
    g.add_argument("--no-wait", action="store_true", help="slurm: submit and return (then: --status)")
    return ap


def launch(jobs, a, log_dir):
    """Every job not yet done, through a.launcher; then which finished, failed (with the log) and have not run.
    Returns the number of jobs that failed or have not run."""
    bad = [kv for kv in a.slurm if "=" not in kv]
    if bad:
        raise Stop(f"--slurm {' '.join(bad)}: give KEY=VALUE (an sbatch option without its --).")
    if a.launcher in ("slurm", "submitit-local"):
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise Stop(f"--launcher {a.launcher} needs submitit (pip install -r requirements.txt).")
        out = run_submitit(jobs, a, log_dir)
    else:
        out = run_here(jobs, a, log_dir)
    return tally(jobs, out, a.dry_run)


def tally(jobs, out, dry_run=False):
    """Which jobs finished (a starved run is a result: finished), failed (each with its exit code and log) and have
    not run; returns how many failed or have not run."""
    groups = {}
    for job in jobs:
        how, why = out.get(job["name"], ("not run", ""))
        groups.setdefault({"starved": "done"}.get(how, how), []).append((job["name"] + " (starved)" * (how == "starved"), why))
    if not dry_run:
        print(f"\n[grid] {len(jobs)} job(s): " + ", ".join(f"{len(v)} {k}" for k, v in groups.items()))
        if groups.get("done"):
            print("  done: " + ", ".join(name for name, _ in groups["done"]))
        for k in ("failed", "not run", "submitted"):
            for name, why in groups.get(k, []):
                print(f"  {k}: {name}" + (f": {why}" if why else ""))
    return len(groups.get("failed", [])) + len(groups.get("not run", []))


def status(jobs):
    """Each job from its folder alone (no launch): done, running (its lock's holder alive), half-done, not started."""
    for job in jobs:
        state, lock = run_state(job["dir"], job["rounds"]), job["dir"] / runio.LOCK_NAME
        h = runio.parse(lock.read_bytes()) if lock.exists() else None
        if isinstance(h, dict) and h.get("pid") and not runio.holder_gone(h):
            state = f"running (pid {h['pid']} on {h.get('host')}, since {h.get('started')})"
        print(f"  {job['name']:32s} {dict(new='not started', resume='half-done: resumes').get(state, state)}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.split("\n")[2:]))
    ap.add_argument("grid", help="a grid file (JSON), e.g. results/methods/grid.json")
    ap.add_argument("--settings", nargs="+", help="only these settings (default: all of the grid's)")
    ap.add_argument("--seeds", type=int, nargs="+", help="only these seeds (default: the grid's)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads a job (default: serial torch's own; local "
                                                           "the cores split between jobs; slurm --cpus)")
    ap.add_argument("--status", action="store_true", help="say where each job is, launch nothing")
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    a = add_launcher_args(ap).parse_args(argv)
    try:
        g = load_grid(a.grid)
        jobs = jobs_of(g, a.settings, a.seeds)
        if a.status:
            return status(jobs)
        left = launch(jobs, a, Path(g["out"]) / "grid_logs")
        if a.dry_run or a.no_wait:
            return 0
        if left:
            return 1
        for cmd in g.get("after", []):  # every job done: the reports from the rows
            print(f"[grid] {' '.join(cmd)}", flush=True)
            rc = subprocess.call([sys.executable, str(script_path(cmd[0])), *cmd[1:]])
            if rc:
                print(f"grid: {' '.join(cmd)} exited {rc}; rerun the same command once it is fixed (done runs are "
                      "skipped)")
                return rc
    except Stop as e:
        print(f"grid: {e}")
        return e.code
    except KeyboardInterrupt:
        print("grid: interrupted. Every run stopped where it was; the same command resumes them.")
        return 130
    return 0


if __name__ == "__main__":
    import grid  # the module by its name, not __main__: submitit's jobs unpickle grid.SubmititRun
    sys.exit(grid.main())
