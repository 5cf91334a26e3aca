"""``python -m ragtune``: the same as the ``ragtune`` console script."""

from ragtune.cli.main import main

if __name__ == "__main__":
    main()
