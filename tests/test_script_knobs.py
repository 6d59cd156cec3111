"""search/script/knobs.py: the environment variables a script reads, from its source alone."""

import os
import textwrap

import pytest

from search.script import ScriptError
from search.script.knobs import check_read, env_value, format_table, read_knobs, read_script

SCRIPTS = os.path.join(os.path.dirname(__file__), "scripts")
OFFICIAL = os.path.join(SCRIPTS, "official_style.py")
RECORDS = os.path.join(SCRIPTS, "records_style.py")


def knobs_of(source: str):
    return read_knobs(textwrap.dedent(source)).knobs


def test_official_style_script_knobs():
    knobs = read_script(OFFICIAL).knobs
    rows = {name: (k.type, k.default) for name, k in knobs.items()}
    assert rows["SEED"] == ("int", "1337")
    assert rows["MATRIX_LR"] == ("float", "0.04")
    assert rows["MAX_WALLCLOCK_SECONDS"] == ("float", "600.0")
    assert rows["TIE_EMBEDDINGS"] == ("bool", '"1"')
    assert rows["RUN_ID"] == ("str", '"toy"')
    assert rows["FINAL_SCORE"] == ("str", '""')
    assert knobs["TIE_EMBEDDINGS"].first.conversions == ("int", "bool")
    assert knobs["TIE_EMBEDDINGS"].default_value() is True and knobs["MATRIX_LR"].default_value() == 0.04
    assert list(knobs)[:3] == ["SEED", "RUN_ID", "ITERATIONS"]  # in order of reading


def test_records_style_import_spellings():
    knobs = read_script(RECORDS).knobs
    assert (knobs["ITERATIONS"].type, knobs["ITERATIONS"].default) == ("int", "30")        # from os import environ
    assert (knobs["MAX_WALLCLOCK_SECONDS"].type, knobs["MAX_WALLCLOCK_SECONDS"].default) == ("float", '"600"')  # os.getenv
    assert (knobs["COMPRESSOR"].type, knobs["COMPRESSOR"].default) == ("str", '"zlib"')   # no conversion: the literal's type
    assert knobs["DATA_DIR"].default == 'expression: os.path.join(".", "data")'
    # `"SEED" in os.environ` then int(os.environ["SEED"]): one knob, typed by the read that takes a value
    seed = knobs["SEED"]
    assert (seed.type, seed.default, len(seed.reads)) == ("int", "none", 2)


def test_aliases_keywords_negative_literals_and_what_is_not_a_read():
    knobs = knobs_of("""
        import os as o
        from os import getenv as ge, environ as E
        A = int(o.environ.get("A", -3))
        B = ge("B", default="x")
        C = str(E.get("C", 2))
        D = bool(E.setdefault("D", "1"))
        E["WRITTEN"] = "1"            # a write, not a read
        name = "DYN"
        F = o.environ.get(name, "0")  # computed name: not listed
        G = float(o.environ.get("G", None))
        """)
    assert set(knobs) == {"A", "B", "C", "D", "G"}
    assert (knobs["A"].type, knobs["A"].default, knobs["A"].default_value()) == ("int", "-3", -3)
    assert (knobs["B"].type, knobs["B"].default) == ("str", '"x"')
    assert (knobs["C"].type, knobs["C"].default, knobs["C"].default_value()) == ("str", "2", "2")
    assert knobs["D"].type == "bool"
    assert (knobs["G"].type, knobs["G"].default) == ("float", "none")
    assert read_knobs("import os\nx = os.environ.get(name)\n").dynamic_lines == [2]


def test_table_lists_every_variable_with_type_default_and_line():
    table = format_table(read_script(OFFICIAL))
    lines = table.splitlines()
    assert lines[0].split() == ["VARIABLE", "TYPE", "DEFAULT", "LINE"]
    seed = next(line for line in lines if line.startswith("SEED "))
    assert seed.split() == ["SEED", "int", "1337", "19"]
    assert lines[-1].startswith("15 variables read by")


def test_a_variable_the_script_never_reads_is_refused_naming_it():
    script = read_script(OFFICIAL)
    assert check_read(script, "MATRIX_LR", "dimension").name == "MATRIX_LR"
    with pytest.raises(ScriptError, match=r"^dimension MATRIX_LRR: .*official_style.py never reads this environment "
                                          r"variable \(did you mean MATRIX_LR\?\)$"):
        check_read(script, "MATRIX_LRR", "dimension")
    with pytest.raises(ScriptError, match=r"^fixed variable DATA_PATH: .* never reads"):
        check_read(script, "DATA_PATH", "fixed variable")


def test_values_are_checked_against_the_read_and_converted_for_the_environment():
    knobs = read_script(OFFICIAL).knobs
    assert env_value(knobs["ITERATIONS"], 12) == "12"
    assert env_value(knobs["MATRIX_LR"], 0.02) == "0.02" and env_value(knobs["MATRIX_LR"], 1) == "1"
    assert env_value(knobs["TIE_EMBEDDINGS"], False) == "0" and env_value(knobs["TIE_EMBEDDINGS"], True) == "1"
    assert env_value(knobs["RUN_ID"], "abc") == "abc"
    with pytest.raises(ScriptError, match=r"^value 1.5 for ITERATIONS: not an integer \(the script reads it as int, line 21"):
        env_value(knobs["ITERATIONS"], 1.5)
    with pytest.raises(ScriptError, match=r"^value 'fast' for MATRIX_LR: not a number"):
        env_value(knobs["MATRIX_LR"], "fast")
    with pytest.raises(ScriptError, match=r"^value 2 for TIE_EMBEDDINGS: not a boolean"):
        env_value(knobs["TIE_EMBEDDINGS"], 2)
    with pytest.raises(ScriptError, match=r"^value True for ITERATIONS: not an integer"):
        env_value(knobs["ITERATIONS"], True)
    with pytest.raises(ScriptError, match="not a single value"):
        env_value(knobs["ITERATIONS"], [1, 2])


def test_unreadable_scripts_are_one_line(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nx = int(os.environ.get('A', 1)\n")
    with pytest.raises(ScriptError, match=r"bad.py:2: syntax error"):
        read_script(str(bad))
    with pytest.raises(ScriptError, match=r"^script .*missing.py does not exist$"):
        read_script(str(tmp_path / "missing.py"))


def test_script_info_command(tmp_path, capsys):
    from search.cli import main

    assert main(["script-info", RECORDS]) == 0
    assert any(line.split()[:3] == ["QK_GAIN_INIT", "float", "5.0"] for line in capsys.readouterr().out.splitlines())
    assert main(["script-info", str(tmp_path / "nope.py")]) == 1
    assert capsys.readouterr().err.splitlines() == [f"search: error: script {tmp_path / 'nope.py'} does not exist"]
