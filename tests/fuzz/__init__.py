"""The standing fuzz suite: every public RPC of every service driven with generated
requests against real servers (`tests/integration/test_fuzz.py` in CI, `bench/fuzz.py`
for longer runs). `rpcs.RPCS` is the table to extend when an RPC is added."""
