"""`python -m dlnlab [OVERRIDES]`: the same as `dlnlab-train [OVERRIDES]`."""
from dlnlab.cli.train import train

if __name__ == "__main__":
    train()
