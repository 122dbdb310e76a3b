"""`python -m trainer ...`: see trainer.cli."""

from trainer.runtime import prepare_process

prepare_process()

from trainer.cli import main  # noqa: E402  (after the OpenMP environment is set)

raise SystemExit(main())
