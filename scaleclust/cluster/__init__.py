"""The clustering pieces: plain torch and numpy, no Ray and no storage.

scikit-learn and scipy.optimize are imported inside the functions that use them, never at a module's
top: every Ray worker that runs a stage's task imports this package, and scikit-learn (with the
scipy.stats and pandas it pulls in) would add about a second of CPU to each worker's start
(tests/test_imports.py holds the line).
"""
