"""One logging setup for every stage script: INFO and up to standard error (the rule's log), with time;
and at exit, the process's peak memory (Snakemake's benchmark files sample memory every 30 s after a job's
first 30, so they miss the short peak of a training step or a graph compile)."""

import atexit
import logging
import resource
import sys

_peak_logged_at_exit = False


def peak_memory_mib() -> float:
    """This process's peak resident memory so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2 ** 20 if sys.platform == "darwin" else peak / 1024


def _log_peak_memory() -> None:
    logging.getLogger("segformer").info("peak memory %.0f MiB (resident, this process)", peak_memory_mib())


def configure_logging() -> None:
    global _peak_logged_at_exit
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not _peak_logged_at_exit:
        atexit.register(_log_peak_memory)  # runs before logging's own exit handler (registered earlier)
        _peak_logged_at_exit = True
