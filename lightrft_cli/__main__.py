"""``python -m lightrft_cli`` (what ``torchrun -m lightrft_cli`` runs)."""

from .main import main

if __name__ == "__main__":
    main()
