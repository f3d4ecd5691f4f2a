"""One logging setup for every stage script: INFO and up to standard error (the rule's log), with time."""

import logging
import sys


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
