"""Phase I models shipped with fsa-lt (``<name>.pt`` and its record ``<name>.json``); see
`fsa_lt.phases.shipped` and docs/RESULTS.md for how each was trained and how to regenerate it."""
