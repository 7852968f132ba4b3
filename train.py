"""sftkey training loop (not built yet: see the open issue for train.py)."""
import sys

if __name__ == "__main__":
    sys.exit("train.py: the training loop is not built yet")
