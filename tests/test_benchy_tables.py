"""calibrate/benchy_tables.py by hand: which pipe table is llama-benchy's, how its pp and tg rows pair
into shapes (only rows of the same depth and concurrency), rows without a partner, a file that ends
inside the table, and figures of 0."""
import pytest

from calibrate.benchy_tables import parse_benchy
from calibrate.importers import ImporterError

HEAD = ("| model | test | t/s | ttfr (ms) |\n"
        "|:------|-----:|----:|----------:|\n")


def shapes(text):
    rows, _, _ = parse_benchy(text)
    return [(r.pp, r.tg, r.depth, r.concurrency) for r in rows]


def test_the_table_is_the_first_with_a_test_and_a_t_s_column():
    text = ("| test | result |\n|---|---|\n| 01 | ok |\n\n"  # a summary table: a test column, no t/s
            "| model | t/s |\n|---|---|\n| m | 3 |\n\n"  # t/s, no test
            + HEAD + "| m | pp512 | 100.00 ± 1.00 | 50.00 ± 1.00 |\n| m | tg64 | 20.00 ± 0.50 | |\n")
    rows, model, _ = parse_benchy(text)
    assert [(r.pp, r.tg) for r in rows] == [(512, 64)] and model == "m"


def test_a_separator_written_with_spaces_is_no_row():
    text = ("| model | test | t/s |\n| :--- | ---: | ---: |\n| m | pp512 | 100.00 ± 1.00 |\n"
            "| m | tg64 | 20.00 ± 0.50 |\n")
    assert shapes(text) == [(512, 64, 0, 1)]


def test_rows_pair_only_within_a_shape():
    text = HEAD + ("| m | pp512 (c1) | 100.00 ± 1.00 | 50.00 ± 1.00 |\n"
                   "| m | tg64 (c2) | 20.00 ± 0.50 | |\n"  # another concurrency: its own row
                   "| m | pp512 @ d1024 | 90.00 ± 1.00 | 60.00 ± 1.00 |\n"
                   "| m | tg64 | 19.00 ± 0.50 | |\n"  # another depth
                   "| m | pp256 | 80.00 ± 1.00 | 40.00 ± 1.00 |\n"
                   "| m | pp128 | 70.00 ± 1.00 | 30.00 ± 1.00 |\n"  # a pp row after a pp row
                   "| m | tg32 | 25.00 ± 0.50 | |\n")
    assert shapes(text) == [(512, 0, 0, 1), (0, 64, 0, 2), (512, 0, 1024, 1), (0, 64, 0, 1), (256, 0, 0, 1),
                            (128, 32, 0, 1)]


def test_a_table_that_ends_on_a_pp_row_keeps_it_unless_cut_there():
    text = HEAD + "| m | pp512 | 100.00 ± 1.00 | 50.00 ± 1.00 |\n| m | tg64 | 20.00 ± 0.50 | |\n" \
                  "| m | pp1024 | 90.00 ± 1.00 | 70.00 ± 1.00 |\n\nllama-benchy (0.4.0)\n"
    rows, _, footer = parse_benchy(text)
    assert [(r.pp, r.tg) for r in rows] == [(512, 64), (1024, 0)] and "cut" not in footer
    # the file ends inside the next row: the pp row before it lost its tg row, so its shape goes too
    cut = text.split("\n\nllama")[0] + "\n| m | tg128 | 20.0"
    rows, _, footer = parse_benchy(cut)
    assert [(r.pp, r.tg) for r in rows] == [(512, 64)]
    assert footer["cut"] == "line 6: 3 cells, header has 4"
    # cut just after a cell's closing pipe
    rows, _, footer = parse_benchy(text.split("\n\nllama")[0] + "\n| m | tg128 |")
    assert [(r.pp, r.tg) for r in rows] == [(512, 64)] and footer["cut"] == "line 6: 2 cells, header has 4"


def test_a_last_row_without_its_closing_pipe_is_cut_inside_its_last_cell():
    text = HEAD + "| m | pp512 | 100.00 ± 1.00 | 50.00 ± 1.00 |\n| m | tg64 | 20.00 ± 0.50 | |\n" \
                  "| m | pp1024 | 90.00 ± 1.00 | 70.0"
    rows, _, footer = parse_benchy(text)
    assert [(r.pp, r.tg) for r in rows] == [(512, 64)]
    assert footer["cut"] == "line 5: its last cell has no closing '|'"
    # whole rows after a short one are no cut: the table is broken
    broken = HEAD + "| m | pp512 | 100.00 ± 1.00 |\n| m | tg64 | 20.00 ± 0.50 | |\n"
    with pytest.raises(ImporterError, match="line 3: 3 cells, header has 4"):
        parse_benchy(broken)
    # a table whose header has no closing pipe either: its rows need none
    bare = "| model | test | t/s | ttfr (ms)\n|---|---|---|---\n| m | pp512 | 100.00 ± 1.00 | 50.00 ± 1.00\n" \
           "| m | tg64 | 20.00 ± 0.50 | 1.00\n"
    rows, _, footer = parse_benchy(bare)
    assert [(r.pp, r.tg) for r in rows] == [(512, 64)] and "cut" not in footer


def test_a_table_without_a_model_column_and_rows_alone():
    text = "| test | t/s |\n|---|---|\n| tg64 | 20.00 ± 0.50 |\n| tg128 (c4) | 18.00 ± 0.50 |\n"
    rows, model, _ = parse_benchy(text)
    assert model is None
    assert [(r.pp, r.tg, r.concurrency) for r in rows] == [(0, 64, 1), (0, 128, 4)]


def test_a_figure_of_zero_is_a_figure_and_a_negative_one_is_refused():
    text = HEAD + "| m | pp512 | 0.00 ± 0.00 | 0.00 ± 0.00 |\n| m | tg64 | 0.00 ± 0.00 | |\n"
    rows, _, _ = parse_benchy(text)
    assert rows[0].metrics["pp_throughput"] == (0.0, 0.0) and rows[0].metrics["ttfr"] == (0.0, 0.0)
    with pytest.raises(ImporterError, match=r"line 4 \('tg64', 't/s'\): a negative '-1.00'"):
        parse_benchy(HEAD + "| m | pp512 | 1.00 | 1.00 |\n| m | tg64 | -1.00 | |\n")
