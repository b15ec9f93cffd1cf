"""Device side of Persona: editable RecBole sequential models, datasets, training and evaluation.

Importing this package applies the small RecBole/numpy-2 compatibility shim (see :mod:`recsys.compat`)
before anything imports RecBole.
"""

from recsys import compat as _compat

_compat.apply()
