import json

import pytest

from vitbook import claims, claims_table


@pytest.fixture(autouse=True)
def _no_claims_file(monkeypatch):
    """A unit test never writes into the findings file of the run that executes it."""
    monkeypatch.delenv("VITBOOK_CLAIMS", raising=False)


def test_check_passes_records_and_returns_margin(tmp_path, monkeypatch):
    log = tmp_path / "run.jsonl"
    monkeypatch.setenv("VITBOOK_CLAIMS", str(log))
    c = claims.Claims("99_test")
    margin = c.check("gain", 0.3, above=0.1)
    assert margin == pytest.approx(0.2)
    rec = json.loads(log.read_text())
    assert rec["chapter"] == "99_test" and rec["passed"] and rec["value"] == 0.3


def test_check_fails_at_once_on_a_value_past_its_threshold():
    c = claims.Claims("99_test")
    with pytest.raises(AssertionError, match="does not hold"):
        c.check("gap", 0.05, above=0.1, below=0.5)


def test_a_recording_run_checks_every_finding_and_the_summary_raises_for_all(tmp_path, monkeypatch):
    log = tmp_path / "run.jsonl"
    monkeypatch.setenv("VITBOOK_CLAIMS", str(log))
    c = claims.Claims("99_test")
    c.check("gap", 0.05, above=0.1, below=0.5)  # recorded, not raised: the next one still runs
    c.check("gain", 0.3, above=0.1)
    c.check("control", 0.4, below=0.2)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["passed"] for r in records] == [False, True, False]
    with pytest.raises(AssertionError, match="2 of 3 findings do not hold") as err:
        c.summary()
    assert "'gap'" in str(err.value) and "'control'" in str(err.value)


def test_a_recording_run_whose_findings_hold_passes_its_summary(tmp_path, monkeypatch):
    monkeypatch.setenv("VITBOOK_CLAIMS", str(tmp_path / "run.jsonl"))
    c = claims.Claims("99_test")
    c.check("gain", 0.3, above=0.1)
    c.summary()


def test_check_with_both_bounds_takes_the_smaller_margin():
    assert claims.Claims("x").check("in band", 0.45, above=0.1, below=0.5) == pytest.approx(0.05)


def test_check_without_a_threshold_is_refused():
    with pytest.raises(ValueError, match="needs a threshold"):
        claims.Claims("x").check("nothing", 1.0)


@pytest.mark.parametrize("raw", ["abc", "-1", "1.5"])
def test_bad_seed_is_refused_with_what_to_do(monkeypatch, raw):
    monkeypatch.setenv("VITBOOK_SEED", raw)
    with pytest.raises(ValueError, match="VITBOOK_SEED"):
        claims.seed()


def test_seed_defaults_to_zero(monkeypatch):
    monkeypatch.delenv("VITBOOK_SEED", raising=False)
    assert claims.seed() == 0


def test_table_lists_every_run_and_the_smallest_margin(tmp_path, monkeypatch):
    for run, value in (("seed0-native", 0.30), ("seed1-avx2", 0.15)):
        monkeypatch.setenv("VITBOOK_CLAIMS", str(tmp_path / f"{run}.jsonl"))
        claims.Claims("10_mae").check("gain", value, above=0.1)
    runs = claims_table.load_runs(
        [str(tmp_path / "seed0-native.jsonl"), str(tmp_path / "seed1-avx2.jsonl")]
    )
    text = claims_table.table(runs)
    row = next(line for line in text.splitlines() if "gain" in line)
    assert "0.3" in row and "0.15" in row and "+0.05" in row


def test_table_does_not_claim_a_margin_for_a_finding_missing_from_a_run(tmp_path, monkeypatch):
    monkeypatch.setenv("VITBOOK_CLAIMS", str(tmp_path / "a.jsonl"))
    claims.Claims("1").check("only in a", 1.0, above=0.0)
    (tmp_path / "b.jsonl").write_text("")
    text = claims_table.table(
        claims_table.load_runs([str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")])
    )
    row = next(line for line in text.splitlines() if "only in a" in line)
    assert row.endswith("| – |") and "- `b`: no findings recorded" in text


def test_every_zoo_entry_is_seeded_with_the_book_seed():
    from vitbook import recipes, settings, zoo  # noqa: F401  (importing recipes registers them)

    for name in zoo.names():
        entry = zoo.REGISTRY[name]
        seed = entry.recipe.seed if isinstance(entry, zoo.Model) else entry.seed
        assert seed == settings.seed(), name


def test_the_seed_is_part_of_every_zoo_key():
    """$VITBOOK_SEED=1 gives every model and result another key (read once, in vitbook.settings)."""
    import json
    import os
    import subprocess
    import sys

    code = "import json, vitbook.recipes; from vitbook import zoo; print(json.dumps({n: zoo.REGISTRY[n].key() for n in zoo.names()}))"
    keys = {}
    for seed in ("0", "1"):
        env = {**os.environ, "VITBOOK_SEED": seed}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        keys[seed] = json.loads(out.stdout.strip().splitlines()[-1])
    assert keys["0"].keys() == keys["1"].keys()
    assert all(keys["0"][n] != keys["1"][n] for n in keys["0"])


def test_table_shows_both_thresholds_when_a_check_changed_between_runs(tmp_path, monkeypatch):
    for run, threshold in (("a", 0.975), ("b", 0.98)):
        monkeypatch.setenv("VITBOOK_CLAIMS", str(tmp_path / f"{run}.jsonl"))
        claims.Claims("04").check("accuracy", 0.987, above=threshold)
    text = claims_table.table(
        claims_table.load_runs([str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")])
    )
    assert "> 0.975 / > 0.98" in text


def _recorded(tmp_path, monkeypatch, checks) -> dict:
    """Record ``checks`` ((chapter, name, value), each above 0.3) in one run "a"; load it back."""
    log = tmp_path / "a.jsonl"
    monkeypatch.setenv("VITBOOK_CLAIMS", str(log))
    for chapter, name, value in checks:
        claims.Claims(chapter).check(name, value, above=0.3)
    return claims_table.load_runs([str(log)])


def test_a_chapter_run_again_replaces_its_earlier_findings(tmp_path, monkeypatch):
    runs = _recorded(tmp_path, monkeypatch, [
        ("06", "dropped later", 0.5), ("06", "kept", 0.4), ("07", "other chapter", 0.9),
        ("06", "kept", 0.45),  # chapter 6 again: its new block wins
    ])  # fmt: skip
    assert [(r["chapter"], r["name"], r["value"]) for r in runs["a"]] == [
        ("07", "other chapter", 0.9),
        ("06", "kept", 0.45),
    ]
    assert "dropped later" not in claims_table.table(runs)


def test_a_chapter_run_twice_in_a_row_keeps_only_its_second_run(tmp_path, monkeypatch):
    # a rerun right after the first (nothing in between) starts a new block where a finding repeats
    runs = _recorded(tmp_path, monkeypatch, [
        ("06", "dropped later", 0.5), ("06", "kept", 0.4), ("06", "kept", 0.45), ("06", "new", 0.6),
    ])  # fmt: skip
    assert [(r["name"], r["value"]) for r in runs["a"]] == [("kept", 0.45), ("new", 0.6)]


def _measured_runs(tmp_path, monkeypatch, values: dict[str, dict]) -> dict:
    """One run per key of ``values`` (run -> {(row, column): value}), each recording chapter 15's
    table and one finding."""
    for run, cells in values.items():
        monkeypatch.setenv("VITBOOK_CLAIMS", str(tmp_path / f"{run}.jsonl"))
        c = claims.Claims("15_dino")
        for (row, column), value in cells.items():
            c.measure("ssl table", row, column, value)
        c.check("a finding", 0.5, above=0.1)
    return claims_table.load_runs([str(tmp_path / f"{run}.jsonl") for run in values])


def test_measurements_show_as_a_table_of_means_and_ranges_beside_the_findings(
    tmp_path, monkeypatch
):
    runs = _measured_runs(tmp_path, monkeypatch, {
        "s0": {("MAE", "probe 1%"): 78.0, ("MAE", "kNN 1%"): 60.0, ("DINO", "probe 1%"): 62.0},
        "s1": {("MAE", "probe 1%"): 80.0, ("MAE", "kNN 1%"): 64.0, ("DINO", "probe 1%"): 63.0},
        "s2": {("MAE", "probe 1%"): 79.0, ("MAE", "kNN 1%"): 62.0},  # DINO missing from this run
    })  # fmt: skip
    findings = claims_table.table(runs)
    assert "ssl table" not in findings and "a finding" in findings  # not findings: no threshold
    assert "3 findings" not in findings and "1 findings recorded" in findings
    text = claims_table.page(runs)
    lines = text.splitlines()
    assert "### 15_dino: ssl table" in lines and "| | probe 1% | kNN 1% |" in lines
    text = text.replace("\u2060", "")  # the word joiners that keep a range on one line
    lines = text.splitlines()
    assert "| MAE | 79.0 (78.0–80.0) | 62.0 (60.0–64.0) |" in lines
    assert "| DINO | 62.5 (62.0–63.0), 2 runs | – |" in lines


def test_a_page_without_measurements_has_no_measured_section(tmp_path, monkeypatch):
    runs = _recorded(tmp_path, monkeypatch, [("06", "kept", 0.4)])
    assert "Measured, not asserted" not in claims_table.page(runs)


def test_measure_records_without_a_threshold_and_the_summary_counts_it(
    tmp_path, monkeypatch, capsys
):
    log = tmp_path / "run.jsonl"
    monkeypatch.setenv("VITBOOK_CLAIMS", str(log))
    c = claims.Claims("15_dino")
    assert c.measure("ssl table", "MAE", "probe 1%", 78.5) == 78.5
    assert capsys.readouterr().out == ""  # the page shows the table its own way
    rec = json.loads(log.read_text())
    assert rec["kind"] == "measurement" and "above" not in rec and rec["row"] == "MAE"
    c.check("a finding", 0.5, above=0.1)
    c.summary()
    assert "1 table values recorded" in capsys.readouterr().out
    with pytest.raises(ValueError, match="NaN"):
        c.measure("ssl table", "MAE", "kNN 1%", float("nan"))


def test_a_run_whose_chapters_ran_on_different_thread_counts_says_so(tmp_path, monkeypatch):
    log = tmp_path / "a.jsonl"
    monkeypatch.setenv("VITBOOK_CLAIMS", str(log))
    for chapter, threads in (("01", 1), ("02", 2)):  # chapter 2 rerun later with 2 threads
        monkeypatch.setattr(claims.torch, "get_num_threads", lambda n=threads: n)
        claims.Claims(chapter).check("a finding", 0.5, above=0.1)
    assert "1–2 torch threads" in claims_table.table(claims_table.load_runs([str(log)]))
    (tmp_path / "b.jsonl").write_text(log.read_text().splitlines()[0] + "\n")
    assert "1 torch thread," in claims_table.table(
        claims_table.load_runs([str(tmp_path / "b.jsonl")])
    )


def test_values_in_the_table_are_short_enough_for_four_runs_in_the_column(tmp_path, monkeypatch):
    runs = _recorded(
        tmp_path, monkeypatch, [("06", "control", 0.3 + 0.0008429), ("06", "x", 0.4245)]
    )
    assert claims_table._short(-0.0008429) == "-8.4e-4" and claims_table._short(0.4245) == "0.424"
    assert claims_table._short(0.0034, sign=True) == "+0.0034"
    rows = [line for line in claims_table.table(runs).splitlines() if line.startswith("| control")]
    assert rows == ["| control | 0.301 | > 0.3 | +8.4e-4 |"]
