"""Messages go through module loggers; the CLI shows them, --quiet/--verbose pick the level, rank 0 speaks."""

import logging
import subprocess
import sys

import pytest

from ftcore.log import console, get_logger


def test_console_shows_messages_on_stdout_and_takes_its_handler_away(capsys):
    logger = logging.getLogger("ftcore")
    before = (list(logger.handlers), logger.level, logger.propagate)
    log = get_logger("ftcore.test_log")
    with console():
        log.info("hello from a run")
        log.debug("not at INFO")
    assert capsys.readouterr().out == "hello from a run\n"
    assert (list(logger.handlers), logger.level, logger.propagate) == before  # nothing left behind
    log.warning("after the block")
    assert "after the block" not in capsys.readouterr().out


@pytest.mark.parametrize("level, shown", [(logging.WARNING, ["warned"]), (logging.DEBUG, ["debugged", "said", "warned"])])
def test_levels(level, shown, capsys):
    log = get_logger("quiet_test")
    assert log.name == "ftcore.quiet_test"
    with console(level):
        log.debug("debugged")
        log.info("said")
        log.warning("warned")
    assert capsys.readouterr().out.split() == shown


def test_only_rank_zero_speaks_below_warning(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "3")
    log = get_logger("ranks")
    with console():
        log.info("every rank would say this")
        log.warning("rank 3 has a problem")
    assert capsys.readouterr().out == "rank 3 has a problem\n"


def test_an_application_that_configured_logging_keeps_its_handler(capsys):
    logger = logging.getLogger("ftcore")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        with console():
            get_logger("app").warning("to the application")
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in records] == ["to the application"] and capsys.readouterr().out == ""


@pytest.mark.slow
def test_quiet_and_verbose_on_a_real_run(tmp_path):
    def run(*flags):
        return subprocess.run([sys.executable, "-m", "ftcore", "run", "quickstart", "max_steps=1", "val_set_size=8",
                               f"output_dir={tmp_path / '-'.join(flags or ('plain',))}", *flags],
                              capture_output=True, text=True, timeout=600)

    plain, quiet = run(), run("--quiet")
    assert plain.returncode == 0 and quiet.returncode == 0, plain.stderr + quiet.stderr
    assert "run: " in plain.stdout and "saved to" in plain.stdout
    assert "run: " not in quiet.stdout and "saved to" not in quiet.stdout and "data: " not in quiet.stdout
