"""How results are shown: the colour ranges that the figures, the report and the Slicer module
share, so that a map reads the same everywhere. Numbers only (no imports): Slicer's process reads
them without loading the engine."""

#: det J shown from 0 (folding below) to 2, 1 (no volume change) in the middle.
JACOBIAN_RANGE = (0.0, 2.0)
#: The range the ventilation maps are shown in (ml/ml), the same in every figure and in Slicer:
#: blue below 0 (the phase's lung smaller there), red above. Fixed, so that maps compare.
VENTILATION_RANGE = (-0.5, 0.5)
#: The noise floor of a ventilation map: a phase that only moved rigidly reads 0 with about this
#: SD in the lungs (measured on the bundled CT against a copy of it translated by 5 mm: 0.012 to
#: 0.013 refined, 0.052 with the network's field alone; Testing/registration/test_display.py).
#: A pattern weaker than this is noise.
VENTILATION_NOISE_SD = 0.02
VENTILATION_NOISE_SD_NETWORK_ALONE = 0.06
