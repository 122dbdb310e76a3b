"""`python -m trainer ...`: see trainer.cli."""

from trainer.openmp import prefer_passive_waiting

prefer_passive_waiting()

from trainer.cli import main  # noqa: E402  (after the OpenMP environment is set)

raise SystemExit(main())
