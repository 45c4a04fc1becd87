"""``python -m attrcert``: the same as the ``attrcert`` command."""

from .cli import app

if __name__ == "__main__":
    app(prog_name="attrcert")
