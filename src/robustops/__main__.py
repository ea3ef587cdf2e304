"""``python -m robustops`` (also what ``torchrun -m robustops`` runs)."""

from robustops.cli import main

main()
