"""Synthetic anatomy with exact truth: the procedural thorax phantom and the breathing
simulator (an inhale CT and a known field to an exhale), for tests, benchmarks and the demo.

Imports: ``core`` only.
"""
