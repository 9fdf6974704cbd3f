"""One error tree and one boundary: every exception class our packages define is a CapsimError (a
ValueError, simulator/errors.py), and the command line turns one into one line on stderr and exit 1
(capsim/errors.py). docs/architecture.md, "Errors", describes both."""
from __future__ import annotations

import importlib
import pkgutil

import click
import pytest
from click.testing import CliRunner

from capsim.errors import USER_ERRORS, error_line, friendly, user_errors
from measure.tokenizer import TokenizeFailed
from simulator.errors import CapsimError
from tests.helpers import refused_port

PACKAGES = ("simulator", "measure", "calibrate", "capsim")

# exception classes that are not library errors, and why
OUTSIDE_THE_TREE = {
    "capsim.errors.OneLineUsageError": "what the boundary raises for a usage error (a click exception, exit 2)",
    "measure.errors.Interrupted": "Ctrl-C or SIGTERM: a KeyboardInterrupt, it must pass every `except Exception`",
}


def _modules():
    for package in PACKAGES:
        pkg = importlib.import_module(package)
        yield pkg
        for info in pkgutil.walk_packages(pkg.__path__, package + "."):
            if not info.name.endswith(".__main__"):  # `python -m capsim` runs the command
                yield importlib.import_module(info.name)


def _classes_in(owner, module_name: str):
    for obj in vars(owner).values():
        if isinstance(obj, type) and obj.__module__ == module_name and obj is not owner:
            yield obj
            yield from _classes_in(obj, module_name)  # classes nested in classes


def _exception_classes() -> dict[str, type]:
    out = {}
    for m in _modules():
        for cls in _classes_in(m, m.__name__):
            if issubclass(cls, BaseException):
                out[f"{m.__name__}.{cls.__qualname__}"] = cls
    return out


EXCEPTIONS = _exception_classes()
LIBRARY_ERRORS = {k: v for k, v in EXCEPTIONS.items() if k not in OUTSIDE_THE_TREE}


def test_the_walk_sees_every_package_s_errors():
    assert {"simulator.profile.ProfileError", "simulator.workload.WorkloadError", "simulator.load.LoadError",
            "simulator.office.OfficeError", "simulator.sla.PlanError", "measure.errors.MeasureError",
            "calibrate.files.ImporterError", "calibrate.live.messages.LiveError"} <= set(LIBRARY_ERRORS)
    assert set(OUTSIDE_THE_TREE) <= set(EXCEPTIONS), "a class named in OUTSIDE_THE_TREE is gone: drop it there"


@pytest.mark.parametrize("name", sorted(LIBRARY_ERRORS))
def test_every_library_error_is_a_capsim_error(name):
    cls = LIBRARY_ERRORS[name]
    assert issubclass(cls, CapsimError) and issubclass(cls, ValueError), f"{name}: derive it from CapsimError"


def test_the_base_is_a_value_error_importable_from_every_top():
    import capsim
    import simulator
    assert issubclass(CapsimError, ValueError) and CapsimError.exit_code == 1
    assert capsim.CapsimError is simulator.CapsimError is CapsimError
    assert set(USER_ERRORS) == {CapsimError, ValueError, OSError}


def test_the_errors_outside_the_tree_stay_outside():
    assert issubclass(EXCEPTIONS["capsim.errors.OneLineUsageError"], click.ClickException)
    assert issubclass(EXCEPTIONS["measure.errors.Interrupted"], KeyboardInterrupt)
    assert not issubclass(EXCEPTIONS["measure.errors.Interrupted"], Exception)


# ---------------------------------------------------------------- the boundary

def _raising(exc: BaseException) -> click.Command:
    @click.command()
    @friendly
    def cmd():
        click.echo("started")
        raise exc

    return cmd


@pytest.mark.parametrize("name", sorted(LIBRARY_ERRORS))
def test_the_boundary_makes_each_library_error_one_line_and_exit_1(name):
    e = LIBRARY_ERRORS[name]("what went wrong, first line\nmore detail")
    res = CliRunner().invoke(_raising(e), [])
    assert res.exit_code == 1 == e.exit_code, (res.exit_code, res.output)
    assert res.stderr == f"Error: {str(e).splitlines()[0]}\n"
    assert res.stderr.startswith("Error: what went wrong, first line")
    assert res.stdout == "started\n" and "Traceback" not in res.output


@pytest.mark.parametrize("exc, line", [
    (ValueError("bad value\nsecond line"), "Error: bad value"),
    (FileNotFoundError(2, "No such file or directory", "x.json"), "Error: [Errno 2] No such file or directory: 'x.json'"),
    (CapsimError(""), "Error: CapsimError"),  # no message: the type's name, never an empty line
])
def test_the_boundary_reports_value_and_os_errors_the_same_way(exc, line):
    res = CliRunner().invoke(_raising(exc), [])
    assert res.exit_code == 1 and res.stderr == line + "\n"


def test_click_errors_and_bugs_pass_the_boundary():
    res = CliRunner().invoke(_raising(click.UsageError("no such thing")), [])
    assert res.exit_code == 2 and "no such thing" in res.stderr
    res = CliRunner().invoke(_raising(RuntimeError("a bug")), [])
    assert isinstance(res.exception, RuntimeError)  # a bug is not the user's to fix: not hidden as one line


def test_user_errors_takes_the_classes_to_report():
    with pytest.raises(click.ClickException, match="^no loads$"):
        with user_errors(CapsimError):
            raise CapsimError("no loads")
    with pytest.raises(OSError):
        with user_errors(CapsimError):
            raise OSError("not mine to report")
    e = error_line(KeyError("k"))
    assert e.exit_code == 1 and e.message == "'k'"


# ---------------------------------------------------------------- each command's translator is the boundary

def _one_line(args, error: BaseException):
    from capsim.cli import main
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1, (res.exit_code, res.output, res.exception)
    assert res.stderr == f"Error: {str(error).splitlines()[0]}\n", res.stderr
    assert "Traceback" not in res.output


def _raised(fn, *a, **kw) -> BaseException:
    with pytest.raises(CapsimError) as ei:
        fn(*a, **kw)
    return ei.value


def test_simulate_reports_a_profile_error(tmp_path):
    from simulator.profile import ProfileError, load_profile
    e = _raised(load_profile, str(tmp_path / "none.json"))
    assert isinstance(e, ProfileError)
    _one_line(["simulate", "open", "--num-prompts", "5", "--profile", str(tmp_path / "none.json")], e)


def test_calibrate_reports_an_importer_error(tmp_path):
    from calibrate.importers import ImporterError
    from calibrate.sources import load_closed
    e = _raised(load_closed, [str(tmp_path / "none")])
    assert isinstance(e, ImporterError)
    _one_line(["calibrate", str(tmp_path / "none"), "-o", str(tmp_path / "p.json")], e)


def test_report_reports_a_measure_error(tmp_path):
    from measure.errors import MeasureError
    from measure.runfiles import load_run_info
    e = _raised(load_run_info, tmp_path / "none")
    assert isinstance(e, MeasureError)
    _one_line(["report", str(tmp_path / "none")], e)


def test_twin_reports_a_profile_error(tmp_path):
    from simulator.profile import load_profile
    _one_line(["twin", "--profile", str(tmp_path / "none.json")], _raised(load_profile, str(tmp_path / "none.json")))


def test_live_calibration_reports_a_live_error(tmp_path):
    from calibrate.live import LiveError, read_server
    with refused_port() as port:
        url = f"http://127.0.0.1:{port}"
        e = _raised(read_server, url)
        assert isinstance(e, LiveError)
        _one_line(["calibrate", "--live", url, "--run-dir", str(tmp_path / "run")], e)


def test_live_validation_reports_a_profile_error(tmp_path):
    from simulator.profile import load_profile
    with refused_port() as port:
        _one_line(["validate", "--live", f"http://127.0.0.1:{port}", "--profile", str(tmp_path / "none.json")],
                  _raised(load_profile, str(tmp_path / "none.json")))


def test_live_calibration_reports_every_library_error(tmp_path, monkeypatch):
    """Not only LiveError and MeasureError: a WorkloadError from inside the ladder is one line too."""
    import calibrate.live.cli as live_cli
    from simulator.workload import WorkloadError

    def boom(*a, **kw):
        raise WorkloadError("--tg 0: a request must generate at least one token\n(more)")

    monkeypatch.setattr(live_cli, "live_calibrate", boom)
    _one_line(["calibrate", "--live", "http://127.0.0.1:1", "--run-dir", str(tmp_path / "run")],
              WorkloadError("--tg 0: a request must generate at least one token"))


@pytest.mark.parametrize("raised, line", [
    # any library error, not only MeasureError, WorkloadError and LoadError (a TokenizeFailed, a ProfileError)
    (TokenizeFailed("/tokenize: HTTP 500"), "Error: /tokenize: HTTP 500"),
    # click's own error passes as it is, not as "internal error: ClickException: ..."
    (click.ClickException("cannot write --save-result r.json: Permission denied"),
     "Error: cannot write --save-result r.json: Permission denied"),
    (RuntimeError("a bug"), "Error: internal error: RuntimeError: a bug (CAPSIM_DEBUG=1 shows the traceback)"),
])
def test_measure_commands_report_through_the_boundary(raised, line, monkeypatch, tmp_path):
    import measure.cli
    from capsim.cli import main

    def boom(_run_dir):
        raise raised

    monkeypatch.delenv("CAPSIM_DEBUG", raising=False)
    monkeypatch.setattr(measure.cli, "load_run_info", boom)
    res = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert res.exit_code == 1 and res.stderr == line + "\n", (res.exit_code, res.output)
