"""``python -m ctxvec.cli`` (and ``torchrun -m ctxvec.cli``) runs the command line."""

from __future__ import annotations

from ctxvec.cli import main

if __name__ == "__main__":
    main()
