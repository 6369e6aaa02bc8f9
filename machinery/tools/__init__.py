"""Instructor tools, the top layer (students never need them): `python -m machinery.tools --help`.

notebooks  the Colab badge and setup cell (sync), the notebook rules (lint), full re-runs (execute)
artwork    the pictures in images/
measure    GPU measurements beyond bench (gpu-runs), memory under load (loadcheck)
trials     recipe variants judged on validation only (trial), shipping references (reference)
mutations  named one-line bugs, to check the tests catch them (mutate)
cli        the command line over all of them
"""
