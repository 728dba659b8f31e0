"""Train word2vec (skip-gram, negative sampling): `python train.py [hydra overrides]`."""

import os
import sys

# Hydra hands its own errors (bad overrides, an unwritable run directory) back instead of printing
# a trimmed traceback: they end as one `error:` line, like every other bad input
os.environ.setdefault("HYDRA_FULL_ERROR", "1")

try:  # torch and Lightning take seconds to import: a Ctrl-C meanwhile is a stop, not a traceback
    import hydra
    from omegaconf import DictConfig

    from sgns.train import main, one_line_errors
except KeyboardInterrupt:
    print("stopped: interrupted (Ctrl-C) while starting; nothing was written", file=sys.stderr, flush=True)
    sys.exit(130)


if hasattr(sys.stdout, "reconfigure"):  # a word the terminal's encoding lacks is printed escaped, not a traceback
    sys.stdout.reconfigure(errors="backslashreplace")


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def run(cfg: DictConfig) -> float | None:
    return main(cfg)


if __name__ == "__main__":
    with one_line_errors():
        run()
