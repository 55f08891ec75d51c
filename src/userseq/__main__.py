"""`python -m userseq ...`: the command line (so that `torchrun -m userseq train ...` works)."""

from userseq.cli import main

if __name__ == "__main__":
    main()
