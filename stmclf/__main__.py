"""``python -m stmclf ...``: the same as the ``stmclf`` command."""
from stmclf.cli.main import run

if __name__ == "__main__":
    run()
