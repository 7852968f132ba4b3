"""Token roles: what part of an example a token belongs to (shared with loss/ and train.py)."""
PROMPT, COT, KEY, PAD = 0, 1, 2, 3
NUM_ROLES = 4
ROLE_NAMES = ("prompt", "cot", "key", "pad")
