"""``python -m jetstream_fastapi``: the command-line tool (see :mod:`jetstream_fastapi.cli`)."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="jetstream-fastapi")
