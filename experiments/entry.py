"""The `litlab` console script's entry point, light to import on purpose.

A loader worker that a fork server starts (every process of a multi-process run starts its
workers that way, see `datamodules/workers.py`) first re-imports the main script of the process
that asked for it, as multiprocessing does for every start method but fork. Were that script to
import `experiments.cli`, each worker of each epoch would import Lightning and the whole command
before its first batch; this module imports it only when the command runs.
"""


def main(args: list[str] | None = None) -> None:
    from experiments.cli import main as run

    run(args)
