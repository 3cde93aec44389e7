"""Faults a run must survive (issue 24): a torn last line, a corrupt or missing adapter, a full disk, a round that
wrecks the model, and malformed rounds.jsonl lines fed to the report and plot readers (hypothesis).
Tiny random Llama runs (seconds each) and synthetic run folders. Run: python -m pytest -q test_faults.py"""
import contextlib, errno, io, json, math, os, shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from lib import evidence
import export
import plot
import report
from lib import runio
from lib import models
import steer_heal as sh
from conftest import skip_without_eval_data
from test_report_plot import make_new_run
from test_smoke import TINY_FLAGS, _run

TORN = '{"kind": "round", "round": 1, "trait'  # a crash mid-append: no closing brace, no newline


exits = _run  # sh.main(argv)'s exit code (test_smoke's helper)


@pytest.fixture(scope="module")
def run1(tiny_dir, tmp_path_factory):
    """A finished 1-round run on the tiny Llama; tests work on copies (fresh())."""
    skip_without_eval_data()
    out = tmp_path_factory.mktemp("runs")
    sh.main(["--model", tiny_dir, "--out", str(out), "--name", "r1", *TINY_FLAGS, "--no-baselines"])
    return out / "r1"


def fresh(run1, tmp_path):
    d = tmp_path / "r1"
    shutil.copytree(run1, d)
    return d


def unreadable(path):
    return runio.read_jsonl(path)[1]


# --- a torn tail ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("tail", [TORN, TORN + '{"kind": "steered"}\n'])  # cut short; glued onto the next line
def test_append_moves_a_torn_last_line_aside(tail, tmp_path, capsys):
    good = json.dumps({"kind": "base", "round": -1}) + "\n"
    (tmp_path / "rounds.jsonl").write_text(good + tail)
    sh.append_line(tmp_path, {"kind": "steered", "round": 1})
    lines = sh.read_lines(tmp_path, bad := [])
    assert [x["kind"] for x in lines] == ["base", "steered"] and bad == []  # the new line is not glued on
    assert (tmp_path / "rounds.torn.jsonl").read_text() == tail.rstrip("\n") + "\n"  # kept, not deleted
    out = capsys.readouterr().out
    assert out.count("rounds.torn.jsonl") == 1  # one log line
    sh.append_line(tmp_path, {"kind": "round", "round": 1})  # a sound tail is left alone
    assert (tmp_path / "rounds.torn.jsonl").read_text().count("\n") == 1


def test_completions_appends_move_a_torn_tail_too(tmp_path):
    path = tmp_path / "completions_r0.jsonl"
    path.write_text(json.dumps({"round": 0, "text": "a"}) + "\n" + '{"round": 0, "te')
    runio.append_jsonl(path, [{"round": 0, "text": "b"}])
    assert [x["text"] for x in runio.read_jsonl(path)[0]] == ["a", "b"] and unreadable(path) == []
    assert (tmp_path / "completions_r0.torn.jsonl").read_text() == '{"round": 0, "te\n'


def test_report_and_plot_name_unreadable_lines(tmp_path):
    d = make_new_run(str(tmp_path / "run"))
    rounds = Path(d) / "rounds.jsonl"
    lines = rounds.read_text().splitlines()
    lines[2] = lines[2][:40] + lines[3]  # a torn line with the next one glued on: both unreadable as one
    rounds.write_text("\n".join(lines[:3] + lines[4:]) + "\n")
    with open(Path(d) / "completions_r0.jsonl", "a") as f:
        f.write('{"round": 0, "prompt": "p9", "te')
    (Path(d) / "rounds.torn.jsonl").write_text(TORN + "\n")
    text = report.write_report(d)
    head = text.split("## ")[0]
    assert "rounds.jsonl line 3: not JSON" in head and "completions_r0.jsonl line 6: not JSON" in head
    assert "rounds.torn.jsonl: 1 torn line" in head
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert plot.main([d]) == 0
    assert "rounds.jsonl line 3: not JSON" in err.getvalue()


def test_resume_after_a_torn_tail_loses_no_line(run1, tmp_path, capsys):
    d = fresh(run1, tmp_path)
    with open(d / "rounds.jsonl", "a") as f:
        f.write(TORN)
    sh.main(["--resume", str(d), "--rounds", "2"])
    assert unreadable(d / "rounds.jsonl") == []  # before: round 1's steered line was glued onto the fragment
    assert [(x["kind"], x["round"]) for x in sh.read_lines(d)] == [
        ("base", -1), ("steered", 0), ("round", 0), ("resume", -1), ("steered", 1), ("round", 1)]
    assert (d / "rounds.torn.jsonl").read_text() == TORN + "\n"
    assert "moved to rounds.torn.jsonl" in (d / "log.txt").read_text()
    assert "rounds.torn.jsonl: 1 torn line" in (d / "report.md").read_text()


# --- a corrupt or missing adapter ---------------------------------------------------------------------------------

def cut_short(f):
    f.write_bytes(f.read_bytes()[:1000])


def flip_a_weight(f):  # same length, header intact: it still loads, as other weights
    b = bytearray(f.read_bytes())
    b[-3] ^= 0x40
    f.write_bytes(bytes(b))


@pytest.mark.parametrize("damage, words", [(cut_short, "does not match the sha256"),
                                           (flip_a_weight, "does not match the sha256"),
                                           (Path.unlink, "is missing")])
def test_a_bad_adapter_on_resume_exits_2_naming_the_file_and_the_way_out(damage, words, run1, tmp_path, capsys):
    d = fresh(run1, tmp_path)
    f = d / "round_0" / "adapter" / "adapter_model.safetensors"
    damage(f)
    before = (d / "rounds.jsonl").read_text()
    assert exits(["--resume", str(d), "--rounds", "2"]) == 2
    out = capsys.readouterr().out
    assert str(f) in out and words in out and f"--resume {d} --redo-from 0" in out, out[-800:]
    assert "Traceback" not in out and (d / "rounds.jsonl").read_text() == before  # nothing written
    with pytest.raises(sh.Stop, match="sha256|missing"):
        sh.load_run(d)
    with pytest.raises(SystemExit) as e:
        export.main([str(d), str(tmp_path / "exported")])
    assert e.value.code == 2 and not (tmp_path / "exported").exists()


def test_redo_from_reruns_the_rounds_that_fail_to_verify(run1, tmp_path, capsys):
    d = fresh(run1, tmp_path)
    cut_short(d / "round_0" / "adapter" / "adapter_model.safetensors")
    assert exits(["--resume", str(d), "--redo-from", "1"]) == 2  # round 1 was never completed
    assert "--redo-from 1: not a completed round" in capsys.readouterr().out
    sh.main(["--resume", str(d), "--redo-from", "0"])
    lines = sh.read_lines(d)
    assert [x["kind"] for x in lines][-3:] == ["resume", "steered", "round"] and lines[-3]["redo_from"] == 0
    assert sh.completed_rounds(d) == [0]
    model, tok, _ = sh.load_run(d)  # the new adapter verifies and is the model the new round line describes
    assert sh.fingerprint(model, tok) == pytest.approx(lines[-1]["fingerprint"], abs=2e-4)
    assert [r["round"] for r in evidence.read_run(str(d))["rounds"]] == [0]  # the discarded line is not reported


# --- a full disk ------------------------------------------------------------------------------------------------------

def no_space(*a, **kw):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_at_the_adapter_save_exits_4_and_resume_continues(tiny_dir, tmp_path, capsys, monkeypatch):
    skip_without_eval_data()
    import peft

    def half_then_full(self, path, *a, **kw):  # a half-written adapter, then the disk is full
        os.makedirs(path, exist_ok=True)
        Path(path, "adapter_model.safetensors").write_bytes(b"\0" * 100)
        no_space()
    monkeypatch.setattr(peft.PeftModel, "save_pretrained", half_then_full)
    d = tmp_path / "full"
    assert exits(["--model", tiny_dir, "--out", str(tmp_path), "--name", "full", *TINY_FLAGS, "--no-baselines"]) == 4
    out = capsys.readouterr().out
    assert f"could not write {d / 'round_0' / 'adapter'}" in out and "MiB free" in out, out[-800:]
    assert f"--resume {d}" in out and "Traceback" not in out
    assert not (d / "round_0" / "adapter").exists() and not (d / "round_0" / "adapter.tmp").exists()
    assert unreadable(d / "rounds.jsonl") == [] and sh.completed_rounds(d) == []
    monkeypatch.undo()  # space freed
    sh.main(["--resume", str(d)])
    assert sh.completed_rounds(d) == [0] and (d / "report.md").exists()
    line = sh.read_lines(d)[-1]
    assert line["adapter_sha256"]["adapter_model.safetensors"] == runio.sha256(
        d / "round_0" / "adapter" / "adapter_model.safetensors")


def test_full_disk_mid_append_leaves_no_half_line_and_resume_continues(tiny_dir, tmp_path, capsys, monkeypatch):
    skip_without_eval_data()
    real = runio.write_all

    def full_at_the_round_line(f, data):
        if b'"kind": "round"' in bytes(data):
            real(f, bytes(data)[:len(data) // 2])  # half of it reaches the disk
            no_space()
        real(f, data)
    monkeypatch.setattr(runio, "write_all", full_at_the_round_line)
    d = tmp_path / "mid"
    assert exits(["--model", tiny_dir, "--out", str(tmp_path), "--name", "mid", *TINY_FLAGS, "--no-baselines"]) == 4
    out = capsys.readouterr().out
    assert f"could not write {d / 'rounds.jsonl'}" in out and "MiB free" in out
    assert (d / "rounds.jsonl").read_text().endswith("\n") and unreadable(d / "rounds.jsonl") == []
    assert [x["kind"] for x in sh.read_lines(d)] == ["base", "steered"]
    monkeypatch.undo()
    sh.main(["--resume", str(d)])
    assert [x["kind"] for x in sh.read_lines(d)] == ["base", "steered", "resume", "steered", "round"]
    assert not (d / "rounds.torn.jsonl").exists()  # the half line was cut back, not left to be mended


def test_every_file_a_resume_reads_is_written_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(runio, "write_all", no_space)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(runio.WriteFailed, match="config.json"):
        runio.write_text(tmp_path / "config.json", '{"config": {}}')
    assert (tmp_path / "config.json").read_text() == "{}" and sorted(os.listdir(tmp_path)) == ["config.json"]
    monkeypatch.setattr(torch, "save", lambda *a, **kw: no_space())
    with pytest.raises(runio.WriteFailed, match="vector_r1.pt"):
        models.save_vector({3: torch.ones(4)}, tmp_path / "vector_r1.pt")
    assert sorted(os.listdir(tmp_path)) == ["config.json"]  # no vector_r1.pt, no vector_r1.pt.tmp


# --- a round over the ppl ceiling -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def wrecked(tiny_dir, tmp_path_factory):
    """A 1-round run whose round-0 model reads as wrecked (its greedy answers' ppl x 1000)."""
    skip_without_eval_data()
    mp = pytest.MonkeyPatch()
    real_measure, real_answers = sh.measure, sh.answer_metrics

    def inflated(*a, **kw):
        ans, met = real_answers(*a, **kw)
        return ans, dict(met, ppl_base=met["ppl_base"] * 1000)

    def measure(kind, *a, **kw):
        with pytest.MonkeyPatch.context() as m:
            if kind == "round":
                m.setattr(sh, "answer_metrics", inflated)
            return real_measure(kind, *a, **kw)
    mp.setattr(sh, "measure", measure)
    out = tmp_path_factory.mktemp("runs")
    try:
        sh.main(["--model", tiny_dir, "--out", str(out), "--name", "w", *TINY_FLAGS, "--no-baselines"])
    finally:
        mp.undo()
    return out / "w"


def test_a_round_over_the_ceiling_is_recorded_so_and_not_loaded_by_default(wrecked, tiny_dir, capsys):
    lines = sh.read_lines(wrecked)
    assert [x["kind"] for x in lines] == ["base", "steered", "round", "stop"]
    assert lines[2]["status"] == "over_ceiling" and "ceiling" in lines[3]["reason"]
    assert sh.completed_rounds(wrecked) == []
    base, tok = sh.load_model(tiny_dir)
    model, _, _ = sh.load_run(wrecked)  # stops at the last round under the ceiling (none: the base model)...
    assert "round 0 is over the ppl ceiling" in capsys.readouterr().out  # ...saying so
    assert sh.fingerprint(model, tok) == pytest.approx(sh.fingerprint(base, tok), abs=1e-5)
    model, _, _ = sh.load_run(wrecked, upto_round=0)  # asked for by name: merged, saying so
    assert "merged all the same" in capsys.readouterr().out
    assert sh.fingerprint(model, tok) == pytest.approx(lines[2]["fingerprint"], abs=2e-4)


def test_export_stops_at_the_last_round_under_the_ceiling(wrecked, tmp_path, capsys):
    export.main([str(wrecked), str(tmp_path / "a")])
    card = (tmp_path / "a" / "README.md").read_text()
    assert "rounds none baked in" in card
    assert "round 0 is over the ppl ceiling" in card and "over the ppl ceiling" in capsys.readouterr().out
    export.main([str(wrecked), str(tmp_path / "b"), "--round", "0"])
    assert "merged all the same" in (tmp_path / "b" / "README.md").read_text()


# --- malformed lines fed to the readers (property test) -----------------------------------------------------------

KNOWN = {"base", "prompting", "steering_only", "steered", "round", "lam0", "stop", "resume"}
_TEMPLATES = []


def templates():
    """Well-formed lines of today's format, plus a stop, a resume and a lam0 line."""
    if not _TEMPLATES:
        import tempfile
        with tempfile.TemporaryDirectory() as t:
            d = make_new_run(os.path.join(t, "run"))
            lines = runio.read_jsonl(os.path.join(d, "rounds.jsonl"))[0]
        rnd = next(x for x in lines if x["kind"] == "round")
        _TEMPLATES.extend(lines + [dict(rnd, kind="lam0"), {"kind": "stop", "round": 2, "reason": "ceiling"},
                                   {"kind": "resume", "round": -1, "changed": {"min_words": 1}, "redo_from": 1}])
    return _TEMPLATES


JSON = st.recursive(st.none() | st.booleans() | st.integers(-3, 10 ** 6) | st.floats() | st.text(max_size=6),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                    max_leaves=6)
KEYS = sorted({k for x in templates() for k in x} | {"kind", "round"})
VALUE = st.just(None) | st.just(float("nan")) | JSON
MUTATION = st.one_of(st.tuples(st.just("drop"), st.sampled_from(KEYS)), st.tuples(st.just("set"), st.sampled_from(KEYS), VALUE),
                     st.tuples(st.just("deep"), st.sampled_from(KEYS), VALUE))  # inside a dict or list field


@st.composite
def a_line(draw):
    """One line of rounds.jsonl: a well-formed line with keys dropped or set to nulls, NaN or anything else
    (unknown kinds too), or raw text that is not a JSON object."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.sampled_from([TORN, TORN + '{"kind": "base"}', "[1, 2]", "null", "3", '"round"', "{}"])
                    | st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\n"), max_size=30))
    x = dict(draw(st.sampled_from(templates())))
    for op, key, *v in draw(st.lists(MUTATION, max_size=4)):
        inner = x.get(key)
        if op == "drop":
            x.pop(key, None)
        elif op == "set" or not inner or not isinstance(inner, (dict, list)):
            x[key] = v[0]
        elif isinstance(inner, dict):
            x[key] = dict(inner, **{draw(st.sampled_from(sorted(inner))): v[0]})
        else:  # a list: one item replaced, or inside its first dict (a dose_table row)
            i = draw(st.integers(0, len(inner) - 1))
            row = inner[i]
            x[key] = inner[:i] + [dict(row, **{draw(st.sampled_from(sorted(row))): v[0]}) if isinstance(row, dict) and
                                  row else v[0]] + inner[i + 1:]
    return json.dumps(x)


def malformed(raw):
    """The contract restated: a line a reader cannot use (not an object, no known kind, no integer round) or one
    holding a NaN / inf (the writer turns them into null)."""
    x = runio.parse(raw.encode())
    if not isinstance(x, dict):
        return bool(raw.strip())  # a blank line is nothing
    kind = x.get("kind")
    rnd = x.get("round", -1 if kind in ("base", "prompting", "steering_only", "resume") else None)
    return (not isinstance(kind, str) or kind not in KNOWN or type(rnd) is not int
            or any(isinstance(v, float) and not math.isfinite(v) for v in x.values()))  # NaN: a run writes null


def write_run(d, raws):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump({"config": {"persona": "seed", "pos": "p", "neg": "", "ppl_ceil": 2.0, "seed": 41}, "argv": []}, f)
    with open(os.path.join(d, "rounds.jsonl"), "w") as f:
        f.write("".join(r + "\n" for r in raws))
    return [i for i, r in enumerate(raws, 1) if malformed(r)]


FUZZ = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])  # no .hypothesis/ folder


@settings(max_examples=int(os.environ.get('FUZZ_N', 150)), **FUZZ)
@given(st.lists(a_line(), max_size=12))
def test_report_reads_any_lines_without_a_traceback_and_names_the_bad_ones(tmp_path_factory, raws):
    d = str(tmp_path_factory.mktemp("fuzz"))
    bad = write_run(d, raws)
    text = report.write_report(d)  # no exception of any kind
    head = text.split("\n## ")[0]
    for i in bad:
        assert f"rounds.jsonl line {i}:" in head, (i, raws[i - 1], head)
    assert report.main([d]) == 0


@settings(max_examples=int(os.environ.get('FUZZ_N', 150)) // 6, **FUZZ)
@given(st.lists(a_line(), max_size=10))
def test_plot_reads_any_lines_without_a_traceback_and_names_the_bad_ones(tmp_path_factory, raws):
    d = str(tmp_path_factory.mktemp("fuzz"))
    bad = write_run(d, raws)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = plot.main([d])  # 0, or 2 with a message (nothing to plot): never a traceback
    assert code in (0, 2)
    for i in bad:
        assert f"rounds.jsonl line {i}:" in err.getvalue()
