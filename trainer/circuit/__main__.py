"""`python -m trainer.circuit ...`: see trainer.circuit.cli."""

from trainer.circuit.cli import main

raise SystemExit(main())
