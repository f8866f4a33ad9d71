"""Command-line parsing that needs no running router."""
import argparse
import os

import pytest

from router.cli import main, worker_count


def test_workers_auto_is_one_per_usable_cpu():
    assert worker_count("auto") == len(os.sched_getaffinity(0))
    assert worker_count("3") == 3


@pytest.mark.parametrize("bad", ["0", "-2", "1025", "two", "", "1.5"])
def test_workers_rejects_what_is_not_a_process_count(bad):
    with pytest.raises(argparse.ArgumentTypeError):
        worker_count(bad)


def test_a_bad_workers_value_exits_2_naming_the_option(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--config", "x.yaml", "--workers", "0"])
    assert exc.value.code == 2
    assert "--workers: must be between 1 and 1024, got 0" in capsys.readouterr().err
