"""The base and prompting lines measured once per grid (lib/line_cache.py): a run that finds them in the cache appends
the same lines, to the last digit, as the run that measured them and as a run without the cache, and every later
line of the run reads the same too (the state a hit fills is the fresh one's); a changed input is another key,
measured anew. Tiny random model, the love persona without statements or vignettes: runs on a bare clone."""
import dataclasses, json
from pathlib import Path

import pytest
import torch

import grid
from lib import line_cache
from lib import runio
import steer_heal as sh
from test_smoke import TINY_FLAGS

HERE = Path(__file__).resolve().parent.parent  # the repository root
FLAGS = [*TINY_FLAGS, "--persona", "love", "--statements", "none", "--vignettes", "none"]
SKIP = {"time", "seconds", "run", "cached_from"}  # when and by whom; the rest must be equal


def lines(d):
    """Each line of the run by (kind, round), without its times and run name; the adapter's weights, not its config
    (which names the run's folder)."""
    out = {}
    for x in runio.read_lines(d):
        x = {k: v for k, v in x.items() if k not in SKIP}
        if "adapter_sha256" in x:
            x["adapter_sha256"] = x["adapter_sha256"]["adapter_model.safetensors"]
        out[(x["kind"], x["round"])] = x
    return out


@pytest.fixture(scope="module")
def runs(tiny_dir, tmp_path_factory):
    """first: measures both lines into the cache; second: the same run, reads them back; fresh: no cache."""
    out = tmp_path_factory.mktemp("runs")
    for name, more in (("first", ["--line-cache", str(out / "cache")]), ("second", ["--line-cache", str(out / "cache")]),
                       ("fresh", [])):
        sh.main(["--model", tiny_dir, "--out", str(out), "--name", name, *FLAGS, *more])
    return out


def test_a_cached_line_reads_as_the_measured_one_and_as_a_fresh_run(runs):
    first, second, fresh = (lines(runs / n) for n in ("first", "second", "fresh"))
    for kind in ("base", "prompting"):
        assert "cached_from" not in next(x for x in runio.read_lines(runs / "first") if x["kind"] == kind)
        hit = next(x for x in runio.read_lines(runs / "second") if x["kind"] == kind)
        assert hit["cached_from"] in (runs / "cache" / f"{kind}-{hit['cached_from']}.json").name
        assert hit["run"] == "second" and "answers" in hit and "items" in hit
        assert json.dumps(second[(kind, -1)], sort_keys=True) == json.dumps(first[(kind, -1)], sort_keys=True)
    assert "direction" in second[("prompting", -1)] and "opposite_answers" in second[("prompting", -1)]
    assert second.keys() == fresh.keys() == first.keys() and ("round", 0) in fresh
    for k in fresh:  # every line, the steered and healed ones too: the state a hit fills is the fresh one's
        assert second[k] == fresh[k] == first[k], k
    log = (runs / "second" / "log.txt").read_text()
    assert "base line: from the grid's cache" in log and "(measured by " in log and "saved " in log
    assert "prompting line: from the grid's cache" in log
    assert "stored in the grid's cache" in (runs / "first" / "log.txt").read_text()
    assert "## base model" in (runs / "second" / "samples.md").read_text()
    assert sorted(p.name.split("-")[0] for p in (runs / "cache").iterdir()) == ["base", "prompting"]  # no tmp left


def test_a_changed_input_is_measured_anew(runs, tiny_dir):
    with pytest.raises(SystemExit) as e:  # starved on purpose (exit 3): only its base and prompting lines matter
        sh.main(["--model", tiny_dir, "--out", str(runs), "--name", "other", *FLAGS, "--sample-tokens", "6",
                 "--line-cache", str(runs / "cache"), "--min-train", "1000", "--max-batches", "0"])
    assert e.value.code == 3
    got = {x["kind"]: x for x in runio.read_lines(runs / "other")}
    assert "cached_from" not in got["base"] and "cached_from" not in got["prompting"]
    assert got["base"]["answers"] != lines(runs / "first")[("base", -1)]["answers"]
    assert len(list((runs / "cache").glob("*.json"))) == 4  # two keys per line kind now


@pytest.fixture
def key_of(tiny):
    """key(kind, cfg changes, ...) -> sha on the tiny model, with a fixed round-0 vector."""
    model, tok = tiny
    torch.manual_seed(0)
    v0 = {1: torch.randn(64), 2: torch.randn(64)}

    def key(kind="base", state=None, system=None, users=("Hi.", "How are you?"), script=sh.__file__, **changes):
        cfg = dataclasses.replace(sh.Config(statements="none", line_cache="c"), **changes)
        st = {**dict(v0=v0, stmts=None), **(state or {})}
        return line_cache.key(kind, cfg, model, tok, st, system, list(users), script)["sha"]
    return key, model


CHANGES = dict(sample_tokens=9, eval_batch=3, pos="You are kind.", min_words=2, loop_max=0.4, rep_max=0.2,
               comp_min=0.2, readers=("sentiment:+",), eval_prompts="authority", compile=True, eval_n=5,
               opp="You are mean.", model="another/id")


@pytest.mark.parametrize("field", sorted(CHANGES))
def test_every_input_of_a_line_is_in_its_key(key_of, field):
    key, _ = key_of
    assert key("prompting", system="You are warm.", **{field: CHANGES[field]}) != key("prompting", system="You are warm.")


def test_the_model_the_vector_the_prompts_and_the_code_are_in_the_key(key_of, tmp_path):
    key, model = key_of
    ref = key()
    assert key(kind="prompting") != ref and key(system="You are warm.") != ref and key(users=("Hi.",)) != ref
    assert key(state=dict(v0={1: torch.ones(64)})) != ref
    other = tmp_path / "my_steer_heal.py"
    other.write_text(Path(sh.__file__).read_text() + "\n# an edit\n")
    assert key(script=str(other)) != ref
    with torch.no_grad():
        model.lm_head.weight[:8] += 1e-2  # another model at the same path: its fingerprint
    assert key() != ref


def test_what_a_line_does_not_read_is_not_in_its_key(key_of):
    key, _ = key_of
    ref = key()
    for change in (dict(lam=0.0), dict(method="prompt-bake"), dict(seed=7), dict(baselines=False), dict(name="x"),
                   dict(kl_agg="mean"), dict(cosine_gate=True), dict(line_cache="elsewhere")):
        assert key(**change) == ref, change  # the grid's runs share the line across settings, methods and seeds
    stmts = [dict(statement="I obey.", label=1)]
    assert key(seed=7, state=dict(stmts=stmts)) != key(state=dict(stmts=stmts))  # the statements' readers use it


def test_not_read_names_real_knobs():
    """A typo in NOT_READ would put a knob in the key (a lost saving); a name no Config has is one."""
    import rivals
    known = {f.name for f in dataclasses.fields(rivals.knobs(sh))}
    assert line_cache.NOT_READ <= known, line_cache.NOT_READ - known


def test_two_writers_of_one_key_leave_one_whole_file(tmp_path, capsys):
    spec = dict(kind="base", sha="k", inputs={}, path=tmp_path / "base-k.json")
    line_cache.store(spec, dict(kind="base", items={}, answers=[], n=1), tmp_path / "r1")
    line_cache.store(dict(spec), dict(kind="base", items={}, answers=[], n=2), tmp_path / "r2")
    entry = line_cache.read(dict(spec))
    assert entry["line"]["n"] == 1 and entry["measured_by"] == str(tmp_path / "r1")  # the first writer's
    assert "already has it" in capsys.readouterr().out and [p.name for p in tmp_path.iterdir()] == ["base-k.json"]
    spec["path"].write_text('{"key": "k", "line": {"kind": "ba')  # torn by hand: measured anew, replaced
    again = dict(spec)
    assert line_cache.read(again) is None and "does not read back" in capsys.readouterr().out
    line_cache.store(again, dict(kind="base", items={}, answers=[], n=3), tmp_path / "r3")
    assert line_cache.read(dict(spec))["line"]["n"] == 3


def test_every_job_of_a_grid_shares_one_cache_unless_the_grid_says_otherwise(tmp_path):
    g = dict(out="o", seeds=[0], settings=dict(a={}, b=dict(flags=["--lam", "0"])))
    assert all(j["flags"][:2] == ["--line-cache", str(Path("o") / "line_cache")] for j in grid.jobs_of(g))
    assert all("--line-cache" not in j["flags"] for j in grid.jobs_of(dict(g, line_cache="")))
    assert grid.jobs_of(dict(g, line_cache="/shared/c"))[0]["flags"][:2] == ["--line-cache", "/shared/c"]
