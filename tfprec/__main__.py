"""``python -m tfprec``: the tfprec command line (see :mod:`tfprec.cli`)."""
from tfprec.application.cli import run

if __name__ == "__main__":
    run()
