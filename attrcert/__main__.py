"""``python -m attrcert``: the same as the ``attrcert`` command."""

from .cli import main

if __name__ == "__main__":
    main()
