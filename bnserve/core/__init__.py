"""The shared base every part imports and that imports none of them: the error hierarchy (errors), the model
repository format and the manifest (repository), the run record (records), golden samples (golden), the parity
measures (parity) and the drift score (drift). NumPy and the standard library only: the serving core, the
trainer and the exporter all stand on it, and the command line (bnserve.cli) sits above everything."""
