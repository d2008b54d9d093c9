"""What ``train_net.py`` and ``demo.py`` show on the console and what only goes to ``OUTPUT_DIR/log.txt``: the
split of ``snnet_core.d2.console`` for this project's loggers. While a stitch is evaluated, pycocotools' prints
(COCOeval's summaries) and COCOEvaluator's tables go to the log file only."""
from snnet_core.d2.console import command_loggers

PROJECT = "projects.snnet_vitdet"  # the project's package logger
LOGGERS = command_loggers(PROJECT)  # what a detection command sets up (demo.py: run_logging)
