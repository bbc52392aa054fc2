"""``python -m refsr_cli ...`` (what ``accelerate launch -m refsr_cli train ...`` runs)."""

from .main import main

if __name__ == "__main__":
    main()
